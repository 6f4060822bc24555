"""Governance in the kernel: compile a RuleSet into map entries and run the programs (TC for inbound
resources and outbound HTTP requests, cgroup connect hooks for outbound TCP; the package name is
historical)."""

from sentinel_ebpf.inbound.compiler import CompiledInbound, CompileError, compile_inbound
from sentinel_ebpf.inbound.dataplane import InboundDataplane

__all__ = ["CompileError", "CompiledInbound", "InboundDataplane", "compile_inbound"]
