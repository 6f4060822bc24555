"""Reading the governance programs' maps: statistics per resource and of the inbound node, the data
plane's and each port's counters, circuit breakers' states and their transitions (a ring buffer)."""

from __future__ import annotations

from sentinel_ebpf._types import (
    BlockType,
    BreakerState,
    CbEvent,
    DpCounter,
    PortCounter,
    PortCounts,
    ResStats,
)
from sentinel_ebpf.enforce.loader import Loader, _u32
from sentinel_ebpf.libbpf import RingBuffer
from sentinel_ebpf.stats import BLOCK_TYPES, BreakerSnapshot, BreakerTransition, ResourceStats

BREAKER_STATE_NAMES = {0: "closed", 1: "half_open", 2: "open"}

_BLOCK_NAMES = {
    int(BlockType.BLOCK_FLOW): "flow",
    int(BlockType.BLOCK_ISOLATION): "isolation",
    int(BlockType.BLOCK_CIRCUIT_BREAKING): "circuit_breaking",
    int(BlockType.BLOCK_SYSTEM): "system",
    int(BlockType.BLOCK_HOTSPOT): "hotspot",
}


class Readout(Loader):
    """What the programs counted and decided, for the rules in force (``compiled``)."""

    def _init_state(self) -> None:
        super()._init_state()
        self._cb_ring: RingBuffer | None = None
        self._cb_pending: list[BreakerTransition] = []

    def raw_stats(self, resource_id: int) -> ResStats:
        return ResStats.from_buffer_copy(self.maps.res_stats.lookup(_u32(resource_id)))

    def raw_stats_bytes(self) -> dict[int, bytes]:
        """Every resource's ``struct res_stats`` by id, read in one batched syscall (the daemon does
        this every second for the metric log: a lookup per resource was its main idle cost)."""
        ids = [r.id for r in self.compiled.resources]
        if not ids:
            return {}
        values = self.maps.res_stats.array_prefix(max(ids) + 1)
        return {rid: values[rid] for rid in ids}

    def raw_stats_all(self) -> dict[int, ResStats]:
        return {rid: ResStats.from_buffer_copy(raw) for rid, raw in self.raw_stats_bytes().items()}

    def resource_stats(self) -> list[ResourceStats]:
        breakers = self.breaker_states()
        out = []
        all_stats = self.raw_stats_all()
        for r in self.compiled.resources:
            st = all_stats[r.id]
            by_type = dict.fromkeys(BLOCK_TYPES, 0)
            for code, name in _BLOCK_NAMES.items():
                by_type[name] = int(st.block_by_type[code])
            out.append(ResourceStats(
                name=r.name, passed=st.total_pass, blocked=st.total_block, complete=st.total_complete,
                error=st.total_error, concurrency=max(0, st.concurrency), rt_sum_ms=float(st.total_rt_ms),
                block_by_type=by_type, flow_wait_total=st.flow_wait, abort=st.total_abort,
                circuit_breakers=breakers.get(r.name, ()),
                flow_threshold=(r.flow[0].threshold_milli / 1000 if r.flow else None),
            ))  # fmt: skip
        return out

    def inbound_stats(self) -> ResStats:
        """Sentinel's inbound node: all inbound requests of all resources together."""
        return ResStats.from_buffer_copy(self.maps.inbound_total.lookup(_u32(0)))

    def counters(self) -> dict[str, int]:
        m = self.maps.dp_counters
        return {
            c.name.removeprefix("DP_").lower(): sum(
                int.from_bytes(v, "little") for v in m.lookup(_u32(int(c)))
            )
            for c in DpCounter
            if c is not DpCounter.DP_COUNTER_MAX
        }

    def port_counters(self, port: int) -> dict[str, int]:
        raw = PortCounts.from_buffer_copy(self.maps.port_stats.lookup(port.to_bytes(2, "little")))
        return {
            c.name.removeprefix("PORT_").lower(): int(raw.count[int(c)])
            for c in PortCounter
            if c is not PortCounter.PORT_COUNTER_MAX
        }

    def breaker_states(self) -> dict[str, tuple[BreakerSnapshot, ...]]:
        """resource name -> its breakers' ids and states."""
        m = self.maps.breakers
        out: dict[str, tuple[BreakerSnapshot, ...]] = {}
        for r in self.compiled.resources:
            states = []
            for b in r.breakers:
                raw = m.get(_u32(b.uid))
                state = BreakerState.from_buffer_copy(raw).state if raw is not None else 0
                states.append(BreakerSnapshot(b.id, BREAKER_STATE_NAMES.get(int(state), "closed")))
            out[r.name] = tuple(states)
        return out

    def state_changes(self, timeout_ms: int = 0) -> list[BreakerTransition]:
        """Breaker transitions since the last call, in order (from the cb_events ring buffer)."""
        if self._cb_ring is None:
            self._cb_ring = RingBuffer(self.maps.cb_events, self._on_cb_event)
        self._cb_ring.poll(timeout_ms)
        out, self._cb_pending = self._cb_pending, []
        return out

    def _on_cb_event(self, raw: bytes) -> None:
        ev = CbEvent.from_buffer_copy(raw)
        resource, breaker_id = self._breaker_names.get(ev.uid, (f"#{ev.resource}", f"uid {ev.uid}"))
        self._cb_pending.append(BreakerTransition(
            resource, breaker_id, BREAKER_STATE_NAMES.get(ev.from_state, "?"), BREAKER_STATE_NAMES.get(ev.to_state, "?"),
        ))  # fmt: skip

    def close(self) -> None:
        if self._cb_ring is not None:
            self._cb_ring.close()
            self._cb_ring = None
        super().close()
