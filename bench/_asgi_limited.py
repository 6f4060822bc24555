"""A Python ASGI app behind a rate-limit middleware (Starlette + slowapi, served by uvicorn).

usage: _asgi_limited.py PORT RATE_PER_SECOND
GET / answers "hello world\\n"; above RATE requests per second (all clients share one limit, as the
eBPF resource and nginx's zone do) slowapi answers 429.
"""

from __future__ import annotations

import sys

import uvicorn
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.middleware import SlowAPIMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def build(rate: int) -> Starlette:
    limiter = Limiter(key_func=lambda request: "all", default_limits=[f"{rate}/second"])

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello world\n")

    app = Starlette(routes=[Route("/", hello)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIMiddleware)
    return app


if __name__ == "__main__":
    uvicorn.run(build(int(sys.argv[2])), host="0.0.0.0", port=int(sys.argv[1]), log_level="warning",
                access_log=False)  # fmt: skip
