"""prune_queues against real RQ queues: drained per_job queues leave rq:queues after the grace, busy ones stay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import pytest
import redis
from rq import Queue, Worker

from janitor.actions import Action, PruneQueue
from janitor.config import QueuesSettings, RetentionSettings, RqSettings, Settings
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter
from janitor.tasks.base import TaskContext
from janitor.tasks.prune_queues import PruneQueues, state_ttl
from tests import funcs
from tests.engine_run import run_tasks
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()
GRACE = Settings().queues.prune_after
"""The default [queues] prune_after: an hour."""
STATE_TTL_S = state_ttl(GRACE)
ACTINIA_KEYS = (
    "RESOURCE-ID::x",
    "USER-ID-y",
    "API-LOG-LIST::z",
    "actinia_worker_count",
)


def run(
    client: redis.Redis,
    now: float,
    *,
    config: Settings | None = None,
    dry_run: bool = False,
    only: tuple[str, ...] = ("prune_queues",),
) -> list[dict[str, Any]]:
    """Run the tasks once through the engine; return the parsed audit lines."""
    _, events = run_tasks(client, config, only=only, now=now, dry_run=dry_run)
    return events


def pruned(events: list[dict[str, Any]]) -> set[str]:
    """The queues of the queue_pruned events."""
    return {e["queue"] for e in events if e["event"] == "queue_pruned"}


def listed(client: redis.Redis) -> set[str]:
    """The queue names in rq:queues."""
    return {
        cast("bytes", m).decode().removeprefix("rq:queue:")
        for m in client.smembers(KEYS.queues())
    }


def per_job_queue(client: redis.Redis) -> Queue:
    """An actinia per_job queue, named like actinia names them."""
    return Queue(f"job_queue_resource_id-{uuid.uuid4()}", connection=client)


def drained(client: redis.Redis, *, result_ttl: int = 0) -> Queue:
    """A per_job queue whose one job a real worker ran; with result_ttl=0 RQ keeps no record of it."""
    queue = per_job_queue(client)
    queue.enqueue(funcs.ok, result_ttl=result_ttl)
    funcs.work(client, queue)
    return queue


def has_keys(client: redis.Redis, queue: Queue) -> bool:
    """Whether any RQ key of the queue other than its rq:queues member exists."""
    return any(client.scan_iter(match=f"rq:*:{queue.name}*"))


class TestWhatGoes:
    """Queues empty everywhere leave rq:queues once the grace has passed."""

    def test_drained_per_job_queues_go_after_the_grace(self, r: redis.Redis) -> None:
        """Drained per_job queues are recorded at t, kept until t + grace, removed after it; a busy one stays."""
        gone = [drained(r) for _ in range(3)]
        busy = per_job_queue(r)
        busy.enqueue(funcs.ok)
        assert not any(has_keys(r, q) for q in gone)
        t = time.time()

        assert pruned(run(r, t)) == set()
        for queue in gone:
            ttl = r.ttl(KEYS.queue_empty_since(queue.name))
            assert 0 < ttl <= STATE_TTL_S
        assert not r.exists(KEYS.queue_empty_since(busy.name))
        assert pruned(run(r, t + GRACE - 1)) == set()

        assert pruned(run(r, t + GRACE + 1)) == {q.name for q in gone}
        assert listed(r) == {busy.name}
        assert not any(r.exists(KEYS.queue_empty_since(q.name)) for q in gone)
        assert busy.count == 1

    @pytest.mark.parametrize("prune_after", [0, 600])
    def test_prune_after_sets_the_grace(self, r: redis.Redis, prune_after: int) -> None:
        """[queues] prune_after is the grace: not a second earlier; "0s" prunes on the pass after the first sighting."""
        queue = drained(r)
        config = Settings(queues=QueuesSettings(prune_after=prune_after))
        t = time.time()
        assert pruned(run(r, t, config=config)) == set()
        if prune_after:
            assert pruned(run(r, t + prune_after - 1, config=config)) == set()
        assert pruned(run(r, t + prune_after, config=config)) == {queue.name}

    def test_queue_goes_once_expire_jobs_removed_its_finished_jobs(
        self, r: redis.Redis
    ) -> None:
        """A queue holding only finished jobs stays until expire_jobs deletes them, then goes after the grace."""
        queue = drained(r, result_ttl=500)
        assert r.exists(KEYS.finished(queue.name))
        t = time.time()
        assert pruned(run(r, t)) == set()
        assert pruned(run(r, t + GRACE + 1)) == set()
        both = ("expire_jobs", "prune_queues")
        config = Settings(retention=RetentionSettings(finished=0))
        assert pruned(run(r, t + GRACE + 2, config=config, only=both)) == set()
        assert pruned(run(r, t + 2 * GRACE + 3, config=config, only=both)) == {
            queue.name
        }
        assert not has_keys(r, queue)

    def test_audit_fields_are_exact(self, r: redis.Redis) -> None:
        """queue_pruned carries only queue besides the common fields, and run_finished counts it."""
        queue = drained(r)
        t = time.time()
        run(r, t)
        events = run(r, t + GRACE + 1)
        [line] = [e for e in events if e["event"] == "queue_pruned"]
        assert set(line) == {"event", "timestamp", "run_id", "task", "dry_run", "queue"}
        assert (line["task"], line["queue"], line["dry_run"]) == (
            "prune_queues",
            queue.name,
            False,
        )
        assert next(e for e in events if e["event"] == "run_finished")["counts"] == {
            "queue_pruned": 1
        }


def _queued(queue: Queue) -> None:
    queue.enqueue(funcs.ok)


def _scheduled(queue: Queue) -> None:
    queue.enqueue_in(timedelta(hours=1), funcs.ok)


def _deferred(queue: Queue) -> None:
    parent = Queue("elsewhere", connection=queue.connection).enqueue(funcs.ok)
    queue.enqueue(funcs.ok, depends_on=parent)


def _failed(queue: Queue) -> None:
    queue.enqueue(funcs.boom)
    funcs.work(queue.connection, queue)


def _canceled(queue: Queue) -> None:
    queue.enqueue(funcs.ok).cancel()


def _worker(queue: Queue) -> None:
    Worker(
        [queue], name=f"w-{uuid.uuid4().hex}", connection=queue.connection
    ).register_birth()  # type: ignore[no-untyped-call]


def _intermediate(queue: Queue) -> None:
    # What a single-queue worker's BLMOVE leaves between dequeue and start (RQ 1.15+).
    queue.connection.rpush(KEYS.intermediate(queue.name), "some-job")


BUSY: dict[str, Callable[[Queue], None]] = {
    "queued": _queued,
    "scheduled": _scheduled,
    "deferred": _deferred,
    "failed": _failed,
    "canceled": _canceled,
    "worker": _worker,
    "intermediate": _intermediate,
}


class TestWhatStays:
    """A queue with anything left in it, outside the allowlist, or refilled, stays listed."""

    @pytest.mark.parametrize("what", sorted(BUSY))
    def test_busy_queue_stays(self, r: redis.Redis, what: str) -> None:
        """A queue with a queued, scheduled, deferred, failed or canceled job, a worker or an intermediate entry stays."""
        queue = per_job_queue(r)
        BUSY[what](queue)
        r.sadd(
            KEYS.queues(), KEYS.queue(queue.name)
        )  # RQ lists it on enqueue; the worker case did not enqueue
        t = time.time()
        assert pruned(run(r, t)) == set()
        assert pruned(run(r, t + GRACE + 1)) == set()
        assert queue.name in listed(r)
        assert not r.exists(KEYS.queue_empty_since(queue.name))

    def test_queue_refilled_between_passes_stays_and_its_grace_restarts(
        self, r: redis.Redis
    ) -> None:
        """A queue busy again on the second pass stays and loses its record; drained again, it waits a full grace."""
        queue = drained(r)
        t = time.time()
        run(r, t)
        queue.enqueue(funcs.ok, result_ttl=0)
        assert pruned(run(r, t + GRACE + 1)) == set()
        assert not r.exists(KEYS.queue_empty_since(queue.name))
        funcs.work(r, queue)
        assert pruned(run(r, t + GRACE + 2)) == set()
        assert pruned(run(r, t + 2 * GRACE + 1)) == set()
        assert pruned(run(r, t + 2 * GRACE + 3)) == {queue.name}

    def test_queue_refilled_between_plan_and_write_stays(self, r: redis.Redis) -> None:
        """The Lua re-check refuses to remove a queue that got a job after the plan read it empty."""
        queue = drained(r)
        t = time.time()
        run(r, t)
        ctx = TaskContext(
            r, KEYS, Settings(), t + GRACE + 1, QueueFilter.build(RqSettings())
        )
        actions = [
            a for a in PruneQueues().plan(ctx) if isinstance(a, Action) and a.event
        ]
        assert [a.fields for a in actions] == [{"queue": queue.name}]
        queue.enqueue(funcs.ok)
        writes = [cast("PruneQueue", a.write) for a in actions]
        assert PruneQueue.apply_batch(r, writes, None, t + GRACE + 1) == [False]
        assert queue.name in listed(r)

    def test_queue_whose_record_changed_after_planning_stays(
        self, r: redis.Redis
    ) -> None:
        """A queue whose empty-since record was dropped between plan and write (seen busy meanwhile) stays."""
        queue = drained(r)
        t = time.time()
        run(r, t)
        ctx = TaskContext(
            r, KEYS, Settings(), t + GRACE + 1, QueueFilter.build(RqSettings())
        )
        actions = [
            a for a in PruneQueues().plan(ctx) if isinstance(a, Action) and a.event
        ]
        r.delete(KEYS.queue_empty_since(queue.name))
        writes = [cast("PruneQueue", a.write) for a in actions]
        assert PruneQueue.apply_batch(r, writes, None, t + GRACE + 1) == [False]
        assert queue.name in listed(r)

    def test_queue_outside_allowlist_is_never_written(self, r: redis.Redis) -> None:
        """A drained queue that does not match [rq] queues stays listed and gets no janitor record."""
        private = Queue("private", connection=r)
        private.enqueue(funcs.ok, result_ttl=0)
        funcs.work(r, private)
        ours = drained(r)
        config = Settings(rq=RqSettings(queues=("job_queue_*",)))
        t = time.time()
        run(r, t, config=config)
        assert pruned(run(r, t + GRACE + 1, config=config)) == {ours.name}
        assert listed(r) == {"private"}
        assert not r.exists(KEYS.queue_empty_since("private"))

    def test_actinia_keys_are_untouched(self, r: redis.Redis) -> None:
        """The actinia app's own keys keep their exact bytes and TTLs through recording and pruning passes."""
        r.set("RESOURCE-ID::x", b'{"status": "finished"}', ex=3600)
        r.hset("USER-ID-y", mapping={"password_hash": "abc", "user_role": "admin"})
        r.rpush("API-LOG-LIST::z", b"entry1", b"entry2")
        r.set("actinia_worker_count", b"3")
        drained(r)
        before = {k: v for k, v in snapshot(r).items() if k.decode() in ACTINIA_KEYS}
        t = time.time()
        run(r, t)
        run(r, t + GRACE + 1)
        after = {k: v for k, v in snapshot(r).items() if k.decode() in ACTINIA_KEYS}
        assert len(before) == 4
        assert_unchanged(before, after)

    def test_unreadable_record_restarts_the_grace(self, r: redis.Redis) -> None:
        """An empty-since value the janitor did not write is replaced by now; the queue is not pruned on it."""
        queue = drained(r)
        r.set(KEYS.queue_empty_since(queue.name), b"garbage")
        t = time.time()
        assert pruned(run(r, t + 10 * GRACE)) == set()
        assert (
            r.get(KEYS.queue_empty_since(queue.name)) == repr(t + 10 * GRACE).encode()
        )
        assert pruned(run(r, t + 11 * GRACE + 1)) == {queue.name}


class TestDryRun:
    """A dry run reports what a real run prunes and writes nothing, not even its own records."""

    def test_dry_run_changes_nothing_and_reports_the_same_queues(
        self, r: redis.Redis
    ) -> None:
        """--dry-run leaves Redis byte-for-byte unchanged and names the queues the real run then prunes."""
        queues = {drained(r).name for _ in range(2)}
        busy = per_job_queue(r)
        busy.enqueue(funcs.ok)
        t = time.time()
        before = snapshot(r)
        assert pruned(run(r, t, dry_run=True)) == set()
        assert_unchanged(before, snapshot(r))
        run(r, t)
        before = snapshot(r)
        dry = run(r, t + GRACE + 1, dry_run=True)
        assert_unchanged(before, snapshot(r))
        assert pruned(dry) == queues
        assert all(e["dry_run"] is True for e in dry)
        assert pruned(run(r, t + GRACE + 1)) == queues
