"""The one liveness rule: its verdicts at the boundaries, the facts it reads, and an orphaned work horse with real RQ."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.job import Job

from janitor.config import Settings, WorkersSettings
from janitor.jobs import format_rq_time
from janitor.keyspace import Keyspace
from janitor.liveness import (
    HASH_EXPIRED,
    ZOMBIE,
    WorkerFacts,
    judge,
    read_workers,
)
from tests.engine_run import run_tasks
from tests.pubsub import listen
from tests.rqstate import Manifest, produce
from tests.rqstate.api import running
from tests.servers import RedisServer

KEYS = Keyspace()
NOW = 1_800_000_000.0
DEAD_AFTER = 900
LATER = 300.0
"""Seconds after the kill: past the started entry's heartbeat deadline."""

GONE = WorkerFacts(
    name=b"w",
    ttl=-2,
    is_hash=True,
    heartbeat=None,
    queues=None,
    subscribers=0,
    live_executions=0,
)


def facts(**changes: Any) -> WorkerFacts:
    """A worker's facts: those of a worker whose hash is gone, with ``changes``."""
    return dataclasses.replace(GONE, **changes)


def beat(age: float) -> bytes:
    """A last_heartbeat ``age`` seconds before NOW, as RQ writes it."""
    return format_rq_time(NOW - age).encode()


class TestJudge:
    """What the rule decides from the facts alone."""

    @pytest.mark.parametrize(
        ("worker", "dead", "reason"),
        [
            (facts(), True, HASH_EXPIRED),
            (facts(ttl=-1, heartbeat=None), True, ZOMBIE),
            (facts(ttl=-1, heartbeat=beat(DEAD_AFTER + 0.001)), True, ZOMBIE),
            (
                facts(ttl=-1, heartbeat=beat(DEAD_AFTER)),
                False,
                "a heartbeat within dead_after",
            ),
            (facts(ttl=-1, heartbeat=beat(1)), False, "a heartbeat within dead_after"),
            (facts(ttl=-1, heartbeat=b"yesterday"), False, "unreadable last_heartbeat"),
            (
                facts(ttl=30, heartbeat=beat(10 * DEAD_AFTER)),
                False,
                "its hash has a TTL",
            ),
            (facts(ttl=-1, is_hash=False), False, "the worker key is not a hash"),
            (facts(subscribers=1), False, "its command channel has a subscriber"),
            (
                facts(ttl=-1, subscribers=2),
                False,
                "its command channel has a subscriber",
            ),
            (facts(live_executions=1), False, "an execution of it is still live"),
        ],
    )
    def test_verdicts(self, worker: WorkerFacts, dead: bool, reason: str) -> None:
        """Dead only when the hash says so and no channel subscriber or live execution says otherwise."""
        verdict = judge(worker, NOW, DEAD_AFTER)
        assert (verdict.dead, verdict.reason) == (dead, reason)

    @pytest.mark.parametrize(
        "worker",
        [facts(subscribers=1), facts(live_executions=1), facts(ttl=-1, heartbeat=b"?")],
    )
    def test_a_worker_held_back_by_a_stricter_fact_is_flagged(
        self, worker: WorkerFacts
    ) -> None:
        """A worker whose hash alone would call it dead is marked held, for the tasks to report."""
        assert judge(worker, NOW, DEAD_AFTER).held

    def test_a_plainly_live_worker_is_not_flagged(self) -> None:
        """A worker with a TTL'd hash is alive and nothing to report."""
        assert not judge(facts(ttl=420), NOW, DEAD_AFTER).held


class TestReadWorkers:
    """The facts as Redis holds them."""

    def test_reads_hash_channel_and_executions(self, r: redis.Redis) -> None:
        """TTL, heartbeat, queues, channel subscribers and live RQ 3 executions are read per worker."""
        r.hset(KEYS.worker("a"), mapping={"last_heartbeat": "x", "queues": "q1,q2"})
        r.sadd(KEYS.worker_executions("a"), b"j1:e1", b"j2:e2")
        r.hset(KEYS.execution_of_member(b"j1:e1"), "job_id", "j1")
        r.set(KEYS.worker("c"), b"not a hash")
        pubsub = listen(r, KEYS.pubsub_channel("b"))
        try:
            found = read_workers(r, KEYS, [b"a", b"b", b"c"])
        finally:
            pubsub.close()
        assert found[b"a"] == WorkerFacts(
            name=b"a",
            ttl=-1,
            is_hash=True,
            heartbeat=b"x",
            queues=b"q1,q2",
            subscribers=0,
            live_executions=1,
        )
        assert (found[b"b"].ttl, found[b"b"].subscribers) == (-2, 1)
        assert not found[b"c"].is_hash


def prune_and_recover(client: redis.Redis, now: float) -> list[dict[str, Any]]:
    """One pass of prune_workers and recover_abandoned at ``now``; the audit lines."""
    settings = Settings(workers=WorkersSettings(dead_after=DEAD_AFTER))
    _, events = run_tasks(
        client, settings, only=["prune_workers", "recover_abandoned"], now=now
    )
    return events


def subscribers(client: redis.Redis, worker: str) -> int:
    """Subscribers of the worker's command channel."""
    [(_, count)] = client.pubsub_numsub(KEYS.pubsub_channel(worker))
    return int(count)


def wait_until(predicate: Any, what: str, timeout: float = 10) -> None:
    """Poll until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def orphaned_horse(redis_server: RedisServer, r: redis.Redis) -> Iterator[Manifest]:
    """A busy RQ worker whose parent was SIGKILLed while its work horse runs the job on.

    The worker's TTL'd keys (its hash, the execution, the executions set) are deleted
    as if their TTLs had run out, which takes about 90 s in real time.
    """
    manifest = produce(redis_server.url, queue="work", with_started=True)
    try:
        [parent], [horse] = manifest.worker_pids, manifest.horse_pids
        os.kill(parent, signal.SIGKILL)
        wait_until(lambda: not running(parent), "the parent to die")
        assert running(horse)
        [worker] = manifest.workers
        r.delete(KEYS.worker(worker), KEYS.worker_executions(worker))
        for key in r.scan_iter(match=KEYS.execution(manifest.ids("started")[0], "*")):
            r.delete(key)
        yield manifest
    finally:
        manifest.kill_workers()


def test_a_worker_whose_horse_runs_on_is_not_dead_and_its_job_stays(
    r: redis.Redis, orphaned_horse: Manifest
) -> None:
    """Parent SIGKILLed, horse still running (it holds the command channel): neither pruned nor failed; once the horse dies too, both happen."""
    [worker] = orphaned_horse.workers
    [job_id] = orphaned_horse.ids("started")
    worker_key = KEYS.worker(worker)
    assert subscribers(r, worker) >= 1, "the horse keeps its parent's subscription"

    for _ in range(2):
        events = prune_and_recover(r, time.time() + LATER)
        assert not [
            e for e in events if e["event"] in ("worker_pruned", "job_abandoned")
        ]
    assert Job.fetch(job_id, connection=r).get_status() == "started"
    assert r.sismember(KEYS.workers(), worker_key.decode())

    with contextlib.suppress(ProcessLookupError):
        os.killpg(orphaned_horse.horse_pids[0], signal.SIGKILL)
    wait_until(lambda: subscribers(r, worker) == 0, "the channel to close")
    first = prune_and_recover(r, time.time() + LATER)
    second = prune_and_recover(r, time.time() + LATER)
    pruned = [e for e in first + second if e["event"] == "worker_pruned"]
    abandoned = [e for e in first + second if e["event"] == "job_abandoned"]
    assert [(e["worker"], e["reason"]) for e in pruned] == [(worker, HASH_EXPIRED)]
    assert [(e["job_id"], e["action"]) for e in abandoned] == [(job_id, "failed")]
    assert Job.fetch(job_id, connection=r).get_status() == "failed"
    assert not r.sismember(KEYS.workers(), worker_key.decode())
