"""The curl command line the namespace tests fetch with."""

from __future__ import annotations


def curl_argv(*args: str, max_time_s: int = 10) -> list[str]:
    """``curl`` silent but for errors, never through a proxy from the environment (the tests' addresses
    are namespace-local), with ``-g`` so an IPv6 ``[addr]`` is not read as a glob, then ``args``."""
    return ["curl", "-sS", "-g", "--noproxy", "*", "--max-time", str(max_time_s), *args]
