"""Fixtures: one private redis-server for the module (tests/redis_server.py)."""

from __future__ import annotations

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
