"""The governance programs (TC for inbound resources and outbound HTTP requests, cgroup connect and
sock_ops for outbound TCP) as one object: loaded and attached (loader.py), their maps written (writer.py)
and read (readout.py)."""

from __future__ import annotations

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.enforce.reconcile import Reconciler
from sentinel_ebpf.enforce.writer import Writer


class InboundDataplane(Writer, Closing):
    """``with InboundDataplane() as dp: dp.apply(compiled); dp.attach("lo")``.

    ``test_clock=True`` loads the programs with a clock the caller sets (``set_clock_ns``), for tests.
    The options are ``Loader``'s (loader.py).
    """

    def _init_state(self) -> None:
        super()._init_state()
        self.reconciler = Reconciler(self)
