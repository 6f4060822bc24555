"""Taking over from a daemon that crashed: adopt the maps of the TC programs it left attached.

After ``kill -9`` the inbound TC programs stay attached and keep enforcing and counting in their maps.
A new daemon with the same state directory finds those programs by the filters' handle and priority on
the interfaces the state file lists, loads its own object on the same maps (``InboundDataplane(reuse=)``)
and adopts the rules the crashed daemon had in force (recorded in the state file with their resource ids,
compiled again and checked against the maps). Its own rules then go in as a reload would: resources that
stay keep their statistics, windows, breaker states and in-flight requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import yaml

from sentinel_ebpf import netns
from sentinel_ebpf.daemon.links import interfaces
from sentinel_ebpf.daemon.state import Attachment, State, alive
from sentinel_ebpf.enforce import InboundDataplane, compile_inbound
from sentinel_ebpf.enforce.loader import TC_HANDLE, TC_PRIORITY
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.libbpf import TcAttachPoint, TcHook, program_maps
from sentinel_ebpf.rules import RulesError, RuleSet, load_text
from sentinel_ebpf.rules.dump import to_project

log = logging.getLogger("sentinel_ebpf.daemon")


def inbound_record(dp: InboundDataplane, rules: RuleSet) -> dict[str, Any]:
    """What the state file keeps of the rules in force in ``dp`` (``rules`` is what they came from)."""
    return {
        "rules": yaml.safe_dump(to_project(rules), sort_keys=False),
        "ids": {r.name: r.id for r in dp.compiled.resources},
        "last_id": dp.last_id,
        "gen": dp.gen,
        "fingerprint": dp.compiled.fingerprint(),
    }


def _previous_maps(state: State) -> dict[str, int]:
    """New fds of the maps the crashed daemon's TC programs use (both programs, first interface found)."""
    present = interfaces([a.ifname for a in state.attachments])
    for a in state.attachments:
        if present.get(a.ifname) != a.ifindex:
            continue  # gone, or another interface now has the name
        hook = TcHook(a.ifindex, netns.split(a.ifname)[1])
        ids = [
            hook.filter_prog_id(p, TC_HANDLE, TC_PRIORITY)
            for p in (TcAttachPoint.INGRESS, TcAttachPoint.EGRESS)
        ]
        if None in ids:
            continue
        fds: dict[str, int] = {}
        try:
            for prog_id in ids:
                assert prog_id is not None
                for name, fd in program_maps(prog_id).items():
                    if name in fds:
                        os.close(fd)
                    else:
                        fds[name] = fd
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds
    raise SentinelError("no TC programs of the crashed daemon are attached any more")


def resume(state: State, hotspot_keys: int | None) -> InboundDataplane:
    """The data plane on the crashed daemon's maps, with its rules in force; SentinelError says why not."""
    record = state.inbound
    if not record:
        raise SentinelError("the state file does not record the rules in force")
    try:
        rules = load_text(str(record["rules"]), "rules of the crashed daemon")
        ids = {str(k): int(v) for k, v in dict(record["ids"]).items()}
        last_id = int(record["last_id"])
        gen = int(record["gen"])
        fingerprint = str(record["fingerprint"])
    except (KeyError, TypeError, ValueError, RulesError) as exc:
        raise SentinelError(f"the state file's record of the rules in force is unreadable ({exc})") from None
    previous = {(r.name, r.match.key()): ids[r.name] for r in rules.resources if r.name in ids}
    compiled = compile_inbound(rules, previous, last_id)
    if {r.name: r.id for r in compiled.resources} != ids or compiled.fingerprint() != fingerprint:
        raise SentinelError("the recorded rules do not compile to what was in force (another version?)")
    fds = _previous_maps(state)
    try:
        dp = InboundDataplane(hotspot_values=hotspot_keys, reuse=fds)
    finally:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
    try:
        dp.adopt(compiled, last_id, gen)
    except BaseException:
        dp.close()
        raise
    return dp


def crashed_state(state_dir: str) -> State | None:
    """The record of a daemon that did not stop cleanly (a daemon removes the clsact qdiscs it created
    when it stops), or None; SentinelError when that daemon is still running."""
    old = State.read(state_dir)
    if old is None:
        return None
    if old.pid != os.getpid() and alive(old.pid):
        raise SentinelError(f"another daemon (pid {old.pid}) uses {state_dir}: stop it first")
    log.warning("taking over from a daemon that did not stop cleanly (pid %d)", old.pid)
    return old


def resume_or_none(crashed: State | None, hotspot_keys: int | None) -> InboundDataplane | None:
    """The crashed daemon's maps, still used by its TC programs, so counting goes on (None: start afresh)."""
    if crashed is None:
        return None
    try:
        dp = resume(crashed, hotspot_keys)
    except SentinelError as exc:
        log.warning("statistics start from zero: cannot resume the crashed daemon's maps: %s", exc)
        return None
    log.info("resumed the crashed daemon's statistics, windows and in-flight requests (%d resources)",
             len(dp.compiled.resources))  # fmt: skip
    return dp


def write_state(state_dir: str, dp: InboundDataplane, rules: RuleSet | None) -> None:
    """Record what ``dp`` attached and the rules in force, for `down` and for a daemon taking over."""
    state = State(os.getpid(), [Attachment(n, i, c) for n, i, c in dp.attached()])
    if rules is not None:
        state.inbound = inbound_record(dp, rules)
    state.write(state_dir)
