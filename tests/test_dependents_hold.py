"""A parent stays while a dependent waits on it (rq#2452), in the fast path and the planner alike, up to a bound."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from janitor.actions import Action
from janitor.config import Settings
from janitor.dependencies import dependents_bound
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter
from janitor.tasks.base import TaskContext
from janitor.tasks.expire_jobs import ExpireJobs
from tests import funcs
from tests.engine_run import run_tasks
from tests.rqenv import RQ_VERSIONS, python_for
from tests.servers import RedisServer

KEYS = Keyspace()
DAY = 86_400


def deleted(events: list[dict[str, Any]]) -> set[str]:
    """The ids of the job_deleted events."""
    return {e["job_id"] for e in events if e["event"] == "job_deleted"}


def planned(r: redis.Redis, now: float) -> set[str]:
    """The ids the reference planner (not the fast path) would delete at ``now``."""
    settings = Settings()
    ctx = TaskContext(r, KEYS, settings, now, QueueFilter.build(settings.rq))
    return {
        str(a.fields["job_id"])
        for a in ExpireJobs().plan(ctx)
        if isinstance(a, Action) and a.event == "job_deleted"
    }


@pytest.fixture
def chain(r: redis.Redis) -> tuple[str, str]:
    """A finished parent and its child, enqueued by RQ and still queued behind it (not run yet)."""
    queue = Queue("work", connection=r)
    parent = queue.enqueue(funcs.ok, result_ttl=-1)
    child = queue.enqueue(funcs.ok, depends_on=parent, result_ttl=-1)
    SimpleWorker([queue], connection=r).work(burst=True, max_jobs=1)
    assert parent.get_status() == "finished"
    assert child.get_status() == "queued"
    assert not r.exists(KEYS.dependents(parent.id))  # RQ took the child out of it
    return parent.id, child.id


def test_finished_parent_survives_until_its_queued_child_ran(
    r: redis.Redis, chain: tuple[str, str]
) -> None:
    """Past its retention the parent stays while the child waits; after the child ran it goes on the next pass."""
    parent, child = chain
    later = time.time() + 2 * DAY
    assert planned(r, later) == set()
    _, events = run_tasks(r, only=["expire_jobs"], now=later)
    assert deleted(events) == set()
    assert r.exists(KEYS.job(parent))
    SimpleWorker([Queue("work", connection=r)], connection=r).work(burst=True)
    assert planned(r, later) == {parent, child}
    _, events = run_tasks(r, only=["expire_jobs"], now=later)
    assert deleted(events) == {parent, child}


def test_a_stuck_child_does_not_pin_its_parent_for_ever(
    r: redis.Redis, chain: tuple[str, str]
) -> None:
    """The longest retention past its due time the parent goes anyway; the child stays untouched."""
    parent, child = chain
    due = DAY  # [retention] finished
    past = time.time() + due + dependents_bound(Settings().retention) + DAY
    _, events = run_tasks(r, only=["expire_jobs"], now=past)
    assert deleted(events) == {parent}
    assert r.hget(KEYS.job(child), "status") == b"queued"


def test_the_delete_rechecks_the_dependents_atomically(r: redis.Redis) -> None:
    """A child in the parent's dependents set that waits again at write time keeps the parent."""
    queue = Queue("work", connection=r)
    parent = queue.enqueue(funcs.boom)
    child = queue.enqueue(funcs.ok, depends_on=parent)
    SimpleWorker([queue], connection=r).work(burst=True)
    r.hset(KEYS.job(child.id), "status", "canceled")  # terminal when planned
    later = time.time() + 31 * DAY  # failed jobs are due after 30 days
    settings = Settings()
    ctx = TaskContext(r, KEYS, settings, later, QueueFilter.build(settings.rq))
    actions = [a for a in ExpireJobs().plan(ctx) if isinstance(a, Action) and a.write]
    [delete] = [a for a in actions if a.fields.get("job_id") == parent.id]
    r.hset(KEYS.job(child.id), "status", "deferred")  # waits again
    assert delete.write is not None
    assert type(delete.write).apply_batch(r, [delete.write], None, later) == [False]
    assert r.exists(KEYS.job(parent.id))


CHAIN = """
import sys
from redis import Redis
from rq import Queue, SimpleWorker
r = Redis.from_url(sys.argv[1])
queue = Queue("work", connection=r)
parent = queue.enqueue("os.getcwd", result_ttl=-1)
child = queue.enqueue("os.getcwd", depends_on=parent, result_ttl=-1)
SimpleWorker([queue], connection=r).work(burst=True, max_jobs=1)
print(parent.id, child.id)
"""
"""A finished parent and its child queued behind it, made by that RQ version."""


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_parent_of_a_queued_child_is_kept_on_every_rq_version(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """Whatever RQ version enqueued the child, its dependency_ids keep the finished parent."""
    out = subprocess.run(
        [str(python_for(rq_version)), "-c", CHAIN, redis_server.url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    parent, child = out[-2:]
    assert r.hget(KEYS.job(child), "status") == b"queued"
    later = time.time() + 2 * DAY
    _, events = run_tasks(r, only=["expire_jobs"], now=later)
    assert deleted(events) == set()
    assert planned(r, later) == set()
    r.delete(KEYS.job(child))
    r.delete(KEYS.queue("work"))
    _, events = run_tasks(r, only=["expire_jobs"], now=later)
    assert deleted(events) == {parent}
