"""The daemon: enforcement, reloads, metric log, Prometheus, control socket; and `down`."""

from sentinel_ebpf.daemon.control import ControlError, request
from sentinel_ebpf.daemon.runner import Daemon, DaemonConfig
from sentinel_ebpf.daemon.state import down

__all__ = ["ControlError", "Daemon", "DaemonConfig", "down", "request"]
