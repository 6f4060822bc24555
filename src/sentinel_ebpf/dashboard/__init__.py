"""``sentinel-ebpf dashboard``: a web page over the daemons' control sockets (see docs/dashboard.md).

- ``backend``: what is shown, asked from the daemons and the host (no HTTP).
- ``server``: the HTTP server, its API and its security checks.
- ``static/``: the page (plain JavaScript) and the vendored chart library (uPlot, pinned).
"""

from sentinel_ebpf.dashboard.backend import Backend, BackendError, DoctorCache, run_doctor
from sentinel_ebpf.dashboard.server import DEFAULT_LISTEN, DashboardServer

__all__ = ["DEFAULT_LISTEN", "Backend", "BackendError", "DashboardServer", "DoctorCache", "run_doctor"]
