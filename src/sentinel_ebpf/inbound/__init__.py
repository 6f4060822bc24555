"""Inbound governance in the kernel: compile a RuleSet into map entries and run the TC programs."""

from sentinel_ebpf.inbound.compiler import CompiledInbound, CompileError, compile_inbound
from sentinel_ebpf.inbound.dataplane import InboundDataplane

__all__ = ["CompileError", "CompiledInbound", "InboundDataplane", "compile_inbound"]
