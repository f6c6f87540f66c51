"""prune_workers against real RQ workers and hand-made zombies: what it prunes, what it keeps, how it re-checks."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from rq import Worker

from janitor.actions import Action, PruneDeadWorker
from janitor.config import RqSettings, Settings
from janitor.engine import RunReport
from janitor.errors import LeadershipLost
from janitor.keyspace import Keyspace
from janitor.leader import Fence
from janitor.policy import QueueFilter
from janitor.tasks import prune_workers
from janitor.tasks.base import TaskContext
from janitor.tasks.prune_workers import PruneWorkers
from tests.engine_run import run_tasks
from tests.pubsub import new_pubsub
from tests.rqenv import RQ_VERSIONS
from tests.rqstate import Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()
DEAD_AFTER = Settings().workers.dead_after
COMMON_FIELDS = ("event", "timestamp", "run_id", "task", "dry_run")


def run(
    client: redis.Redis,
    now: float,
    *,
    config: Settings | None = None,
    dry_run: bool = False,
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run prune_workers once through the engine; return the report and the parsed audit lines."""
    return run_tasks(
        client,
        config,
        only=["prune_workers"],
        now=now,
        dry_run=dry_run,
        must_succeed=False,
    )


def pruned(events: list[dict[str, Any]]) -> dict[str, tuple[list[str], str]]:
    """The worker_pruned events as worker name -> (queues, reason)."""
    return {
        e["worker"]: (e["queues"], e["reason"])
        for e in events
        if e["event"] == "worker_pruned"
    }


def plan(client: redis.Redis, now: float) -> list[Action]:
    """Plan prune_workers (default settings) without applying anything."""
    ctx = TaskContext(client, KEYS, Settings(), now, QueueFilter.build(RqSettings()))
    return [a for a in PruneWorkers().plan(ctx) if isinstance(a, Action)]


def members(client: redis.Redis, key: bytes | str) -> set[str]:
    """A set's members as text."""
    return {cast("bytes", m).decode() for m in client.smembers(key)}


def rq_time(epoch: float) -> str:
    """An epoch as RQ writes it (``utcformat``)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def zombie(
    client: redis.Redis,
    name: str,
    *,
    heartbeat: float | None,
    queues: tuple[str, ...] = (),
    keys: Keyspace = KEYS,
) -> bytes:
    """A TTL-less worker hash, in the sets of its queues, as an orphaned horse or a pre-2.9 race leaves it."""
    key = keys.worker(name)
    client.hset(key, "successful_job_count", "3")
    if heartbeat is not None:
        client.hset(key, "last_heartbeat", rq_time(heartbeat))
    if queues:
        client.hset(key, "queues", ",".join(queues))
    client.sadd(keys.workers(), key)
    for queue in queues:
        client.sadd(keys.workers(queue), key)
        client.sadd(keys.queues(), keys.queue(queue))
    return key


def gone_worker(
    client: redis.Redis, name: str, *queues: str, listed: bool = True
) -> bytes:
    """Set memberships of a worker whose hash expired; ``listed`` puts its queues into rq:queues."""
    key = KEYS.worker(name)
    client.sadd(KEYS.workers(), key)
    for queue in queues:
        client.sadd(KEYS.workers(queue), key)
        if listed:
            client.sadd(KEYS.queues(), KEYS.queue(queue))
    return key


@pytest.fixture
def workers(r: redis.Redis, redis_server: RedisServer) -> Iterator[Manifest]:
    """Real RQ state from real `rq worker` processes: one SIGKILLed mid-job, one alive running a job."""
    manifest = produce(redis_server.url, with_killed_worker=True, with_started=True)
    try:
        yield manifest
    finally:
        manifest.kill_workers()


class TestRealWorkers:
    """State left by real RQ workers: a SIGKILLed one goes, a live one stays untouched."""

    def test_killed_worker_leaves_every_set_and_the_live_worker_stays(
        self, r: redis.Redis, workers: Manifest
    ) -> None:
        """After a killed worker's hash expires, it leaves rq:workers and rq:workers:<q>; the live worker and its job stay."""
        [dead], [live] = workers.dead_workers, workers.workers
        live_key = KEYS.worker(live)
        # The dead worker's keys have a TTL of <= 90 s; expire them without the wait.
        workers.expire_worker(r, dead)
        [running] = workers.jobs["started"]
        started_before = r.zrange(KEYS.started("default"), 0, -1)

        report, events = run(r, time.time())

        assert pruned(events) == {dead: (["default"], "hash_expired")}
        assert report.failed_tasks == ()
        for key in (KEYS.workers(), KEYS.workers("default")):
            assert members(r, key) == {live_key.decode()}
        assert r.ttl(live_key) > 0
        assert r.hget(live_key, "state") == b"busy"
        assert r.hget(KEYS.job(running), "status") == b"started"
        assert r.zrange(KEYS.started("default"), 0, -1) == started_before
        _, again = run(r, time.time())
        assert pruned(again) == {}

    def test_orphaned_horse_hash_is_deleted_as_zombie(
        self, r: redis.Redis, workers: Manifest
    ) -> None:
        """A hash re-created without TTL by an orphaned horse (#1602) is deleted and leaves the sets."""
        [dead] = workers.dead_workers
        dead_key = KEYS.worker(dead)
        # What the horse's HINCRBYs leave after the parent's hash expired: counters, no TTL, no heartbeat.
        workers.expire_worker(r, dead)
        r.hset(dead_key, "successful_job_count", "1")
        executions = KEYS.worker_executions(dead)
        had_executions = r.exists(executions)

        _, events = run(r, time.time())

        assert pruned(events) == {dead: (["default"], "zombie")}
        assert not r.exists(dead_key)
        assert dead_key.decode() not in members(r, KEYS.workers("default"))
        # RQ 3's executions set has a TTL of its own: not the janitor's to delete.
        assert r.exists(executions) == had_executions


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_killed_worker_of_every_rq_version_is_pruned(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """A SIGKILLed worker of RQ 1.16.2, 2.12.0 and 3.0.0 leaves both sets once its hash is gone; dry run first."""
    manifest = produce(redis_server.url, rq_version=rq_version, with_killed_worker=True)
    [dead] = manifest.dead_workers
    keys = Keyspace(manifest.key_prefix)
    manifest.expire_worker(r, dead)  # simulates the expiry of its <= 90 s TTLs
    before = snapshot(r)
    _, dry = run(r, time.time(), dry_run=True)
    assert_unchanged(before, snapshot(r))
    _, real = run(r, time.time())
    assert pruned(real) == pruned(dry) == {dead: (["default"], "hash_expired")}
    assert members(r, keys.workers()) == set()
    assert not r.exists(keys.workers("default"))


class TestZombies:
    """TTL-less worker hashes: deleted only with a stale heartbeat, no TTL and no listener."""

    def test_stale_zombie_goes_with_its_memberships(self, r: redis.Redis) -> None:
        """A hash without TTL and a heartbeat older than dead_after is deleted and SREMed from its sets."""
        now = time.time()
        key = zombie(r, "old", heartbeat=now - DEAD_AFTER - 60, queues=("a", "b"))
        _, events = run(r, now)
        assert pruned(events) == {"old": (["a", "b"], "zombie")}
        assert not r.exists(key, KEYS.workers(), KEYS.workers("a"), KEYS.workers("b"))
        assert r.scard(KEYS.queues()) == 2  # rq:queues is prune_queues' business

    def test_zombie_in_no_set_is_found_by_scan(self, r: redis.Redis) -> None:
        """An orphaned hash that is in no worker set is found by the keyspace SCAN and deleted."""
        key = zombie(r, "stray", heartbeat=None)
        r.srem(KEYS.workers(), key)
        _, events = run(r, time.time())
        assert pruned(events) == {"stray": ([], "zombie")}
        assert not r.exists(key)

    @pytest.mark.parametrize(
        "setup",
        ["recent heartbeat", "ttl", "listener", "unreadable heartbeat"],
    )
    def test_live_looking_hashes_stay(self, r: redis.Redis, setup: str) -> None:
        """A recent heartbeat, a TTL, a pubsub subscriber or an unreadable heartbeat keeps the hash."""
        now = time.time()
        age = 60 if setup == "recent heartbeat" else 10 * DEAD_AFTER
        key = zombie(r, "w", heartbeat=now - age, queues=("q",))
        pubsub = new_pubsub(r)
        if setup == "ttl":
            # An expiring hash is Redis' to delete, whatever its heartbeat says.
            r.expire(key, 30)
        elif setup == "listener":
            pubsub.subscribe(KEYS.pubsub_channel("w"))
            pubsub.get_message(timeout=1)
        elif setup == "unreadable heartbeat":
            r.hset(key, "last_heartbeat", "yesterday")
        try:
            before = snapshot(r)
            report, events = run(r, now)
            assert pruned(events) == {}
            assert_unchanged(before, snapshot(r))
            skips = 0 if setup in {"recent heartbeat", "ttl"} else 1
            assert report.tasks[0].skipped == skips
        finally:
            pubsub.close()


class TestSets:
    """Stale memberships: every set, aggregated per worker, within the allowlist."""

    def test_removals_from_several_sets_are_one_event(self, r: redis.Redis) -> None:
        """A gone worker in rq:workers, a listed queue's set and an unlisted queue's set yields one event."""
        gone_worker(r, "w1", "listed")
        gone_worker(r, "w1", "unserved", listed=False)
        _, events = run(r, time.time())
        assert [e["event"] for e in events] == ["worker_pruned", "run_finished"]
        assert pruned(events) == {"w1": (["listed", "unserved"], "hash_expired")}
        assert not r.exists(
            KEYS.workers(), KEYS.workers("listed"), KEYS.workers("unserved")
        )

    def test_allowlist_is_respected(self, r: redis.Redis) -> None:
        """Sets of queues outside [rq] queues stay; the global set is pruned; a zombie of such queues stays."""
        gone_worker(r, "w1", "job_queue_1", "private")
        now = time.time()
        kept = zombie(r, "z", heartbeat=now - 10 * DEAD_AFTER, queues=("private",))
        config = Settings(rq=RqSettings(queues=("job_queue_*",)))
        private_before = r.dump(KEYS.workers("private"))

        _, events = run(r, now, config=config)

        assert pruned(events) == {"w1": (["job_queue_1"], "hash_expired")}
        assert r.dump(KEYS.workers("private")) == private_before
        assert members(r, KEYS.workers()) == {kept.decode()}
        assert r.exists(kept)

    def test_keys_and_members_that_are_no_worker_are_kept(self, r: redis.Redis) -> None:
        """RQ 3's :executions sets (told apart by TYPE) and set members outside rq:worker: stay; the member is reported."""
        r.sadd(KEYS.worker_executions("gone"), "job:exec")
        r.sadd(KEYS.worker("a:b") + b":executions", "job:exec")
        r.sadd(KEYS.workers(), "something-else")
        before = snapshot(r)
        report, events = run(r, time.time())
        assert pruned(events) == {}
        assert report.tasks[0].skipped == 1
        assert_unchanged(before, snapshot(r))

    def test_rq3_key_prefix(self, r: redis.Redis) -> None:
        """With [rq] key_prefix, that prefix's sets and hashes are pruned and rq:* is left alone."""
        acme = Keyspace("acme")
        r.sadd(acme.workers(), acme.worker("w"))
        zombie(r, "z", heartbeat=None, keys=acme, queues=("q",))
        gone_worker(r, "other", "q")
        config = Settings(rq=RqSettings(key_prefix="acme"))
        _, events = run(r, time.time(), config=config)
        assert pruned(events) == {"w": ([], "hash_expired"), "z": (["q"], "zombie")}
        assert members(r, KEYS.workers()) == {KEYS.worker("other").decode()}


class TestRecheck:
    """Every write re-checks the worker at write time, atomically."""

    def test_worker_reregistered_after_planning_is_kept(self, r: redis.Redis) -> None:
        """A worker that re-registers under the same name between plan and write is not removed."""
        key = gone_worker(r, "phoenix", "default")
        actions = plan(r, time.time())
        Worker(["default"], name="phoenix", connection=r).register_birth()  # type: ignore[no-untyped-call]
        writes = [cast("PruneDeadWorker", a.write) for a in actions]
        assert PruneDeadWorker.apply_batch(r, writes, None, time.time()) == [False]
        assert key.decode() in members(r, KEYS.workers("default"))
        assert key.decode() in members(r, KEYS.workers())

    @pytest.mark.parametrize("change", ["heartbeat", "ttl", "listener"])
    def test_zombie_that_revived_after_planning_is_kept(
        self, r: redis.Redis, change: str
    ) -> None:
        """A zombie that heartbeats, gets a TTL or a subscriber between plan and write is not deleted."""
        now = time.time()
        key = zombie(r, "z", heartbeat=now - 10 * DEAD_AFTER, queues=("q",))
        actions = plan(r, now)
        pubsub = new_pubsub(r)
        if change == "heartbeat":
            r.hset(key, "last_heartbeat", rq_time(now))
        elif change == "ttl":
            r.expire(key, 420)
        else:
            pubsub.subscribe(KEYS.pubsub_channel("z"))
            pubsub.get_message(timeout=1)
        try:
            writes = [cast("PruneDeadWorker", a.write) for a in actions]
            assert PruneDeadWorker.apply_batch(r, writes, None, now) == [False]
            assert r.exists(key)
            assert key.decode() in members(r, KEYS.workers("q"))
        finally:
            pubsub.close()

    @pytest.mark.parametrize("change", ["listener", "live execution"])
    def test_gone_worker_that_shows_life_after_planning_is_kept(
        self, r: redis.Redis, change: str
    ) -> None:
        """A worker whose hash is gone keeps its memberships if its channel or an execution of it comes alive before the write."""
        key = gone_worker(r, "horse", "default")
        actions = plan(r, time.time())
        pubsub = new_pubsub(r)
        if change == "listener":
            pubsub.subscribe(KEYS.pubsub_channel("horse"))
            pubsub.get_message(timeout=1)
        else:
            r.sadd(KEYS.worker_executions("horse"), b"job1:exec1")
            r.hset(KEYS.execution_of_member(b"job1:exec1"), "job_id", "job1")
        try:
            writes = [cast("PruneDeadWorker", a.write) for a in actions]
            assert PruneDeadWorker.apply_batch(r, writes, None, time.time()) == [False]
            assert key.decode() in members(r, KEYS.workers("default"))
        finally:
            pubsub.close()

    def test_wrong_lease_token_writes_nothing(self, r: redis.Redis) -> None:
        """A batch whose lease token no longer matches raises and writes nothing."""
        gone_worker(r, "w1", "default")
        r.set("janitor:leader", b"someone-else")
        actions = plan(r, time.time())
        before = snapshot(r)
        writes = [cast("PruneDeadWorker", a.write) for a in actions]
        with pytest.raises(LeadershipLost):
            PruneDeadWorker.apply_batch(r, writes, Fence(b"janitor:leader", b"mine"), 0)
        assert_unchanged(before, snapshot(r))


class TestDryRunAndAudit:
    """A dry run writes nothing and reports what a real run does; audit lines carry exactly the contract's fields."""

    def test_dry_run_changes_nothing_and_emits_the_same_events(
        self, r: redis.Redis
    ) -> None:
        """--dry-run leaves Redis byte-for-byte unchanged and names the same workers, queues and reasons."""
        now = time.time()
        gone_worker(r, "w1", "a", "b")
        zombie(r, "z", heartbeat=now - 10 * DEAD_AFTER, queues=("a",))
        before = snapshot(r)
        _, dry = run(r, now, dry_run=True)
        assert_unchanged(before, snapshot(r))
        _, real = run(r, now)
        expected = {"w1": (["a", "b"], "hash_expired"), "z": (["a"], "zombie")}
        assert pruned(dry) == pruned(real) == expected
        assert all(e["dry_run"] is True for e in dry)

    def test_audit_fields_are_exact(self, r: redis.Redis) -> None:
        """worker_pruned carries worker, queues and reason besides the common fields, and run_finished counts it."""
        gone_worker(r, "w1", "default")
        _, events = run(r, time.time())
        [line] = [e for e in events if e["event"] == "worker_pruned"]
        assert set(line) == {*COMMON_FIELDS, "worker", "queues", "reason"}
        assert (line["task"], line["dry_run"]) == ("prune_workers", False)
        assert pruned(events) == {"w1": (["default"], "hash_expired")}
        finished = next(e for e in events if e["event"] == "run_finished")
        assert finished["counts"] == {"worker_pruned": 1}


class TestBoundedScan:
    """The keyspace SCAN is bounded per pass and resumes where it stopped."""

    def test_scan_resumes_across_passes(
        self, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a tiny budget, an unlisted queue's stale set is found after some passes; the cursor is janitor state with a TTL."""
        monkeypatch.setattr(prune_workers, "SCAN_CALLS_PER_PASS", 1)
        monkeypatch.setattr(prune_workers, "SCAN_COUNT", 10)
        r.mset({f"filler:{i}": b"x" for i in range(2000)})
        # SCAN's order is random per server: should the first pass happen to find the
        # key, the resumption was not exercised, so try another one.
        for attempt in range(3):
            hidden = f"hidden-{attempt}"
            gone_worker(r, hidden, "unserved", listed=False)
            r.srem(KEYS.workers(), KEYS.worker(hidden))  # only the SCAN can find it
            _, events = run(r, time.time())
            if not pruned(events):
                break
        else:
            pytest.fail("the first pass found the key three times running")
        cursor_ttls: list[int] = []
        while not pruned(events) and len(cursor_ttls) < 1000:
            cursor_ttls.append(r.ttl(KEYS.worker_scan_cursor()))
            _, events = run(r, time.time())
        assert pruned(events) == {hidden: (["unserved"], "hash_expired")}
        assert cursor_ttls
        assert all(0 < ttl <= prune_workers.CURSOR_TTL_S for ttl in cursor_ttls)
        for _ in range(1000):
            if not r.exists(KEYS.worker_scan_cursor()):
                break
            run(r, time.time())
        assert not r.exists(KEYS.worker_scan_cursor())  # a finished cycle drops it
