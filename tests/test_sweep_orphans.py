"""sweep_orphans against real RQ state: what belongs to no job goes, everything else stays byte-for-byte."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, cast

import pytest
import redis
from rq import Queue

from janitor.actions import Action
from janitor.config import RqSettings, Settings
from janitor.engine import RunReport
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter
from janitor.tasks import TASKS
from janitor.tasks.base import TaskContext
from janitor.tasks.sweep_orphans import (
    CURSOR_TTL_S,
    GHOST_MIN_AGE_S,
    DeleteOrphan,
    SweepOrphans,
)
from tests import funcs
from tests.clock import Clock
from tests.engine_run import run_tasks
from tests.funcs import work
from tests.rqenv import RQ_VERSIONS
from tests.rqstate import MARKER, SECRET_ERROR, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()
FOREIGN = {
    b"RESOURCE-ID::user/resource-1": "string",
    b"USER-ID-HASH-PREFIX::user": "hash",
    b"API-LOG-LIST::user": "list",
    b"myapp:results:abc": "stream",
    b"other:job:abc": "hash",
    b"rqx:results:abc": "stream",
}
"""actinia's keys and other applications' look-alikes, none with a TTL."""


def run(
    client: redis.Redis,
    now: float,
    *,
    dry_run: bool = False,
    config: Settings | None = None,
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run sweep_orphans once at ``now``; return the report and the parsed audit lines."""
    return run_tasks(client, config, only=["sweep_orphans"], now=now, dry_run=dry_run)


def deleted(events: list[dict[str, Any]]) -> dict[str, str]:
    """Key -> kind of the orphan_deleted events."""
    found = [e for e in events if e["event"] == "orphan_deleted"]
    assert all(
        set(e) == {"event", "timestamp", "run_id", "task", "dry_run", "key", "kind"}
        for e in found
    )
    return {e["key"]: e["kind"] for e in found}


def rq_time(epoch: float) -> str:
    """RQ's utcformat for a job hash field."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def queue(r: redis.Redis) -> Queue:
    """The RQ queue 'default' on the test server."""
    return Queue("default", connection=r)


def plant_foreign(client: redis.Redis) -> None:
    """Write the keys of FOREIGN, each of its type and without TTL."""
    for key, kind in FOREIGN.items():
        if kind == "string":
            client.set(key, b"\x80pickled")
        elif kind == "hash":
            client.hset(key, mapping={"user_id": "user", "last_heartbeat": rq_time(0)})
        elif kind == "list":
            client.lpush(key, b"entry")
        else:
            client.xadd(key, {"type": "2"})


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_failure_streams_of_deleted_jobs_go(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """A failed job's TTL-less result stream goes once its hash is deleted; streams of live jobs or with a TTL stay."""
    manifest = produce(redis_server.url, rq_version=rq_version, queue="compat")
    keys = Keyspace(manifest.key_prefix)
    gone, kept = manifest.jobs["failed"]
    finished = manifest.jobs["finished"][0]
    assert r.ttl(keys.results(gone)) == -1  # RQ's failure-result leak
    assert r.ttl(keys.results(finished)) > 0
    r.delete(keys.job(gone), keys.job(finished))  # as Job.delete() on RQ <= 2.12 does
    config = Settings(rq=RqSettings(key_prefix=manifest.key_prefix))
    before = snapshot(r)
    _, dry = run(r, time.time(), dry_run=True, config=config)
    assert_unchanged(before, snapshot(r))
    _, events = run(r, time.time(), config=config)
    assert deleted(events) == deleted(dry) == {keys.results(gone).decode(): "results"}
    assert not r.exists(keys.results(gone))
    assert r.exists(keys.results(kept))
    assert r.exists(keys.results(finished))  # it has a TTL: Redis deletes it
    assert MARKER not in json.dumps(events)
    assert SECRET_ERROR not in json.dumps(events)


class TestGhosts:
    """Data-less job hashes without TTL, judged by their heartbeat and the injected clock."""

    def test_ghosts_go_only_when_old(self, r: redis.Redis, clock: Clock) -> None:
        """A ghost whose heartbeat is recent stays; GHOST_MIN_AGE_S later it goes."""
        now = clock()
        r.hset(
            KEYS.job("ghost-old"), "last_heartbeat", rq_time(now - GHOST_MIN_AGE_S - 60)
        )
        r.hset(KEYS.job("ghost-young"), "last_heartbeat", rq_time(now - 60))
        r.hset(
            KEYS.job("ghost-bare"), "worker_name", "w1"
        )  # neither heartbeat nor status
        _, first = run(r, now)
        assert deleted(first) == {
            "rq:job:ghost-old": "ghost_job",
            "rq:job:ghost-bare": "ghost_job",
        }
        assert r.exists(KEYS.job("ghost-young"))
        clock.advance(GHOST_MIN_AGE_S)
        _, second = run(r, clock())
        assert deleted(second) == {"rq:job:ghost-young": "ghost_job"}

    def test_real_jobs_and_ghosts_with_ttl_or_status_stay(
        self, r: redis.Redis, queue: Queue, clock: Clock
    ) -> None:
        """Hashes with data, with a TTL, or with a status but no heartbeat are never ghosts."""
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        old = rq_time(clock() - 3600)
        r.hset(KEYS.job("ttl-ghost"), "last_heartbeat", old)
        r.expire(KEYS.job("ttl-ghost"), 3600)
        r.hset(KEYS.job("status-only"), "status", "started")
        before = snapshot(r)
        clock.advance(30 * 86_400)
        _, events = run(r, clock())
        assert deleted(events) == {}
        assert_unchanged(before, snapshot(r))
        assert r.hget(KEYS.job(job.id), "status") == b"finished"

    def test_ghost_of_a_queue_outside_the_allowlist_stays(
        self, r: redis.Redis, clock: Clock
    ) -> None:
        """A ghost whose origin names a queue outside [rq] queues is left alone; one inside goes."""
        old = rq_time(clock() - 3600)
        r.hset(KEYS.job("theirs"), mapping={"last_heartbeat": old, "origin": "private"})
        r.hset(
            KEYS.job("ours"), mapping={"last_heartbeat": old, "origin": "job_queue_1"}
        )
        config = Settings(rq=RqSettings(queues=("job_queue_*",)))
        _, events = run(r, clock(), config=config)
        assert deleted(events) == {"rq:job:ours": "ghost_job"}
        assert r.exists(KEYS.job("theirs"))


class TestSideKeys:
    """Dependency sets and executions of gone jobs."""

    def test_dependents_go_once_no_child_waits(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A gone parent's dependents set stays while a child waits, and goes once every child is terminal or gone."""
        parent = queue.enqueue(funcs.ok)
        waiting, other = (queue.enqueue(funcs.ok, depends_on=parent) for _ in range(2))
        r.delete(KEYS.job(parent.id))
        _, dry = run(r, time.time(), dry_run=True)
        _, first = run(r, time.time())
        assert deleted(dry) == deleted(first) == {}
        waiting.cancel()
        r.delete(KEYS.job(other.id))
        _, second = run(r, time.time())
        assert deleted(second) == {
            KEYS.dependents(parent.id).decode(): "dependents",
            KEYS.dependencies(other.id).decode(): "dependencies",
        }
        assert r.exists(KEYS.dependencies(waiting.id))  # its job still exists

    def test_ttl_less_executions_of_gone_jobs_go(self, r: redis.Redis) -> None:
        """Execution registries and hashes go when their job is gone and they have no TTL, also for ids with ':'."""
        for job_id in ("gone", "old:style", "alive", "alive:old"):
            r.zadd(KEYS.executions(job_id), {"e1": 1.0})
            r.hset(KEYS.execution(job_id, "e1"), "id", "e1")
        r.hset(KEYS.execution("gone", "e2"), "id", "e2")
        r.expire(KEYS.execution("gone", "e2"), 90)
        for job_id in ("alive", "alive:old"):
            r.hset(KEYS.job(job_id), mapping={"status": "started", "data": b"x"})
        _, events = run(r, time.time())
        assert deleted(events) == {
            "rq:executions:gone": "executions",
            "rq:execution:gone:e1": "execution",
            "rq:executions:old:style": "executions",
            "rq:execution:old:style:e1": "execution",
        }
        assert r.exists(KEYS.execution("gone", "e2"))  # it has a TTL
        for job_id in ("alive", "alive:old"):
            assert r.exists(KEYS.executions(job_id), KEYS.execution(job_id, "e1")) == 2


class TestScope:
    """Only RQ's keys are read, and only orphans written."""

    def test_foreign_keys_stay_byte_for_byte(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Keys of actinia and of other applications stay unchanged, next to orphans that go."""
        plant_foreign(r)
        r.xadd(KEYS.results("orphan"), {"type": "2"})
        before = {k: v for k, v in snapshot(r).items() if k in FOREIGN}
        assert len(before) == len(FOREIGN)
        _, events = run(r, time.time() + 86_400)
        assert deleted(events) == {"rq:results:orphan": "results"}
        assert_unchanged(before, {k: v for k, v in snapshot(r).items() if k in FOREIGN})

    def test_dry_run_changes_nothing_and_reports_the_same(
        self, r: redis.Redis, clock: Clock
    ) -> None:
        """--dry-run leaves Redis unchanged (no cursor either) and names the same keys as the real run."""
        plant_foreign(r)
        for n in range(5):
            r.xadd(KEYS.results(f"orphan-{n}"), {"type": "2"})
        r.hset(KEYS.job("ghost"), "last_heartbeat", rq_time(clock() - 3600))
        before = snapshot(r)
        _, dry = run(r, clock(), dry_run=True)
        assert_unchanged(before, snapshot(r))
        _, real = run(r, clock())
        assert deleted(dry) == deleted(real)
        assert len(deleted(dry)) == 6
        assert all(e["dry_run"] is True for e in dry)


class TestCursor:
    """The SCAN is bounded per run and resumes where the previous run stopped."""

    def test_cursor_resumes_across_runs(
        self, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a small per-run bound, each run deletes new orphans, the cursor is kept with a TTL, and the sweep ends."""
        monkeypatch.setattr(TASKS["sweep_orphans"], "keys_per_run", 10)
        orphans = {f"rq:results:orphan-{n}" for n in range(60)}
        for key in orphans:
            r.xadd(key, {"type": "2"})
        plant_foreign(r)
        cursor_key = KEYS.orphan_scan_cursor()
        seen: list[str] = []
        runs = 0
        while True:
            _, events = run(r, time.time())
            runs += 1
            seen += deleted(events)
            if not r.exists(cursor_key):
                break
            assert int(cast("bytes", r.get(cursor_key))) > 0
            assert 0 < r.ttl(cursor_key) <= CURSOR_TTL_S
            assert runs < 100
        assert runs > 3
        assert len(seen) == len(set(seen)) == len(orphans)
        assert set(seen) == orphans

    def test_unbounded_run_leaves_no_cursor(self, r: redis.Redis) -> None:
        """A sweep that finishes in one run leaves no cursor behind."""
        r.xadd(KEYS.results("orphan"), {"type": "2"})
        run(r, time.time())
        assert r.keys("janitor:*") == []


class TestRecheck:
    """Every delete re-checks the key and its owner at write time."""

    def plan(self, client: redis.Redis, now: float) -> list[DeleteOrphan]:
        """Plan sweep_orphans without applying anything; return the delete writes."""
        config = Settings()
        ctx = TaskContext(client, KEYS, config, now, QueueFilter.build(config.rq))
        actions = [a for a in SweepOrphans().plan(ctx) if isinstance(a, Action)]
        return [a.write for a in actions if isinstance(a.write, DeleteOrphan)]

    def test_owner_back_or_ttl_set_after_planning_keeps_the_key(
        self, r: redis.Redis
    ) -> None:
        """A stream whose job reappears, or that got a TTL, or a ghost that got data, is not deleted."""
        for name in ("back", "ttl", "free"):
            r.xadd(KEYS.results(name), {"type": "2"})
        r.hset(KEYS.job("ghost"), "last_heartbeat", rq_time(time.time() - 3600))
        writes = sorted(self.plan(r, time.time()), key=lambda w: w.key)
        assert [w.key for w in writes] == [
            b"rq:job:ghost",
            b"rq:results:back",
            b"rq:results:free",
            b"rq:results:ttl",
        ]
        r.hset(KEYS.job("back"), mapping={"status": "queued", "data": b"x"})
        r.expire(KEYS.results("ttl"), 60)
        r.hset(KEYS.job("ghost"), "data", b"x")
        assert DeleteOrphan.apply_batch(r, writes, None, time.time()) == [
            False,
            False,
            True,
            False,
        ]
        assert (
            r.exists(KEYS.results("back"), KEYS.results("ttl"), KEYS.job("ghost")) == 3
        )

    def test_dependents_set_that_gained_a_child_is_kept(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A dependents set that got a new, waiting child after planning is not deleted."""
        parent = queue.enqueue(funcs.ok)
        child = queue.enqueue(funcs.ok, depends_on=parent)
        r.delete(KEYS.job(parent.id))
        child.cancel()
        writes = self.plan(r, time.time())
        assert [w.key for w in writes] == [KEYS.dependents(parent.id)]
        r.sadd(KEYS.dependents(parent.id), "late-child")
        r.hset(KEYS.job("late-child"), mapping={"status": "deferred", "data": b"x"})
        assert DeleteOrphan.apply_batch(r, writes, None, time.time()) == [False]
        r.srem(KEYS.dependents(parent.id), child.id)  # same size, another child
        assert DeleteOrphan.apply_batch(r, writes, None, time.time()) == [False]
