"""Governance in the kernel: compile a RuleSet into map entries and run the programs (TC for inbound
resources and outbound HTTP requests, cgroup connect hooks for outbound TCP)."""

from sentinel_ebpf.enforce.compile import CompiledInbound, CompileError, compile_inbound
from sentinel_ebpf.enforce.dataplane import InboundDataplane

__all__ = ["CompileError", "CompiledInbound", "InboundDataplane", "compile_inbound"]
