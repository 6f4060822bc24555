"""What ``sentinel-ebpf trace`` promises to print, written out by hand for the unit and integration tests.

Spelled here rather than taken from ``sentinel_ebpf.tracing``: a change to the header or to the JSON
fields must fail a test, not follow the code.
"""

from __future__ import annotations

# The original plugin's header line (after the timestamp column).
ORIGINAL_HEADER = "Comm             Src addr        Port   -> Dest addr       Port"

# The fields of one connection in --json output (docs: the trace command).
CONNECTION_JSON_KEYS = frozenset(
    {
        "timestamp",
        "pid",
        "tid",
        "uid",
        "comm",
        "family",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "direction",
        "outcome",
    }
)
