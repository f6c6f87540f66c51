"""recover_abandoned with real workers, one of them SIGKILLed mid-job: confirmed twice, then recovered as RQ would."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from rq.job import Job
from rq.results import Result

from janitor.config import AbandonedSettings, RqSettings, Settings
from janitor.keyspace import Keyspace
from janitor.report import build_report
from tests.engine_run import run_tasks
from tests.reports import leak
from tests.rqenv import RQ_VERSIONS, python_for
from tests.rqstate import Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, restore, snapshot

LATER = 300.0  # seconds after the kill: past the ≈90 s heartbeat deadline of the started entry


def recover(
    client: redis.Redis,
    manifest: Manifest,
    *,
    action: str = "fail",
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """One recover_abandoned pass, LATER seconds from now; return its job_abandoned events."""
    config = Settings(
        abandoned=AbandonedSettings(action=action),
        rq=RqSettings(key_prefix=manifest.key_prefix),
    )
    _, events = run_tasks(
        client,
        config,
        only=["recover_abandoned"],
        now=time.time() + LATER,
        dry_run=dry_run,
    )
    return [e for e in events if e["event"] == "job_abandoned"]


@pytest.fixture
def killed(redis_server: RedisServer, r: redis.Redis) -> Iterator[Manifest]:
    """RQ 3 state with a worker SIGKILLed mid-job and a live worker running another job."""
    manifest = produce(
        redis_server.url, queue="work", with_killed_worker=True, with_started=True
    )
    try:
        manifest.expire_dead_workers(r)
        yield manifest
    finally:
        manifest.kill_workers()


class TestRecoverAbandoned:
    """The abandoned job of a killed worker, and nothing else."""

    def test_second_pass_fails_the_job_the_way_rq_does(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """The first pass only suspects; the second moves the job to failed, visible through RQ's API."""
        (job_id,) = killed.ids("abandoned")
        assert recover(r, killed) == []
        assert Job.fetch(job_id, connection=r).get_status() == "started"
        events = recover(r, killed)
        assert [(e["job_id"], e["action"], e["worker"]) for e in events] == [
            (job_id, "failed", killed.dead_workers[0])
        ]
        job = Job.fetch(job_id, connection=r)
        assert job.get_status() == "failed"
        assert job_id in job.failed_job_registry.get_job_ids(cleanup=False)
        assert job_id not in job.started_job_registry.get_job_ids(cleanup=False)
        assert 0 < r.ttl(job.key) <= 31_536_000
        result = job.latest_result()
        assert result is not None
        assert result.type == Result.Type.FAILED
        assert "AbandonedJobError" in (result.exc_string or "")
        assert recover(r, killed) == []  # nothing left to do

    def test_live_worker_and_its_job_are_untouched(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """The job a live worker is running, and the worker itself, stay as they are."""
        (live_job,) = killed.ids("started")
        keys = Keyspace(killed.key_prefix)
        recover(r, killed)
        recover(r, killed)
        assert Job.fetch(live_job, connection=r).get_status() == "started"
        assert r.exists(keys.worker(killed.workers[0]))

    def test_worker_back_between_passes_stops_recovery(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """A worker that re-registers under the same name after the first pass keeps its job."""
        (job_id,) = killed.ids("abandoned")
        recover(r, killed)
        worker_key = Keyspace(killed.key_prefix).worker(killed.dead_workers[0])
        r.hset(worker_key, mapping={"birth": "now", "state": "busy"})
        r.expire(worker_key, 60)
        assert recover(r, killed) == []
        assert Job.fetch(job_id, connection=r).get_status() == "started"

    def test_requeue_action_puts_the_job_back(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """With action = requeue the job goes back onto its queue as queued."""
        (job_id,) = killed.ids("abandoned")
        recover(r, killed, action="requeue")
        events = recover(r, killed, action="requeue")
        assert [e["action"] for e in events] == ["requeued"]
        assert Job.fetch(job_id, connection=r).get_status() == "queued"
        assert job_id.encode() in r.lrange(Keyspace().queue("work"), 0, -1)

    def test_retries_left_are_honoured(self, r: redis.Redis, killed: Manifest) -> None:
        """A job with retries left is retried after its interval, as RQ's cleanup would, not failed."""
        (job_id,) = killed.ids("abandoned")
        r.hset(
            Keyspace().job(job_id),
            mapping={"retries_left": "2", "retry_intervals": "[10, 60]"},
        )
        recover(r, killed)
        assert [e["action"] for e in recover(r, killed)] == ["requeued"]
        job = Job.fetch(job_id, connection=r)
        assert job.get_status() == "scheduled"
        assert job.retries_left == 1
        assert r.zscore(Keyspace().scheduled("work"), job_id) is not None

    def test_report_action_writes_nothing(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """With action = report the confirmed job is reported and nothing changes."""
        recover(r, killed, action="report")
        before = snapshot(r)
        events = recover(r, killed, action="report")
        assert [e["action"] for e in events] == ["reported"]
        assert_unchanged(before, snapshot(r))

    def test_dry_run_changes_nothing(self, r: redis.Redis, killed: Manifest) -> None:
        """A dry run after a real first pass reports the recovery and leaves Redis unchanged."""
        recover(r, killed)
        before = snapshot(r)
        assert [e["action"] for e in recover(r, killed, dry_run=True)] == ["failed"]
        assert_unchanged(before, snapshot(r))

    def test_finished_job_left_in_started_registry_is_not_failed(
        self, r: redis.Redis, killed: Manifest
    ) -> None:
        """A finished job whose started entry was left behind (rq#2424) is never turned into a failure."""
        (job_id,) = killed.ids("abandoned")
        r.hset(Keyspace().job(job_id), "status", "finished")
        recover(r, killed)
        assert recover(r, killed) == []
        assert Job.fetch(job_id, connection=r).get_status() == "finished"


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_abandoned_job_of_every_rq_version(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """The killed worker's job is failed on the second pass, whatever RQ version made the data."""
    manifest = produce(
        redis_server.url, rq_version=rq_version, queue="old", with_killed_worker=True
    )
    try:
        manifest.expire_dead_workers(r)
        (job_id,) = manifest.ids("abandoned")
        assert recover(r, manifest) == []
        assert [e["job_id"] for e in recover(r, manifest)] == [job_id]
        keys = Keyspace(manifest.key_prefix)
        assert r.hget(keys.job(job_id), "status") == b"failed"
        assert r.zscore(keys.failed("old"), job_id) is not None
        members = cast("list[bytes]", r.zrange(keys.started("old"), 0, -1))
        assert not [m for m in members if m.startswith(job_id.encode())]
    finally:
        manifest.kill_workers()


RQ_CLEANUP = """
import sys
from redis import Redis
from rq.registry import StartedJobRegistry
registry = StartedJobRegistry(sys.argv[2], connection=Redis.from_url(sys.argv[1]))
registry.cleanup(timestamp=float(sys.argv[3]))
"""


def rq_cleanup(rq_version: str, url: str, queue: str, at: float) -> None:
    """RQ's own started-registry cleanup of that version, as a worker's maintenance runs it."""
    args = [str(python_for(rq_version)), "-c", RQ_CLEANUP, url, queue, repr(at)]
    subprocess.run(args, check=True, timeout=60, capture_output=True)


def dependency_state(
    r: redis.Redis, keys: Keyspace, parent: str, *children: str
) -> tuple[object, ...]:
    """What failing ``parent`` decides for its children: statuses, queue, deferred registry, dependents."""
    return (
        r.hget(keys.job(parent), "status"),
        [r.hget(keys.job(child), "status") for child in children],
        r.lrange(keys.queue("work"), 0, -1),
        r.zrange(keys.deferred("work"), 0, -1),
        r.smembers(keys.dependents(parent)),
    )


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_dependents_that_allow_failure_run_after_the_janitor_fails_their_parent(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """The allow_failure child is enqueued (audited) and a real worker runs it; the other child stays deferred."""
    manifest = produce(
        redis_server.url, rq_version=rq_version, queue="work", with_killed_worker=True
    )
    manifest.expire_dead_workers(r)
    keys = Keyspace(manifest.key_prefix)
    (parent,) = manifest.ids("abandoned")
    (allowed,) = manifest.ids("abandoned_child_allowed")
    (strict,) = manifest.ids("abandoned_child")
    config = Settings(rq=RqSettings(key_prefix=manifest.key_prefix))
    later = time.time() + LATER
    run_tasks(r, config, only=["recover_abandoned"], now=later)
    state = snapshot(r)
    _, dry = run_tasks(r, config, only=["recover_abandoned"], now=later, dry_run=True)
    assert_unchanged(state, snapshot(r))
    rq_left: tuple[object, ...] | None = None
    if manifest.rq_major >= 2:  # RQ 1.16's started-registry cleanup forgot dependents
        restore(r, state)
        rq_cleanup(rq_version, redis_server.url, "work", later)
        rq_left = dependency_state(r, keys, parent, allowed, strict)
        restore(r, state)
    _, events = run_tasks(r, config, only=["recover_abandoned"], now=later)
    if rq_left is not None:
        assert dependency_state(r, keys, parent, allowed, strict) == rq_left
    for lines in (dry, events):
        enqueued = [e for e in lines if e["event"] == "dependent_enqueued"]
        assert [(e["queue"], e["job_id"], e["parent"]) for e in enqueued] == [
            ("work", allowed, parent)
        ]
    assert r.hget(keys.job(parent), "status") == b"failed"
    queued = [j.encode() for j in manifest.ids("queued")]
    assert r.lrange(keys.queue("work"), 0, -1) == [*queued, allowed.encode()]
    assert r.hget(keys.job(allowed), "status") == b"queued"
    assert strict.encode() in r.zrange(keys.deferred("work"), 0, -1)
    assert allowed.encode() not in r.zrange(keys.deferred("work"), 0, -1)
    assert r.smembers(keys.dependents(parent)) == {strict.encode()}
    manifest.work_burst(rq_version)
    assert r.hget(keys.job(allowed), "status") == b"finished"
    assert r.hget(keys.job(strict), "status") == b"deferred"
    stuck = leak(build_report(r, config, time.time()), "stuck_deferred_jobs")
    (failed_parent,) = manifest.ids("failed_parent")
    (its_child,) = manifest.ids("deferred_child")
    assert sorted(stuck["examples"]) == sorted(
        [
            f"work {strict}: parent {parent} failed",
            f"work {its_child}: parent {failed_parent} failed",
        ]
    )
    assert stuck["by_kind"] == {
        "every_parent_gone": 0,
        "parent_ended_unaccepted": 2,
        "parents_done": 0,
    }
