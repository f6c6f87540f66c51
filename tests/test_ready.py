"""RQ 3's ready registry: jobs left there get enqueued as ReadyJobRegistry.cleanup() would, once, re-checked."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Dependency, Job
from rq.rate_limit import RateLimit
from rq.registry import ReadyJobRegistry

from janitor.keyspace import Keyspace
from janitor.tasks.ready import SERVED_GRACE_S
from tests import funcs
from tests.engine_run import run_tasks
from tests.snapshot import assert_unchanged, restore, snapshot

KEYS = Keyspace()


def stranded(
    r: redis.Redis, queue: Queue, *, at_front: bool = False, **options: Any
) -> Job:
    """A dependent moved to ready by RQ's own register_jobs, its enqueue never run (an interrupted worker)."""
    parent = queue.enqueue(funcs.ok)
    depends_on = Dependency(jobs=[parent], enqueue_at_front=at_front)
    child = queue.enqueue(funcs.ok, depends_on=depends_on, **options)
    assert child.get_status() == "deferred"
    with r.pipeline() as pipe:
        pipe.multi()
        ReadyJobRegistry(queue=queue).register_jobs([child], pipeline=pipe)
        pipe.execute()
    r.lrem(KEYS.queue(queue.name), 0, parent.id)  # the parent ran elsewhere
    return child


def events_of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The audit lines of one event."""
    return [e for e in events if e["event"] == name]


def fields(r: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    """A job hash without enqueued_at (a time) and data (pickled again by job.save)."""
    raw = cast("dict[bytes, bytes]", r.hgetall(KEYS.job(job_id)))
    return {k: v for k, v in raw.items() if k not in (b"enqueued_at", b"data")}


def test_stranded_ready_job_on_unserved_queue_is_enqueued_as_rq_would(
    r: redis.Redis,
) -> None:
    """One pass enqueues it: the same queue list, registry and fields as RQ's cleanup leaves; a worker then runs it."""
    queue = Queue("pj", connection=r)
    child = stranded(r, queue)
    state = snapshot(r)
    _, dry = run_tasks(r, only=["clean_registries"], dry_run=True)
    assert_unchanged(state, snapshot(r))
    _, events = run_tasks(r, only=["clean_registries"])
    assert [e["job_id"] for e in events_of(events, "ready_job_enqueued")] == [child.id]
    assert [e["job_id"] for e in events_of(dry, "ready_job_enqueued")] == [child.id]
    janitor = (
        r.lrange(KEYS.queue("pj"), 0, -1),
        r.zcard(KEYS.ready("pj")),
        fields(r, child.id),
    )
    restore(r, state)
    ReadyJobRegistry(queue=queue).cleanup()
    rq = (
        r.lrange(KEYS.queue("pj"), 0, -1),
        r.zcard(KEYS.ready("pj")),
        fields(r, child.id),
    )
    assert janitor == rq
    assert rq[0] == [child.id.encode()]

    restore(r, state)
    run_tasks(r, only=["clean_registries"])
    SimpleWorker([queue], connection=r).work(burst=True)
    assert Job.fetch(child.id, connection=r).get_status() == "finished"
    _, again = run_tasks(r, only=["clean_registries"])
    assert events_of(again, "ready_job_enqueued") == []


def test_served_queue_waits_for_its_worker_first(r: redis.Redis) -> None:
    """On a queue a live worker serves, an entry is left for SERVED_GRACE_S, then enqueued."""
    queue = Queue("busy", connection=r)
    child = stranded(r, queue)
    r.sadd(KEYS.workers("busy"), KEYS.worker("w1"))
    r.hset(KEYS.worker("w1"), mapping={"queues": "busy", "last_heartbeat": "x"})
    r.expire(KEYS.worker("w1"), 420)
    _, early = run_tasks(r, only=["clean_registries"])
    assert events_of(early, "ready_job_enqueued") == []
    _, late = run_tasks(
        r, only=["clean_registries"], now=time.time() + SERVED_GRACE_S + 1
    )
    assert [e["job_id"] for e in events_of(late, "ready_job_enqueued")] == [child.id]


def test_stale_entries_go_and_others_are_left(r: redis.Redis) -> None:
    """An entry whose job is gone or queued meanwhile is dropped; a rate-limited one is left to RQ."""
    queue = Queue("pj", connection=r)
    gone = stranded(r, queue)
    moved_on = stranded(r, queue)
    limited = stranded(r, queue, rate_limit=RateLimit("api", 1))
    r.delete(KEYS.job(gone.id))
    r.hset(KEYS.job(moved_on.id), "status", "queued")
    _, events = run_tasks(r, only=["clean_registries"])
    dropped = {
        e["job_id"]
        for e in events_of(events, "registry_entry_removed")
        if e["registry"] == "ready"
    }
    assert dropped == {gone.id, moved_on.id}
    assert events_of(events, "ready_job_enqueued") == []
    assert r.zrange(KEYS.ready("pj"), 0, -1) == [limited.id.encode()]


@pytest.mark.parametrize("at_front", [False, True])
def test_enqueue_at_front_is_honoured(r: redis.Redis, at_front: bool) -> None:
    """A dependent with Dependency(enqueue_at_front=True) goes to the head of the queue, as RQ's cleanup pushes it."""
    queue = Queue("pj", connection=r)
    queue.enqueue(funcs.ok, job_id="already-queued")
    child = stranded(r, queue, at_front=at_front)
    state = snapshot(r)
    run_tasks(r, only=["clean_registries"])
    ids = r.lrange(KEYS.queue("pj"), 0, -1)
    assert ids[0 if at_front else -1] == child.id.encode()
    restore(r, state)
    ReadyJobRegistry(queue=queue).cleanup()
    assert r.lrange(KEYS.queue("pj"), 0, -1) == ids
