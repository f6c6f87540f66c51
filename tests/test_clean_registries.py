"""clean_registries against real RQ state: hygiene of unserved queues, under the marker, re-checked."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, cast

import pytest
import redis
from rq import Queue

from janitor.actions import Action, Skip
from janitor.config import RqSettings, Settings
from janitor.engine import RunReport
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter
from janitor.tasks.base import TaskContext
from janitor.tasks.clean_registries import (
    MARKER_TTL_S,
    SCHEDULED_GRACE_S,
    SECOND_LOOK_S,
    CleanRegistries,
    MarkerWrite,
)
from tests import funcs
from tests.clock import Clock
from tests.engine_run import apply_in_order, run_tasks
from tests.funcs import work
from tests.rqenv import RQ_VERSIONS
from tests.rqstate import Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()
REGISTRIES = ("finished", "failed", "canceled", "deferred", "scheduled", "started")


def run(
    client: redis.Redis,
    now: float,
    *,
    dry_run: bool = False,
    config: Settings | None = None,
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run clean_registries once at ``now``; return the report and the parsed audit lines."""
    return run_tasks(
        client, config, only=["clean_registries"], now=now, dry_run=dry_run
    )


def refreshed(events: list[dict[str, Any]]) -> list[str]:
    """The queues of the marker_refreshed events, in order."""
    return [e["queue"] for e in events if e["event"] == "marker_refreshed"]


def contract_part(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The events without what differs between runs (time, run id, dry-run flag, duration)."""
    return [
        (e["event"], e.get("queue", e.get("counts")))
        for e in events
        if e["event"] != "run_finished" or e["counts"]
    ]


def members(client: redis.Redis, key: bytes | str) -> set[bytes]:
    """The members of a sorted set."""
    return set(cast("list[bytes]", client.zrange(key, 0, -1)))


def registries(client: redis.Redis, prefix: str, queue: str) -> dict[str, list[Any]]:
    """Every registry of a queue, with scores."""
    keys = Keyspace(prefix)
    return {
        name: client.zrange(getattr(keys, name)(queue), 0, -1, withscores=True)
        for name in REGISTRIES
    }


@pytest.fixture
def queue(r: redis.Redis) -> Queue:
    """The RQ queue 'default' on the test server."""
    return Queue("default", connection=r)


def plan(client: redis.Redis, now: float) -> list[Action | Skip]:
    """Plan clean_registries without applying anything."""
    config = Settings()
    ctx = TaskContext(client, KEYS, config, now, QueueFilter.build(config.rq))
    return list(CleanRegistries().plan(ctx))


class TestHygiene:
    """A queue no worker serves gets RQ's own registry hygiene."""

    def test_expired_scores_go_as_rq_removes_them(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Finished and failed entries scored in [0, now] go; +inf and -1 (kept forever) stay."""
        done = queue.enqueue(funcs.ok)
        forever = queue.enqueue(funcs.ok, result_ttl=-1)
        failed_forever = queue.enqueue(funcs.boom, failure_ttl=-1)
        failed = queue.enqueue(funcs.boom)
        failed_short = queue.enqueue(funcs.boom, failure_ttl=100)
        work(r, queue)
        assert r.zscore(KEYS.failed("default"), failed_forever.id) == -1
        _, events = run(r, time.time() + 1000)
        assert members(r, KEYS.finished("default")) == {forever.id.encode()}
        assert members(r, KEYS.failed("default")) == {
            failed_forever.id.encode(),
            failed.id.encode(),
        }
        # RQ's own TTL deletes the hashes, not the janitor
        assert r.exists(KEYS.job(done.id), KEYS.job(failed_short.id)) == 2
        assert refreshed(events) == ["default"]
        assert not r.exists(KEYS.cleaning_marker("default"))

    def test_dangling_ids_go_from_every_registry(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Entries whose job hash is gone leave finished, failed, canceled and deferred; the rest stay."""
        finished = [queue.enqueue(funcs.ok, result_ttl=-1) for _ in range(2)]
        failed = [queue.enqueue(funcs.boom) for _ in range(2)]
        work(r, queue)
        canceled = [queue.enqueue(funcs.ok) for _ in range(2)]
        for job in canceled:
            job.cancel()
        parent = queue.enqueue(funcs.ok)
        deferred = [queue.enqueue(funcs.ok, depends_on=parent) for _ in range(2)]
        gone = [jobs[0].id for jobs in (finished, failed, canceled, deferred)]
        r.delete(*(KEYS.job(job_id) for job_id in gone))
        before = registries(r, "rq", "default")
        _, events = run(r, time.time())
        after = registries(r, "rq", "default")
        for name, jobs in (
            ("finished", finished),
            ("failed", failed),
            ("canceled", canceled),
            ("deferred", deferred),
        ):
            assert [m for m, _ in after[name]] == [jobs[1].id.encode()], name
            assert len(before[name]) == 2
        assert refreshed(events) == ["default"]
        assert r.lrange(KEYS.queue("default"), 0, -1) == [parent.id.encode()]

    def test_queue_with_nothing_to_clean_is_not_touched(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Without expired or dangling entries the marker is not even taken, and nothing is audited."""
        queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        before = snapshot(r)
        _, events = run(r, time.time())
        assert refreshed(events) == []
        assert_unchanged(before, snapshot(r))

    def test_queue_outside_allowlist_is_not_touched(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A queue that does not match [rq] queues keeps its dangling entries."""
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        r.delete(KEYS.job(job.id))
        before = snapshot(r)
        _, events = run(
            r, time.time(), config=Settings(rq=RqSettings(queues=("job_queue_*",)))
        )
        assert refreshed(events) == []
        assert_unchanged(before, snapshot(r))


class TestScheduled:
    """Dangling scheduled ids go only on a second look, once long overdue."""

    def test_dangling_scheduled_id_goes_on_the_second_look(
        self, r: redis.Redis, queue: Queue, clock: Clock
    ) -> None:
        """The first pass records a sighting (janitor state with a TTL); a pass SECOND_LOOK_S later removes it."""
        dangling = queue.enqueue_in(timedelta(hours=1), funcs.ok)
        kept = queue.enqueue_in(timedelta(hours=1), funcs.ok)
        r.delete(KEYS.job(dangling.id))
        scheduled = KEYS.scheduled("default")
        clock.advance(3600 + SCHEDULED_GRACE_S + 1)
        _, first = run(r, clock())
        assert members(r, scheduled) == {dangling.id.encode(), kept.id.encode()}
        assert refreshed(first) == []
        sighting = KEYS.scheduled_sighting(dangling.id)
        assert 0 < r.ttl(sighting) <= 86_400
        clock.advance(SECOND_LOOK_S - 1)
        run(r, clock())
        assert dangling.id.encode() in members(r, scheduled)
        clock.advance(1)
        _, second = run(r, clock())
        assert members(r, scheduled) == {kept.id.encode()}
        assert refreshed(second) == ["default"]

    def test_not_yet_overdue_id_is_never_removed(
        self, r: redis.Redis, queue: Queue, clock: Clock
    ) -> None:
        """A dangling id due in the future (or less than the grace overdue) stays, however often seen."""
        job = queue.enqueue_in(timedelta(hours=1), funcs.ok)
        r.delete(KEYS.job(job.id))
        clock.advance(3600 + SCHEDULED_GRACE_S - 4 * SECOND_LOOK_S)
        for _ in range(3):
            run(r, clock())
            clock.advance(SECOND_LOOK_S)
        assert members(r, KEYS.scheduled("default")) == {job.id.encode()}

    def test_dry_run_records_no_sighting(
        self, r: redis.Redis, queue: Queue, clock: Clock
    ) -> None:
        """A dry run does not remember first sightings, so dry runs alone never remove a scheduled id."""
        job = queue.enqueue_in(timedelta(hours=1), funcs.ok)
        r.delete(KEYS.job(job.id))
        clock.advance(2 * 3600)
        before = snapshot(r)
        for _ in range(2):
            _, events = run(r, clock(), dry_run=True)
            clock.advance(2 * SECOND_LOOK_S)
            assert refreshed(events) == []
        assert_unchanged(before, snapshot(r))


class TestStarted:
    """Started-registry members: only the two exceptions of docs/keyspace.md.

    See "Registry entries and side keys", item 2 there.
    """

    def test_only_expired_stale_members_go(
        self, r: redis.Redis, queue: Queue, clock: Clock
    ) -> None:
        """Expired members without a job hash, or of a terminal job without execution, go; live-scored ones stay."""
        finished = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        now = clock()
        wip = KEYS.started("default")
        r.zadd(
            wip,
            {
                f"{finished.id}:exec-stale": now
                - 10,  # terminal job, execution gone (rq#2424)
                "no-such-job:exec-1": now - 10,  # job hash gone
                "no-such-job-1x": now - 10,  # RQ 1.x member shape, job hash gone
                "live-no-hash:exec-2": now + 60,  # live score: never touched
                f"{finished.id}:exec-live": now + 60,
            },
        )
        r.hset(KEYS.execution(finished.id, "exec-running"), "id", "exec-running")
        r.zadd(
            wip, {f"{finished.id}:exec-running": now - 10}
        )  # its execution hash exists
        _, events = run(r, now)
        assert members(r, wip) == {
            b"live-no-hash:exec-2",
            f"{finished.id}:exec-live".encode(),
            f"{finished.id}:exec-running".encode(),
        }
        assert refreshed(events) == ["default"]

    def test_abandoned_job_is_left_to_recover_abandoned(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        """A started job of a killed worker keeps its expired member: abandoned-job recovery is another task's."""
        manifest = produce(redis_server.url, queue="default", with_killed_worker=True)
        for name in manifest.dead_workers:
            r.delete(KEYS.worker(name))  # as Redis expires it within 90 s
        [abandoned] = manifest.jobs["abandoned"]
        wip = KEYS.started("default")
        before = members(r, wip)
        assert any(m.startswith(abandoned.encode()) for m in before)
        run(r, time.time() + 3600)
        assert members(r, wip) == before
        assert r.hget(KEYS.job(abandoned), "status") == b"started"


class TestServedQueue:
    """A queue that a live worker serves is that worker's to clean, except what RQ never cleans."""

    def test_served_queue_loses_only_dangling_canceled_and_deferred_ids(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        """With a live worker on the queue, only canceled and deferred ids whose hash is gone go, each audited, without the marker."""
        manifest = produce(redis_server.url, queue="default", with_started=True)
        try:
            categories = ("failed", "canceled", "deferred_child")
            gone = dict(
                zip(categories, _delete_jobs(r, manifest, *categories), strict=True)
            )
            before = registries(r, "rq", "default")
            r.set(KEYS.cleaning_marker("default"), b"1", ex=899)  # a worker's marker
            _, events = run(r, time.time() + 1000)
            after = registries(r, "rq", "default")
            removed = {
                (e["registry"], e["job_id"])
                for e in events
                if e["event"] == "registry_entry_removed"
            }
            assert removed == {
                ("canceled", gone["canceled"]),
                ("deferred", gone["deferred_child"]),
            }
            for name in REGISTRIES:
                expected = [
                    entry
                    for entry in before[name]
                    if (name, entry[0].decode()) not in removed
                ]
                assert after[name] == expected, name
            assert refreshed(events) == []
            assert r.get(KEYS.cleaning_marker("default")) == b"1"
            assert {e["queue"] for e in events if "job_id" in e} == {"default"}
        finally:
            manifest.kill_workers()


class TestMarker:
    """The rq:clean_registries:<q> marker: taken with a token and a TTL, given back, never stolen."""

    @pytest.fixture
    def dangling(self, r: redis.Redis, queue: Queue) -> str:
        """A finished entry whose job hash is gone; returns its id."""
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        r.delete(KEYS.job(job.id))
        return job.id

    def test_marker_held_by_someone_else_skips_the_queue(
        self, r: redis.Redis, dangling: str
    ) -> None:
        """A held marker (an RQ <= 1.15 worker's '1' for 899 s) makes the janitor skip the queue and leave it."""
        marker = KEYS.cleaning_marker("default")
        r.set(marker, b"1", ex=899)
        before = snapshot(r)
        report, events = run(r, time.time())
        assert_unchanged(before, snapshot(r))
        assert r.get(marker) == b"1"
        assert refreshed(events) == []
        assert report.tasks[0].skipped == 1

    def test_marker_has_a_ttl_while_held_and_is_given_back(
        self, r: redis.Redis, dangling: str
    ) -> None:
        """Taken with SET NX EX, the marker holds a random token with a short TTL, and is deleted at the end."""
        actions = plan(r, time.time())
        marker = KEYS.cleaning_marker("default")
        take, *steps, give = [a for a in actions if isinstance(a, Action)]
        assert isinstance(take.write, MarkerWrite)
        assert take.event is None
        assert give.event == "marker_refreshed"
        assert apply_in_order(r, [take], time.time()) == [True]
        assert 0 < r.pttl(marker) <= MARKER_TTL_S * 1000
        assert r.get(marker) == take.write.token
        assert apply_in_order(r, steps, time.time()) == [True]
        assert apply_in_order(r, [give], time.time()) == [True]
        assert not r.exists(marker)
        assert members(r, KEYS.finished("default")) == set()

    def test_marker_taken_after_planning_stops_every_write(
        self, r: redis.Redis, dangling: str
    ) -> None:
        """If a worker takes the marker between plan and apply, nothing is written and its marker stays."""
        actions = plan(r, time.time())
        marker = KEYS.cleaning_marker("default")
        r.set(marker, b"1", ex=899)
        before = snapshot(r)
        assert apply_in_order(r, actions, time.time()) == [False, False, False]
        assert_unchanged(before, snapshot(r))
        assert r.get(marker) == b"1"

    def test_started_member_refreshed_after_planning_is_kept(
        self, r: redis.Redis
    ) -> None:
        """A started member whose score a heartbeat moved past now after planning is not removed."""
        now = time.time()
        wip = KEYS.started("default")
        r.sadd(KEYS.queues(), KEYS.queue("default"))
        r.zadd(wip, {"no-hash-yet:exec-1": now - 1})
        actions = plan(r, now)
        r.zadd(
            wip, {"no-hash-yet:exec-1": now + 90}, xx=True
        )  # RQ's heartbeat: ZADD XX
        assert apply_in_order(r, actions, now) == [True, False, True]
        assert members(r, wip) == {b"no-hash-yet:exec-1"}

    def test_entry_whose_job_returned_is_kept(
        self, r: redis.Redis, queue: Queue, dangling: str
    ) -> None:
        """The Lua re-check keeps an entry whose job hash exists again at write time."""
        actions = plan(r, time.time())
        queue.enqueue(funcs.ok, job_id=dangling)  # the same custom id, enqueued again
        assert apply_in_order(r, actions, time.time()) == [True, False, True]
        assert members(r, KEYS.finished("default")) == {dangling.encode()}


class TestDryRun:
    """A dry run plans what a real run does and writes nothing, no marker either."""

    def test_dry_run_changes_nothing_and_reports_the_same(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """--dry-run leaves Redis byte-for-byte unchanged and writes the same events as the real run."""
        for _ in range(2):
            queue.enqueue(funcs.ok)
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        r.delete(KEYS.job(job.id))
        other = Queue("other", connection=r)
        other.enqueue(funcs.ok)
        work(r, other)
        now = time.time() + 1000
        before = snapshot(r)
        _, dry = run(r, now, dry_run=True)
        assert_unchanged(before, snapshot(r))
        _, real = run(r, now)
        assert sorted(refreshed(dry)) == ["default", "other"]
        assert contract_part(dry) == contract_part(real)
        assert all(e["dry_run"] is True for e in dry)


def _delete_jobs(
    client: redis.Redis, manifest: Manifest, *categories: str
) -> list[str]:
    """Delete the hash of the first job of each category; return their ids."""
    ids = [manifest.jobs[category][0] for category in categories]
    client.delete(*(manifest.key(f"job:{job_id}") for job_id in ids))
    return ids


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_every_rq_version(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """On data of each RQ version: expired and dangling entries go, the rest stays, dry run writes nothing."""
    manifest = produce(
        redis_server.url, rq_version=rq_version, queue="compat", with_killed_worker=True
    )
    for name in manifest.dead_workers:
        r.delete(manifest.key(f"worker:{name}"))  # as Redis expires it within 90 s
    gone = _delete_jobs(r, manifest, "failed", "canceled", "deferred_child")
    now = time.time() + 1000  # past the finished jobs' result_ttl (500 s)
    config = Settings(rq=RqSettings(key_prefix=manifest.key_prefix))
    before = snapshot(r)
    _, dry = run(r, now, dry_run=True, config=config)
    assert_unchanged(before, snapshot(r))
    wip_before = members(r, manifest.key("wip:compat"))
    _, real = run(r, now, config=config)
    assert refreshed(real) == refreshed(dry) == ["compat"]
    after = registries(r, manifest.key_prefix, "compat")
    remaining = {m.decode() for entries in after.values() for m, _ in entries}
    assert remaining.isdisjoint(gone)
    assert {m for m, _ in after["finished"]} == {
        i.encode() for i in manifest.jobs["finished_forever"]
    }
    assert {m.decode() for m, _ in after["failed"]} == set(
        manifest.ids("failed", "failed_retried", "stopped", "failed_parent")
    ) - set(gone)
    assert {m.decode() for m, _ in after["scheduled"]} == set(
        manifest.jobs["scheduled"]
    )
    assert (
        members(r, manifest.key("wip:compat")) == wip_before
    )  # the abandoned job is not ours
    for job_id in manifest.ids("queued", "deferred", "scheduled", "abandoned"):
        assert r.exists(manifest.key(f"job:{job_id}")), job_id
    assert not r.exists(manifest.key("clean_registries:compat"))
    _, again = run(r, now, config=config)
    assert refreshed(again) == []
