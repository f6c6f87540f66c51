"""RQ 3's rate limits: the janitor frees the slot of a job it failed and of leaked slots, and promotes waiting jobs as RQ would."""

from __future__ import annotations

import subprocess
import time
from typing import Any, cast

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.rate_limit import RateLimit
from rq.worker import base as worker_base

from janitor.config import Settings
from janitor.keyspace import Keyspace
from janitor.report import build_report
from tests import funcs
from tests.engine_run import run_tasks
from tests.rqenv import python_for
from tests.rqstate import Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, restore, snapshot

KEYS = Keyspace()
LATER = 300.0
"""Seconds after the kill: past the started entry's heartbeat deadline."""

RQ_CLEANUP = """
import sys
from redis import Redis
from rq.registry import StartedJobRegistry
StartedJobRegistry(sys.argv[2], connection=Redis.from_url(sys.argv[1])).cleanup(timestamp=float(sys.argv[3]))
"""


def events_of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The audit lines of one event."""
    return [e for e in events if e["event"] == name]


def limit_state(r: redis.Redis, m: Manifest) -> tuple[object, ...]:
    """Statuses of the holder and the waiting job, the limit's sets, the queue list."""
    (holder,) = m.ids("rate_limit_holder")
    (waiting,) = m.ids("rate_limit_waiting")
    return (
        r.hget(KEYS.job(holder), "status"),
        r.hget(KEYS.job(waiting), "status"),
        r.zrange(KEYS.rate_limit_allowed("rqstate"), 0, -1),
        r.zrange(KEYS.rate_limit_waiting("rqstate"), 0, -1),
        r.lrange(KEYS.queue(m.queue), 0, -1),
    )


def test_failing_the_holder_frees_its_slot_and_the_next_job_runs(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """The janitor fails the killed holder, frees its slot and promotes the waiting job, as RQ's cleanup would."""
    m = produce(redis_server.url, queue="rl", with_rate_limit=True)
    m.expire_dead_workers(r)
    (holder,) = m.ids("rate_limit_holder")
    (waiting,) = m.ids("rate_limit_waiting")
    assert r.hget(KEYS.job(waiting), "status") == b"rate_limited"
    later = time.time() + LATER
    only = ["recover_abandoned"]
    run_tasks(r, only=only, now=later)
    state = snapshot(r)
    _, dry = run_tasks(r, only=only, now=later, dry_run=True)
    assert_unchanged(state, snapshot(r))
    subprocess.run(
        [
            str(python_for("3.0.0")),
            "-c",
            RQ_CLEANUP,
            redis_server.url,
            "rl",
            repr(later),
        ],
        check=True,
        timeout=60,
    )
    rq_left = limit_state(r, m)
    restore(r, state)
    _, events = run_tasks(r, only=only, now=later)
    for lines in (dry, events):
        assert [e["job_id"] for e in events_of(lines, "rate_limit_slot_released")] == [
            holder
        ]
        promoted = events_of(lines, "rate_limited_job_promoted")
        assert [(e["queue"], e["job_id"], e["key"]) for e in promoted] == [
            ("rl", waiting, "rqstate")
        ]
    assert limit_state(r, m) == rq_left
    assert rq_left[:4] == (b"failed", b"queued", [waiting.encode()], [])
    assert cast("list[bytes]", rq_left[4])[-1] == waiting.encode()


def test_leaked_slots_are_freed_and_empty_limits_forgotten(r: redis.Redis) -> None:
    """A slot held by a deleted job is freed, the waiting job promoted; once nothing is left the limit goes."""
    queue = Queue("rl", connection=r)
    limit = RateLimit("api", 1)
    first = queue.enqueue(funcs.ok, rate_limit=limit)
    second = queue.enqueue(funcs.ok, rate_limit=limit)
    assert second.get_status() == "rate_limited"
    r.delete(KEYS.job(first.id))  # deleted while holding the slot
    r.lrem(KEYS.queue("rl"), 0, first.id)
    _, events = run_tasks(r, only=["clean_registries"])
    assert [e["job_id"] for e in events_of(events, "rate_limit_slot_released")] == [
        first.id
    ]
    assert [e["job_id"] for e in events_of(events, "rate_limited_job_promoted")] == [
        second.id
    ]
    assert r.lrange(KEYS.queue("rl"), 0, -1) == [second.id.encode()]
    report = build_report(r, Settings(), time.time())
    [api] = report["rate_limits"]["keys"]
    assert (api["allowed"], api["waiting"], api["stale"], api["starved"]) == (
        1,
        0,
        0,
        False,
    )
    r.delete(KEYS.job(second.id))
    r.delete(KEYS.queue("rl"))
    report = build_report(r, Settings(), time.time())
    [api] = report["rate_limits"]["keys"]
    assert (api["stale"], api["starved"]) == (1, False)
    # one pass frees the slot and then forgets the emptied limit, as RQ's cleanup() does
    _, last = run_tasks(r, only=["clean_registries"])
    released = events_of(last, "rate_limit_slot_released")
    assert [e["job_id"] for e in released] == [second.id]
    forgotten = [e["name"] for e in events_of(last, "index_entry_removed")]
    assert forgotten == ["api"]
    assert not r.exists(
        KEYS.rate_limit("api"), KEYS.rate_limit_allowed("api"), KEYS.rate_limit_keys()
    )
    assert r.exists(KEYS.rate_limit_waiting("api")) == 0


def test_deleting_a_job_that_still_holds_a_slot_frees_it(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """expire_jobs deletes a finished job whose slot a crash kept, frees the slot and promotes the next job."""
    queue = Queue("rl", connection=r)
    limit = RateLimit("api", 1)
    first = queue.enqueue(funcs.ok, rate_limit=limit, result_ttl=-1)
    second = queue.enqueue(funcs.ok, rate_limit=limit)
    # the worker dies right after the job's end is written, before it gives the slot back
    monkeypatch.setattr(worker_base, "release_slot", lambda _: [])
    SimpleWorker([queue], connection=r).work(burst=True, max_jobs=1)
    assert first.get_status() == "finished"
    assert r.zrange(KEYS.rate_limit_allowed("api"), 0, -1) == [first.id.encode()]
    assert second.get_status() == "rate_limited"
    _, events = run_tasks(r, only=["expire_jobs"], now=time.time() + 2 * 86_400)
    assert [e["job_id"] for e in events_of(events, "job_deleted")] == [first.id]
    released = events_of(events, "rate_limit_slot_released")
    assert [e["job_id"] for e in released] == [first.id]
    promoted = events_of(events, "rate_limited_job_promoted")
    assert [e["job_id"] for e in promoted] == [second.id]
    assert r.lrange(KEYS.queue("rl"), 0, -1) == [second.id.encode()]
