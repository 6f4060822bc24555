"""The tracers: TCP connections (``tcp``), HTTP exchanges (``http``, reassembled by ``httpparse``),
and what they share (``base``)."""
