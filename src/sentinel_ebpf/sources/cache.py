"""The last rules document applied from etcd, kept in the state directory so that a daemon started while
etcd is down enforces it. Written atomically (temporary file, fsync, rename), readable by root only."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("sentinel_ebpf.daemon")
CACHE_NAME = "rules-cache.json"


@dataclass(frozen=True)
class CachedRules:
    url: str  # where it came from (endpoints may have changed since; the key must not)
    key: str
    revision: int
    applied_at: float  # epoch seconds
    document: str


class RulesCache:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir, CACHE_NAME)

    def write(self, entry: CachedRules) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(entry), fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def read(self, key: str) -> CachedRules | None:
        """The cached document of ``key``; None (with a warning saying why) when there is none to use."""
        try:
            raw = json.loads(self.path.read_text())
            entry = CachedRules(
                url=str(raw["url"]), key=str(raw["key"]), revision=int(raw["revision"]),
                applied_at=float(raw["applied_at"]), document=str(raw["document"]),
            )  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("rules cache %s is unreadable (%s): not used", self.path, exc)
            return None
        if entry.key != key:
            log.warning("rules cache %s holds key %s, not %s: not used", self.path, entry.key, key)
            return None
        return entry
