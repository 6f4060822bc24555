"""wrk runs from the client namespace, for tests and benchmarks: one runner, one parser of its summary."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .netns import NetnsPair
from .procstat import pin

WRK = shutil.which("wrk") or "/usr/bin/wrk"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: str
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def socket_error_count(self) -> int:
        """connect + read + write + timeout errors (``Socket errors: connect 0, read 2, write 0, timeout 1``)."""
        return sum(int(n) for n in re.findall(r"\d+", self.socket_errors))

    @property
    def errors(self) -> str:
        """What went wrong, as wrk printed it ("" when every request got a 2xx/3xx)."""
        parts = [f"Socket errors: {self.socket_errors}"] if self.socket_errors else []
        if self.non2xx:
            parts.append(f"Non-2xx or 3xx responses: {self.non2xx}")
        return "; ".join(parts)


def parse_wrk(output: str) -> WrkResult:
    """wrk's summary: ``N requests in T(s|ms|m)``, ``Non-2xx or 3xx responses: N``, ``Socket errors: ...``."""
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", output)
    if not m:
        raise ValueError(f"wrk output not understood:\n{output}")
    secs = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return WrkResult(
        int(m.group(1)),
        secs,
        int(non2xx.group(1)) if non2xx else 0,
        errors.group(1) if errors else "",
        output,
    )


def wrk(
    pair: NetnsPair,
    url: str,
    seconds: float,
    connections: int,
    threads: int = 2,
    *,
    cpu: int | None = None,
    script: Path | None = None,
    headers: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> WrkResult:
    """``wrk`` on ``url`` for ``seconds`` (whole seconds) from the client namespace, pinned to ``cpu`` when
    given, with a Lua ``script`` and extra ``headers``; ``preexec_fn`` runs in the child before it execs."""
    extra = ["-s", str(script)] if script else []
    for h in headers:
        extra += ["-H", h]
    res = pair.run(
        pair.client,
        *(pin(cpu) if cpu is not None else []),
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        *extra,
        url,
        timeout=seconds + 60,
        preexec_fn=preexec_fn,
    )
    try:
        return parse_wrk(res.stdout)
    except ValueError:
        raise RuntimeError(f"wrk output not understood:\n{res.stdout}\n{res.stderr}") from None
