"""Directories the daemon keeps private things in (the state file, the control socket).

The state file holds the full rules in force and the control socket reloads them, so neither may be
reached through a path someone else controls. A directory is accepted only if it is a real directory
(not a symbolic link, checked on the opened descriptor with ``O_NOFOLLOW``), owned by the daemon's
user, and not writable by group or others unless sticky (``/tmp``). Every directory above it, on the
path as given and after resolving symbolic links, must be owned by root or the daemon's user and not
writable by others unless sticky (as OpenSSH checks the path of ``authorized_keys``): whoever can rename
an entry above the directory can swap the directory itself. Anything else is refused with an
``UnsafePathError`` naming the path, what is wrong (the owner's uid and name) and what to do. Files are
then opened relative to the checked descriptor, without following symbolic links. Missing directories
above it are created with mode 0755.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

from sentinel_ebpf.errors import SentinelError

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePathError(SentinelError):
    """A path of the daemon's private state is a symbolic link, or belongs to (or is writable by) others."""


def owner_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check(path: Path, st: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{what} {path} is a symbolic link: refusing to follow it (remove it, or pass the real directory)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path} is not a directory")
    if st.st_uid != me:
        raise UnsafePathError(
            f"{what} {path} is owned by {owner_name(st.st_uid)}, not by {owner_name(me)} that runs the "
            f"daemon: refusing it (chown it, or use another directory)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): refusing it "
            f"(chmod go-w {path}, or use another directory)"
        )


def _check_ancestors(path: Path, what: str) -> None:
    me = os.geteuid()
    lexical = Path(os.path.abspath(path)).parent
    for d in (*reversed(lexical.parents), lexical, *Path(os.path.realpath(lexical)).parents):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue  # not made yet (checked again once it is)
        link = stat.S_ISLNK(st.st_mode)
        if st.st_uid not in (0, me):
            raise UnsafePathError(
                f"{what} {path}: {'the symbolic link' if link else 'the directory'} {d} above it is owned by "
                f"{owner_name(st.st_uid)}, who could swap it: refusing it (use a directory under one that "
                f"only root or {owner_name(me)} controls)"
            )
        if not link and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{what} {path}: the directory {d} above it is writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could swap it: refusing it (chmod go-w {d}, or use "
                f"another directory)"
            )


def _make_parents(path: Path) -> None:
    missing = [d for d in (path.parent, *path.parent.parents) if not os.path.lexists(d)]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o755)


def open_private_dir(path: str | Path, what: str = "state directory", create: bool = True) -> int | None:
    """An ``O_DIRECTORY`` descriptor of ``path`` after the checks above (the caller closes it); the
    directory is created with mode 0700 when missing and ``create``; None when missing and not ``create``.
    """
    path = Path(path)
    if create and not path.is_symlink():
        _check_ancestors(path, what)  # before anything is made under them
        _make_parents(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
    try:
        _check_ancestors(path, what)
        _check(path, os.lstat(path), what)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:  # ELOOP: swapped for a symbolic link between the two calls
        raise UnsafePathError(f"{what} {path}: {exc.strerror}: refusing it") from None
    try:
        _check(path, os.fstat(fd), what)  # what was opened, not what the name pointed to before
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(dir_fd: int, name: str, data: bytes) -> None:
    """Replace ``name`` in the directory atomically with a 0600 file holding ``data``."""
    tmp = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # whatever was there (a link planted by someone) is not reused
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                 dir_fd=dir_fd)  # fmt: skip
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_private(dir_fd: int, name: str, path_for_errors: Path) -> bytes | None:
    """The file's bytes, None when missing; a symbolic link or another user's file is refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafePathError(
            f"{path_for_errors}: {exc.strerror}: refusing to read it (a symbolic link?)"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePathError(
                f"{path_for_errors} is owned by {owner_name(st.st_uid)}, not by {owner_name(os.geteuid())}: "
                f"refusing to read it (remove it)"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)
