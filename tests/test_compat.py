"""expire_jobs on data made by RQ 1.16.2 (actinia's pin), the newest 2.x and the newest 3.x, each in its own virtualenv."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from janitor.config import RetentionSettings, RqSettings, Settings
from tests.engine_run import run_tasks
from tests.rqenv import RQ_VERSIONS
from tests.rqstate import LIVE, MARKER, SECRET_ERROR, TERMINAL, Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

pytestmark = pytest.mark.compat

ZERO = RetentionSettings(finished=0, failed=0, stopped=0, canceled=0)


def expire(
    client: redis.Redis, manifest: Manifest, *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Run expire_jobs with zero retention on the manifest's key prefix; return the audit lines."""
    config = Settings(retention=ZERO, rq=RqSettings(key_prefix=manifest.key_prefix))
    _, events = run_tasks(client, config, only=["expire_jobs"], dry_run=dry_run)
    return events


def keys_of(client: redis.Redis, job_id: str) -> list[bytes]:
    """Every key that names the job id."""
    return [k for k in client.scan_iter(match=f"*{job_id}*") if isinstance(k, bytes)]


@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_terminal_jobs_of_every_rq_version_are_deleted_completely(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """Terminal jobs made by this RQ version go with all their keys; live ones and the failed parent stay."""
    manifest = produce(redis_server.url, rq_version=rq_version, queue="compat")
    before = snapshot(r)
    dry = expire(r, manifest, dry_run=True)
    assert_unchanged(before, snapshot(r))

    events = expire(r, manifest)
    deleted = {e["job_id"] for e in events if e["event"] == "job_deleted"}
    assert deleted == set(manifest.ids(*TERMINAL))
    assert deleted == {e["job_id"] for e in dry if e["event"] == "job_deleted"}
    for job_id in manifest.ids(*TERMINAL):
        assert keys_of(r, job_id) == [], job_id
    for job_id in manifest.ids(*LIVE, "failed_parent"):
        assert r.exists(f"{manifest.key_prefix}:job:{job_id}"), job_id
    output = json.dumps(events)
    assert MARKER not in output
    assert SECRET_ERROR not in output
    assert (
        expire(r, manifest)[:-1] == []
    )  # a second run finds nothing: only its run_finished line


def test_rq3_key_prefix_is_honoured(redis_server: RedisServer, r: redis.Redis) -> None:
    """With RQ_KEY_PREFIX set, RQ 3 data under that prefix is cleaned and rq:* keys are not read."""
    manifest = produce(
        redis_server.url,
        rq_version="3.0.0",
        queue="prefixed",
        env={"RQ_KEY_PREFIX": "myrq"},
    )
    assert manifest.key_prefix == "myrq"
    events = expire(r, manifest)
    assert {e["job_id"] for e in events if e["event"] == "job_deleted"} == set(
        manifest.ids(*TERMINAL)
    )
