"""Deferred jobs that can never run: report lists them; with [deferred] stuck = "cancel" they are canceled as RQ's Job.cancel() would."""

from __future__ import annotations

import time
from typing import Any, cast

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from janitor.config import DeferredSettings, Settings
from janitor.keyspace import Keyspace
from janitor.report import build_report
from janitor.tasks.stuck import SECOND_LOOK_S
from tests import funcs
from tests.engine_run import run_tasks
from tests.reports import leak
from tests.snapshot import assert_unchanged, restore, snapshot

KEYS = Keyspace()
CANCEL = Settings(deferred=DeferredSettings(stuck="cancel"))


def canceled(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(queue, job_id, reason) of the deferred_canceled events."""
    return [
        (e["queue"], e["job_id"], e["reason"])
        for e in events
        if e["event"] == "deferred_canceled"
    ]


def stuck_child(r: redis.Redis) -> tuple[Job, Job, Job]:
    """A parent that failed on a real worker, its deferred child (no allow_failure) and a waiting one."""
    queue = Queue("work", connection=r)
    parent = queue.enqueue(funcs.boom)
    child = queue.enqueue(funcs.ok, depends_on=parent)
    SimpleWorker([queue], connection=r).work(burst=True)
    blocker = queue.enqueue(funcs.ok)
    waiting = queue.enqueue(funcs.ok, depends_on=blocker)
    assert child.get_status() == "deferred"
    return parent, child, waiting


def state_of(r: redis.Redis, job_id: str) -> tuple[object, ...]:
    """What canceling decides: status, deferred and canceled registries, the queue list."""
    return (
        r.hget(KEYS.job(job_id), "status"),
        r.zrange(KEYS.deferred("work"), 0, -1),
        r.zrange(KEYS.canceled("work"), 0, -1),
        r.lrange(KEYS.queue("work"), 0, -1),
    )


def test_stuck_child_is_canceled_on_the_second_look_as_rq_cancels(
    r: redis.Redis,
) -> None:
    """First pass: a sighting only; SECOND_LOOK_S later: canceled, as Job.cancel() leaves it; the waiting child stays."""
    parent, child, waiting = stuck_child(r)
    now = time.time()
    only = ["clean_registries"]
    _, first = run_tasks(r, CANCEL, only=only, now=now)
    assert canceled(first) == []
    assert r.exists(KEYS.stuck_sighting(child.id))
    _, early = run_tasks(r, CANCEL, only=only, now=now + SECOND_LOOK_S - 1)
    assert canceled(early) == []
    state = snapshot(r)
    _, dry = run_tasks(r, CANCEL, only=only, now=now + SECOND_LOOK_S, dry_run=True)
    assert_unchanged(state, snapshot(r))
    _, events = run_tasks(r, CANCEL, only=only, now=now + SECOND_LOOK_S)
    expected = [("work", child.id, f"parent {parent.id} failed")]
    assert canceled(events) == canceled(dry) == expected
    janitor = state_of(r, child.id)
    restore(r, state)
    Job.fetch(child.id, connection=r).cancel()
    assert janitor[:2] == state_of(r, child.id)[:2]
    assert janitor[3] == state_of(r, child.id)[3]
    assert janitor[2] == [child.id.encode()] == state_of(r, child.id)[2]
    assert waiting.get_status() == "deferred"


def test_report_mode_writes_nothing_and_changed_facts_start_over(
    r: redis.Redis,
) -> None:
    """The default only reports (nothing written); a child whose facts changed since its sighting is not canceled."""
    _, child, _ = stuck_child(r)
    state = snapshot(r)
    _, events = run_tasks(r, only=["clean_registries"])
    assert canceled(events) == []
    assert_unchanged(state, snapshot(r))
    now = time.time()
    run_tasks(r, CANCEL, only=["clean_registries"], now=now)
    r.hset(KEYS.job(child.id), "allow_dependency_failures", "1")  # no longer stuck
    _, later = run_tasks(
        r, CANCEL, only=["clean_registries"], now=now + 2 * SECOND_LOOK_S
    )
    assert canceled(later) == []
    assert cast("bytes", r.hget(KEYS.job(child.id), "status")) == b"deferred"


def test_report_tells_why_each_deferred_job_never_runs(r: redis.Redis) -> None:
    """Two parents, one done and one gone: stranded ("parents done"); every parent gone: stuck; one pending: waiting."""
    queue = Queue("work", connection=r)
    done, gone = queue.enqueue(funcs.ok), queue.enqueue(funcs.ok)
    both = queue.enqueue(funcs.ok, depends_on=[done, gone])
    orphan_parent = queue.enqueue(funcs.ok)
    orphan = queue.enqueue(funcs.ok, depends_on=orphan_parent)
    pending = queue.enqueue(funcs.ok)
    waiting = queue.enqueue(funcs.ok, depends_on=pending)
    SimpleWorker([queue], connection=r).work(burst=True, max_jobs=1)  # runs `done`
    for job in (gone, orphan_parent):
        r.lrem(KEYS.queue("work"), 0, job.id)
        r.delete(KEYS.job(job.id))
    assert both.get_status() == "deferred"
    stuck = leak(build_report(r, Settings(), time.time()), "stuck_deferred_jobs")
    assert sorted(stuck["examples"]) == sorted(
        [
            f"work {both.id}: every parent is done, yet nothing will enqueue it",
            f"work {orphan.id}: every parent is gone",
        ]
    )
    assert stuck["by_kind"] == {
        "every_parent_gone": 1,
        "parent_ended_unaccepted": 0,
        "parents_done": 1,
    }
    assert waiting.get_status() == "deferred"
