"""A real redis-server on a Unix socket for the cluster tests (tests/integration/redisserver.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from redisserver import RedisServer, have_redis  # noqa: E402


def need_redis() -> None:
    if not have_redis():
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    need_redis()
    with RedisServer() as server:
        yield server
