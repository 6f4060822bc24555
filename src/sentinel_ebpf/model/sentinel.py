"""A Sentinel-like in-process API over the reference model.

    sentinel = Sentinel(ruleset, clock=ManualClock())
    entry = sentinel.entry("GET:/api/orders", param={"remote_ip": "10.0.0.7"})
    if entry.passed:
        ...
        entry.exit(rt_ms=12, error=False)
    else:
        print(entry.block.block_type, entry.block.rule)

Checks run in sentinel-golang's slot order: system (inbound only), flow, isolation, hotspot, circuit
breaker; the first block wins. A blocked entry is exited at once (running the circuit breaker's HalfOpen
rollback), and its later ``exit()`` does nothing. All state lives in this object; given the same clock
readings and calls, results are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sentinel_ebpf._types import BlockType
from sentinel_ebpf.model.circuitbreaker import (
    CircuitBreaker,
    ExitHook,
    State,
    StateChange,
    StateChangeListener,
)
from sentinel_ebpf.model.clock import Clock, ManualClock
from sentinel_ebpf.model.flow import NS_PER_MS, FlowController
from sentinel_ebpf.model.hotspot import HotspotController
from sentinel_ebpf.model.leap_array import MetricEvent
from sentinel_ebpf.model.stat import ResourceStat
from sentinel_ebpf.model.system import SystemMetrics, check_rule
from sentinel_ebpf.rules.circuitbreaker import CircuitBreakerRule
from sentinel_ebpf.rules.flow import FlowRule
from sentinel_ebpf.rules.hotspot import HotspotRule
from sentinel_ebpf.rules.isolation import IsolationRule
from sentinel_ebpf.rules.ruleset import RuleSet
from sentinel_ebpf.rules.system import SystemRule
from sentinel_ebpf.stats import BLOCK_TYPES

Rule = FlowRule | IsolationRule | CircuitBreakerRule | HotspotRule | SystemRule
ParamValue = str | int | float | bool
Params = ParamValue | Mapping[str, ParamValue] | None


@dataclass(frozen=True)
class BlockInfo:
    block_type: BlockType
    rule: Rule
    message: str = ""
    snapshot: object = None


@dataclass
class Entry:
    """The result of ``Sentinel.entry``: passed (maybe after a virtual wait) or blocked."""

    sentinel: Sentinel
    resource: str
    batch: int
    inbound: bool
    params: Params
    start_ms: int
    block: BlockInfo | None = None
    wait_ns: int = 0  # the virtual queue wait Throttling rules would have imposed
    exited: bool = False
    _exit_hooks: list[ExitHook] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.block is None

    @property
    def blocked(self) -> bool:
        return self.block is not None

    @property
    def block_type(self) -> BlockType | None:
        return self.block.block_type if self.block else None

    @property
    def wait_ms(self) -> float:
        return self.wait_ns / NS_PER_MS

    def when_exit(self, hook: ExitHook) -> None:
        self._exit_hooks.append(hook)

    def exit(self, rt_ms: int | None = None, error: bool | str | BaseException | None = None) -> None:
        """Complete a passed entry; ``rt_ms`` defaults to the time since the entry on the clock."""
        if self.exited:
            return
        self.exited = True
        for hook in self._exit_hooks:
            hook(self.blocked)
        if self.blocked:
            return
        self.sentinel._complete(self, rt_ms, bool(error))


@dataclass(frozen=True)
class ModelStats:
    passed: int
    blocked: int
    completed: int
    errors: int
    concurrency: int
    avg_rt_ms: float
    block_by_type: dict[str, int]
    circuit_breakers: list[dict[str, str]]
    # over the last second (sliding window), as Sentinel reads them
    pass_qps: float = 0.0
    block_qps: float = 0.0
    window_avg_rt_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "pass": self.passed,
            "block": self.blocked,
            "complete": self.completed,
            "error": self.errors,
            "concurrency": self.concurrency,
            "avg_rt_ms": self.avg_rt_ms,
            "block_by_type": self.block_by_type,
            "circuit_breakers": self.circuit_breakers,
            "source": "kernel",  # the model stands for the kernel's counts (stats --json shape)
        }


class Sentinel:
    def __init__(
        self,
        ruleset: RuleSet | None = None,
        *,
        clock: Clock | None = None,
        system_metrics: SystemMetrics | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.system_metrics = system_metrics if system_metrics is not None else SystemMetrics()
        self.ruleset = RuleSet()
        self.nodes: dict[str, ResourceStat] = {}
        self.inbound_node = ResourceStat()
        self.flow: dict[str, list[FlowController]] = {}
        self.isolation: dict[str, list[IsolationRule]] = {}
        self.hotspot: dict[str, list[HotspotController]] = {}
        self.breakers: dict[str, list[CircuitBreaker]] = {}
        self.system_rules: list[SystemRule] = []
        self.listeners: list[StateChangeListener] = []
        self.state_changes: list[StateChange] = []
        self._loaded = False
        self.load(ruleset if ruleset is not None else RuleSet())

    # --- rules ---------------------------------------------------------------------------------------

    def load(self, ruleset: RuleSet) -> bool:
        """Replace the rules. Unchanged rules keep their controllers (state); returns False for a no-op."""
        if self._loaded and ruleset == self.ruleset:
            return False
        self._loaded = True
        self.ruleset = ruleset
        old_flow = [c for cs in self.flow.values() for c in cs]
        old_hot = [c for cs in self.hotspot.values() for c in cs]
        old_cb = [c for cs in self.breakers.values() for c in cs]
        self.flow, self.hotspot, self.breakers, self.isolation = {}, {}, {}, {}
        for fr in ruleset.flow_rules:
            fc = _take(old_flow, fr) or FlowController(fr, self.node(fr.stat_resource), self.system_metrics)
            self.flow.setdefault(fr.resource, []).append(fc)
        for ir in ruleset.isolation_rules:
            self.isolation.setdefault(ir.resource, []).append(ir)
        for hr in ruleset.hotspot_rules:
            hc = _take(old_hot, hr) or HotspotController(hr)
            self.hotspot.setdefault(hr.resource, []).append(hc)
        for cr in ruleset.circuit_breaker_rules:
            cb = _take(old_cb, cr) or CircuitBreaker(cr, self._on_state_change)
            self.breakers.setdefault(cr.resource, []).append(cb)
        self.system_rules = list(ruleset.system_rules)
        for node in self.nodes.values():
            node.totals = type(node.totals)()
        return True

    def add_state_change_listener(self, listener: StateChangeListener) -> None:
        self.listeners.append(listener)

    def _on_state_change(self, change: StateChange) -> None:
        self.state_changes.append(change)
        for listener in self.listeners:
            if change.to_state is State.Open:
                listener.on_transform_to_open(change.from_state, change.rule, change.snapshot)
            elif change.to_state is State.HalfOpen:
                listener.on_transform_to_half_open(change.from_state, change.rule)
            else:
                listener.on_transform_to_closed(change.from_state, change.rule)

    # --- statistics ----------------------------------------------------------------------------------

    def node(self, resource: str) -> ResourceStat:
        node = self.nodes.get(resource)
        if node is None:
            node = self.nodes[resource] = ResourceStat()
        return node

    def stats(self, resource: str) -> ModelStats:
        node = self.node(resource)
        now = self.clock.now_ms()
        t = node.totals
        breakers = []
        for i, cb in enumerate(self.breakers.get(resource, [])):
            breakers.append({"id": cb.rule.id or f"{resource}#cb{i}", "state": _STATE_NAMES[cb.state]})
        return ModelStats(
            passed=t.passed,
            blocked=t.blocked,
            completed=t.completed,
            errors=t.errors,
            concurrency=node.concurrency,
            avg_rt_ms=(t.rt_sum_ms / t.completed) if t.completed else 0.0,
            block_by_type={
                name: t.block_by_type.get(BlockType(i), 0) for i, name in enumerate(BLOCK_TYPES, 1)
            },
            circuit_breakers=breakers,
            pass_qps=node.qps(now, MetricEvent.PASS),
            block_qps=node.qps(now, MetricEvent.BLOCK),
            window_avg_rt_ms=node.avg_rt(now),
        )

    def stats_json(self) -> dict[str, Any]:
        names = dict.fromkeys([*self.ruleset.resource_names(), *self.nodes])
        return {"resources": {name: self.stats(name).as_dict() for name in names}}

    # --- entry / exit --------------------------------------------------------------------------------

    def entry(
        self, resource: str, *, param: Params = None, batch: int = 1, inbound: bool | None = None
    ) -> Entry:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if inbound is None:
            res = self.ruleset.resource(resource)
            inbound = res.match.inbound if res is not None else True
        now_ns = self.clock.now_ns()
        now_ms = now_ns // NS_PER_MS
        e = Entry(self, resource, batch, inbound, param, start_ms=now_ms)
        e.block = self._check(e, now_ns)
        node = self.node(resource)
        if e.block is None:
            self._on_pass(e, node, now_ms)
        else:
            node.on_block(now_ms, batch, e.block.block_type)
            if inbound:
                self.inbound_node.on_block(now_ms, batch, e.block.block_type)
            e.exit()  # as sentinel-golang: runs exit hooks (HalfOpen rollback), records nothing else
        return e

    def _check(self, e: Entry, now_ns: int) -> BlockInfo | None:
        now_ms = now_ns // NS_PER_MS
        if e.inbound:
            for sr in self.system_rules:
                res = check_rule(sr, self.inbound_node, self.system_metrics, now_ms)
                if not res.passed:
                    return BlockInfo(BlockType.BLOCK_SYSTEM, sr, res.message, res.snapshot)
        for fc in self.flow.get(e.resource, []):
            fres = fc.check(now_ns, e.batch)
            if fres.blocked:
                return BlockInfo(BlockType.BLOCK_FLOW, fc.rule, fres.message, fres.snapshot)
            e.wait_ns += fres.wait_ns
        node = self.node(e.resource)
        for ir in self.isolation.get(e.resource, []):
            cur = max(node.concurrency, 0)
            if cur + e.batch > ir.threshold:
                return BlockInfo(BlockType.BLOCK_ISOLATION, ir, "concurrency exceeds threshold", cur)
        for hc in self.hotspot.get(e.resource, []):
            value = _param_for(hc.rule, e.params)
            if value is None:
                continue
            hres = hc.check(now_ms, value, e.batch, now_ns=now_ns)
            if hres.blocked:
                return BlockInfo(BlockType.BLOCK_HOTSPOT, hc.rule, hres.message)
            e.wait_ns += hres.wait_ns
        for cb in self.breakers.get(e.resource, []):
            if not cb.try_pass(now_ms, e.when_exit):
                return BlockInfo(BlockType.BLOCK_CIRCUIT_BREAKING, cb.rule, "circuit breaker check blocked")
        return None

    def _on_pass(self, e: Entry, node: ResourceStat, now_ms: int) -> None:
        node.on_pass(now_ms, e.batch)
        if e.inbound:
            self.inbound_node.on_pass(now_ms, e.batch)
        for controllers in self.flow.values():
            for fc in controllers:
                if fc.rule.stat_resource == e.resource:
                    fc.on_stat_resource_pass(now_ms, e.batch)
        for hc in self.hotspot.get(e.resource, []):
            value = _param_for(hc.rule, e.params)
            if value is not None:
                hc.on_pass(value)

    def _complete(self, e: Entry, rt_ms: int | None, error: bool) -> None:
        now_ms = self.clock.now_ms()
        rt = rt_ms if rt_ms is not None else now_ms - e.start_ms
        self.node(e.resource).on_complete(now_ms, e.batch, rt, error)
        if e.inbound:
            self.inbound_node.on_complete(now_ms, e.batch, rt, error)
        for hc in self.hotspot.get(e.resource, []):
            value = _param_for(hc.rule, e.params)
            if value is not None:
                hc.on_complete(value)
        for cb in self.breakers.get(e.resource, []):
            cb.on_request_complete(now_ms, rt, error)


C = TypeVar("C")
_STATE_NAMES = {State.Closed: "closed", State.Open: "open", State.HalfOpen: "half_open"}


def _take(pool: list[C], rule: object) -> C | None:
    """Remove and return the controller of an identical rule, so that it keeps its state."""
    for i, item in enumerate(pool):
        if getattr(item, "rule", None) == rule:
            return pool.pop(i)
    return None


def _param_for(rule: HotspotRule, params: Params) -> ParamValue | None:
    if params is None:
        return None
    if not isinstance(params, Mapping):
        return params
    key = rule.param_key
    if key in params:
        return params[key]
    if key.startswith("header:"):
        want = key.lower()
        for k, v in params.items():
            if k.lower() == want:
                return v
    return None
