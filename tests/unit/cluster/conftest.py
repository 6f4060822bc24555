"""A real redis-server on a Unix socket for the cluster tests (tests/integration/redisserver.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from redisserver import RedisServer, require_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer() as server:
        yield server
