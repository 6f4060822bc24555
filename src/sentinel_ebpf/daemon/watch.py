"""Noticing that the rules file changed: its identity (inode, mtime, size) polled every 50 ms by the daemon.

Polling follows symlinks, so a Kubernetes ConfigMap's atomic symlink swap and an editor's
write-then-rename are both seen; inotify would miss the first on the watched name.
"""

from __future__ import annotations

import os

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
