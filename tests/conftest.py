"""Shared fixtures: a real redis-server per test session, a clean client per test, a settable clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.clock import Clock
from tests.servers import RedisServer, ServerBinaryMissingError, default_server_binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server (or valkey-server) on a free port, for the whole session."""
    try:
        binary = default_server_binary()
    except ServerBinaryMissingError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(err))
    server = RedisServer(
        binary=binary, workdir=tmp_path_factory.mktemp("redis")
    ).start()
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A bytes client on the session server; the database is emptied before and after the test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def clock() -> Clock:
    """A clock starting at the real current time, moved only by the test."""
    import time

    return Clock(time.time())


@pytest.fixture
def repo_root() -> Path:
    """The repository's root folder."""
    return Path(__file__).resolve().parent.parent
