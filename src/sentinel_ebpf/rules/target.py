"""The normal form of an HTTP request target, as the kernel computes it before matching a path prefix.

Servers match a normalised path (nginx decodes percent-encoding, removes dot segments and merges
slashes before it picks a location), so the kernel does the same, and resource paths are put in the
same form when rules are compiled:

- percent-encoded printable ASCII characters are decoded, once (``%61`` is ``a``, ``%2F`` is ``/``;
  ``%25`` stays a literal ``%`` that is not decoded again; control characters and non-ASCII bytes
  stay encoded);
- dot segments are removed (RFC 3986 section 5.2.4): ``/./`` is ``/``, ``/x/../`` is ``/``, ``..`` at the
  root stays at the root;
- runs of slashes are one slash;
- from the first ``?`` sent as such on, the query is kept as it is; a ``?`` decoded from ``%3F`` is a
  path character (nginx reads ``/other%3F/../api`` as ``/api``);
- a ``#`` (sent as such) ends the target: nginx ignores what follows (``/api#/../x`` is ``/api``).

``bpf/normalize.bpf.h`` is the kernel side; ``tests/dataplane/test_inbound_framing.py`` checks the two
agree on generated targets.
"""

from __future__ import annotations


def normalize_target(target: str) -> str:
    """The normal form of ``target`` (a path starting with ``/``, optionally with a query)."""
    raw = target.encode("latin-1", errors="replace")
    out = bytearray()
    slashes: list[int] = []  # out positions of the slashes that start the segments kept
    i = 0

    def drop_dot_segment() -> None:
        if not slashes:
            return
        seg = out[slashes[-1] + 1 :]
        if seg == b".":
            del out[slashes[-1] + 1 :]
        elif seg == b"..":
            if len(slashes) > 1:
                slashes.pop()
            del out[slashes[-1] + 1 :]

    while i < len(raw):
        c = raw[i]
        if c == ord("#"):
            break
        decoded = False
        if c == ord("%") and i + 2 < len(raw) + 0 and _hex(raw[i + 1 : i + 3]) is not None:
            v = _hex(raw[i + 1 : i + 3])
            assert v is not None
            if 0x20 < v < 0x7F and v != ord("%"):
                c = v
                i += 2
                decoded = True
        i += 1
        if c == ord("?") and not decoded:
            drop_dot_segment()
            out.append(c)
            out += raw[i:].split(b"#", 1)[0]
            return out.decode("latin-1")
        if c == ord("/"):
            drop_dot_segment()
            if out and out[-1] == ord("/"):
                continue
            slashes.append(len(out))
        out.append(c)
    drop_dot_segment()
    return out.decode("latin-1")


def _hex(two: bytes) -> int | None:
    if len(two) != 2:
        return None
    try:
        return int(two.decode("ascii"), 16)
    except ValueError:
        return None
