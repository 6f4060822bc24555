"""Noticing that the rules file changed: its identity (inode, mtime, size) polled every 50 ms by the daemon.

Polling follows symlinks, so a Kubernetes ConfigMap's atomic symlink swap and an editor's
write-then-rename are both seen; inotify would miss the first on the watched name.
``FileSource`` is the rules source of a file (etcd's is ``sources.etcd_source``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from sentinel_ebpf.rules import load_file
from sentinel_ebpf.sources.base import Version
from sentinel_ebpf.stats import NodeRecord

FileId = tuple[int, int, int, int]


def file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing for now (mid-rename): a change too, reported when it reappears or stays
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatcher:
    def __init__(self, path: str) -> None:
        self.path = path
        self._seen = file_id(path)

    def mark(self) -> None:
        """What is on disk now is what is being loaded."""
        self._seen = file_id(self.path)

    def changed(self) -> bool:
        """True once per change since the last ``mark``/``changed``."""
        now = file_id(self.path)
        if now == self._seen:
            return False
        self._seen = now
        return True


class FileSource:
    """``run -r FILE``: the ``RulesSource`` (``sources.base``) of a rules file, watched by the loop's polling."""

    def __init__(self, path: str) -> None:
        self.url = path
        self.watcher = FileWatcher(path)
        self.applied_at: float | None = None

    def start(self, wake: Callable[[], None]) -> None:
        pass  # the loop's own polling (``changed``) is the watch

    def current(self) -> Version:
        self.watcher.mark()
        return Version(self.url, lambda: load_file(self.url))

    def changed(self) -> bool:
        return self.watcher.changed()

    def registrar(self, node_id: str, record: Callable[[str], NodeRecord]) -> None:
        return None  # a file has no fleet registry beside it

    def in_force(self, version: Version) -> None:
        self.applied_at = time.time()

    def describe(self) -> dict[str, Any]:
        return {"kind": "file", "url": self.url, "revision": None, "applied_at": self.applied_at,
                "from_cache": False}  # fmt: skip

    def close(self) -> None:
        pass
