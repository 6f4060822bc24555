"""A real redis-server on a Unix socket for the cluster tests (tests/support/redisserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redisserver import RedisServer, require_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer() as server:
        yield server
