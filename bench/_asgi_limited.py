"""A Starlette app behind slowapi's rate-limit middleware, for bench/rejection_cost.py.

usage: uvicorn --app-dir bench _asgi_limited:app   (BENCH_LIMIT, e.g. "100/second", sets the limit)

One limit for every request (one key: the whole app is the resource, as a Sentinel flow rule on a
resource), slowapi's default in-memory fixed-window storage, its pure ASGI middleware (the faster of
its two); an over-limit request gets slowapi's ``429`` and the connection stays open.
"""

from __future__ import annotations

import os

from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.middleware import SlowAPIASGIMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

LIMIT = os.environ.get("BENCH_LIMIT", "100/second")


def _one_key(request: Request) -> str:
    return "bench"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello world\n")


limiter = Limiter(key_func=_one_key, default_limits=[LIMIT])
app = Starlette(routes=[Route("/{path:path}", hello)])
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
app.add_middleware(SlowAPIASGIMiddleware)
