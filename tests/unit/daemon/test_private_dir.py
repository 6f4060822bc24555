"""The state directory and the control socket: private modes, no symbolic links, no one else's directory."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf.daemon.control import ControlServer, request
from sentinel_ebpf.daemon.private_dir import UnsafePathError
from sentinel_ebpf.daemon.state import Attachment, State, down

OTHER_UID = 65534  # nobody


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the most permissive umask a daemon could inherit
    yield
    os.umask(old)


def _planted_link(tmp_path: Path, target: str, name: str) -> tuple[Path, Path]:
    """A directory ``target`` and a symbolic link ``name`` to it, both in ``tmp_path``."""
    real = tmp_path / target
    real.mkdir()
    link = tmp_path / name
    link.symlink_to(real)
    return real, link


def _other_users(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root (CI runs as root)")
    os.chown(path, OTHER_UID, OTHER_UID)


def test_state_file_is_0600_and_a_new_directory_0700(tmp_path: Path, open_umask: None) -> None:
    state_dir = tmp_path / "run" / "sentinel-ebpf"
    path = State(1, [Attachment("lo", 1, True)], {"rules": "secret"}).write(str(state_dir))
    assert _mode(path) == 0o600 and _mode(state_dir) == 0o700
    # an existing file of another mode is replaced by a 0600 one
    path.chmod(0o644)
    State(1, []).write(str(state_dir))
    assert _mode(path) == 0o600
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.json"]  # no temporary file left


def test_a_symlink_planted_at_the_state_directory_is_refused(tmp_path: Path) -> None:
    elsewhere, link = _planted_link(tmp_path, "attacker", "state")
    with pytest.raises(UnsafePathError, match=rf"state directory {link} is a symbolic link: refusing"):
        State(1, []).write(str(link))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        State.read(str(link))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        down(str(link))
    assert list(elsewhere.iterdir()) == []


def test_symlinks_planted_at_the_state_file_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "state.json").symlink_to(target)
    with pytest.raises(UnsafePathError, match=r"state.json: .*refusing to read it"):
        State.read(str(state_dir))
    (state_dir / ".state.json.tmp").symlink_to(target)  # the temporary name, planted too
    State(5, []).write(str(state_dir))
    assert target.read_text() == "precious\n"
    assert not (state_dir / "state.json").is_symlink()
    back = State.read(str(state_dir))
    assert back is not None and back.pid == 5


def test_a_state_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    _other_users(state_dir)
    with pytest.raises(UnsafePathError, match=rf"state directory {state_dir} is owned by uid {OTHER_UID}"):
        State(1, []).write(str(state_dir))
    with pytest.raises(UnsafePathError, match=f"owned by uid {OTHER_UID}"):
        State.read(str(state_dir))
    assert list(state_dir.iterdir()) == []


def test_a_state_file_owned_by_another_user_is_not_read(tmp_path: Path) -> None:
    State(1, []).write(str(tmp_path))
    _other_users(tmp_path / "state.json")
    with pytest.raises(UnsafePathError, match=rf"state.json is owned by uid {OTHER_UID}.*refusing to read"):
        State.read(str(tmp_path))


def test_a_state_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(0o777)
    with pytest.raises(UnsafePathError, match=r"writable by others \(mode 0777\)"):
        State(1, []).write(str(state_dir))
    state_dir.chmod(0o1777)  # sticky, as /tmp: others cannot replace our files
    State(1, []).write(str(state_dir))


def _serve(path: Path) -> ControlServer:
    return ControlServer(str(path), lambda req: {"resources": {}})


def test_a_symlink_planted_at_the_control_socket_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    sock = tmp_path / "c.sock"
    sock.symlink_to(victim)
    with pytest.raises(UnsafePathError, match=rf"control socket {sock} is a symbolic link"):
        _serve(sock)
    assert sock.is_symlink() and victim.read_text() == "x"


def test_a_file_at_the_control_socket_path_is_not_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    sock.write_text("not a socket")
    with pytest.raises(UnsafePathError, match="exists and is not a socket"):
        _serve(sock)
    assert sock.read_text() == "not a socket"


def test_a_control_socket_directory_that_is_a_symlink_or_anothers_is_refused(tmp_path: Path) -> None:
    real, link = _planted_link(tmp_path, "real", "link")
    with pytest.raises(UnsafePathError, match=rf"control socket directory {link} is a symbolic link"):
        _serve(link / "c.sock")
    assert list(real.iterdir()) == []
    _other_users(real)
    with pytest.raises(
        UnsafePathError, match=rf"control socket directory {real} is owned by uid {OTHER_UID}"
    ):
        _serve(real / "c.sock")


def test_the_control_socket_is_served_from_a_new_private_directory(tmp_path: Path, open_umask: None) -> None:
    srv = _serve(tmp_path / "run" / "c.sock")
    try:
        assert _mode(tmp_path / "run") == 0o700 and _mode(tmp_path / "run" / "c.sock") == 0o600
        assert request(str(tmp_path / "run" / "c.sock"), "stats")["ok"]
    finally:
        srv.close()


def test_a_state_directory_under_someone_elses_directory_is_refused(tmp_path: Path) -> None:
    """Whoever owns a directory above the state directory can rename it away and put their own in place."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    _other_users(theirs)
    with pytest.raises(
        UnsafePathError, match=rf"the directory {theirs} above it is owned by uid {OTHER_UID}"
    ):
        State(1, []).write(str(theirs / "sub" / "state"))
    assert list(theirs.iterdir()) == []  # nothing was created under it either


def test_a_state_directory_under_a_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "state").mkdir(mode=0o700)
    shared.chmod(0o777)
    with pytest.raises(
        UnsafePathError, match=rf"the directory {shared} above it is writable by others \(mode 0777\)"
    ):
        State(1, []).write(str(shared / "state"))
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot rename what is ours
    State(1, []).write(str(shared / "state"))


def test_a_symlink_above_the_state_directory_must_be_ours(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)  # ours (root's): as /var/run -> /run
    State(1, []).write(str(tmp_path / "link" / "state"))
    assert (real / "state" / "state.json").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _other_users(theirs)
    (tmp_path / "via").symlink_to(theirs / "x")
    os.chown(tmp_path / "via", OTHER_UID, OTHER_UID, follow_symlinks=False)
    with pytest.raises(UnsafePathError, match=rf"the symbolic link {tmp_path / 'via'} above it is owned by"):
        State(1, []).write(str(tmp_path / "via" / "state"))
