"""Unlisted queues (``Queue.delete()`` left their registries) are found, expired, cleaned; dead list ids go."""

from __future__ import annotations

import subprocess
import time
from typing import Any, cast

import pytest
import redis
from rq import Queue, Worker
from rq.intermediate_queue import IntermediateQueue

from janitor.actions import Action, SetJanitorMember
from janitor.config import QueuesSettings, RqSettings, Settings
from janitor.keyspace import Keyspace
from janitor.report import build_report, explain, render_report
from janitor.unlisted import confirm, find_unlisted, queue_of
from tests import funcs
from tests.engine_run import apply_in_order, run_tasks
from tests.funcs import work
from tests.reports import leak
from tests.rqenv import RQ_VERSIONS, python_for
from tests.rqstate import LIVE, TERMINAL, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, restore, snapshot

KEYS = Keyspace()
DAY = 86_400


def delete_queue(url: str, name: str, rq_version: str = "current") -> None:
    """Call that RQ version's own ``Queue.delete()`` on a queue (its list and rq:queues member go)."""
    code = (
        "import sys; from redis import Redis; from rq import Queue; "
        "Queue(sys.argv[2], connection=Redis.from_url(sys.argv[1])).delete()"
    )
    subprocess.run(
        [str(python_for(rq_version)), "-c", code, url, name], check=True, timeout=60
    )


def keys_of(client: redis.Redis, job_id: str) -> list[bytes]:
    """Every key whose name contains the job id."""
    return [cast("bytes", k) for k in client.scan_iter(match=f"*{job_id}*")]


def events_of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The audit lines of one event."""
    return [e for e in events if e["event"] == name]


def apply(client: redis.Redis, actions: tuple[Action, ...]) -> None:
    """Apply bookkeeping actions as the engine would; each one writes."""
    assert len(apply_in_order(client, actions, time.time())) == len(actions)


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", RQ_VERSIONS)
def test_deleted_queue_is_expired_like_any_queue(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """After RQ's Queue.delete(), run --once deletes its old terminal jobs with all their keys and keeps young and live ones."""
    manifest = produce(redis_server.url, rq_version=rq_version, queue="gone")
    delete_queue(redis_server.url, "gone", rq_version)
    keys = Keyspace(manifest.key_prefix)
    assert keys.queue("gone") not in r.smembers(keys.queues())
    config = Settings(rq=RqSettings(key_prefix=manifest.key_prefix))
    found = find_unlisted(r, keys, time.time(), task="test")
    assert found.names == (b"gone",)

    before = snapshot(r)
    _, dry = run_tasks(r, config, now=time.time() + 40 * DAY, dry_run=True)
    assert_unchanged(before, snapshot(r))

    _, young = run_tasks(r, config, now=time.time() + 2 * DAY)
    early = {e["job_id"] for e in events_of(young, "job_deleted")}
    assert early
    assert early <= set(manifest.ids(*TERMINAL))
    assert {e["status"] for e in events_of(young, "job_deleted")} <= {
        "finished",
        "canceled",
    }
    young_ids = manifest.ids("failed", "stopped")
    assert r.exists(*(keys.job(j) for j in young_ids)) == len(young_ids)

    _, old = run_tasks(r, config, now=time.time() + 40 * DAY)
    deleted = early | {e["job_id"] for e in events_of(old, "job_deleted")}
    assert deleted == set(manifest.ids(*TERMINAL))
    assert deleted == {e["job_id"] for e in events_of(dry, "job_deleted")}
    assert {e["queue"] for e in events_of(old, "job_deleted")} == {"gone"}
    for job_id in deleted:
        assert keys_of(r, job_id) == [], job_id
    live = [j for j in manifest.ids(*LIVE) if j not in manifest.ids("queued")]
    assert r.exists(*(keys.job(j) for j in live)) == len(live)


def test_unlisted_queue_gets_registry_hygiene(r: redis.Redis) -> None:
    """clean_registries removes the dangling ids of an unlisted queue, and leaves one outside the allowlist."""
    kept = {}
    for name in ("gone", "other"):
        queue = Queue(name, connection=r)
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        kept[name] = queue.enqueue(funcs.ok, result_ttl=-1).id.encode()
        work(r, queue)
        r.delete(KEYS.job(job.id))
        queue.delete()
    config = Settings(rq=RqSettings(queues=("gone",)))
    _, events = run_tasks(r, config, only=["clean_registries"])
    assert [e["queue"] for e in events_of(events, "marker_refreshed")] == ["gone"]
    assert r.zrange(KEYS.finished("gone"), 0, -1) == [kept["gone"]]
    assert r.zcard(KEYS.finished("other")) == 2


class TestShapes:
    """Which keys name which queue, and which queues count as unlisted."""

    def test_queue_names_with_colons_stay_whole(self) -> None:
        """A registry key's whole tail is the queue name; other key shapes name no queue."""
        assert queue_of(KEYS, b"rq:finished:a:b") == b"a:b"
        assert queue_of(KEYS, b"rq:wip:x") == b"x"
        assert queue_of(KEYS, b"rq:ready:q:1") == b"q:1"
        assert queue_of(KEYS, b"rq:queue:a:b:intermediate") == b"a:b"
        assert queue_of(KEYS, b"rq:queue:a") is None
        assert queue_of(KEYS, b"rq:queue:a:intermediate:first_seen:1") is None
        assert queue_of(KEYS, b"rq:job:finished:a") is None
        assert queue_of(KEYS, b"rq:finished:") is None
        assert queue_of(Keyspace("acme"), b"rq:finished:a") is None

    def test_listed_queue_named_like_an_intermediate_list_is_not_unlisted(
        self, r: redis.Redis
    ) -> None:
        """rq:queue:x:intermediate of a listed queue 'x:intermediate' is that queue's list, not x's."""
        Queue("x:intermediate", connection=r).enqueue(funcs.ok)
        assert confirm(r, KEYS, [b"x", b"x:intermediate"]) == []
        Queue("x:intermediate", connection=r).delete(delete_jobs=False)
        r.rpush(KEYS.intermediate("x"), b"some-id")
        assert confirm(r, KEYS, [b"x", b"x:intermediate"]) == [b"x"]

    def test_wrong_types_and_listed_queues_are_not_unlisted(
        self, r: redis.Redis
    ) -> None:
        """A listed queue, a string under a registry's name and an empty name are never unlisted queues."""
        queue = Queue("listed", connection=r)
        queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        r.set(KEYS.finished("str"), b"not a registry")
        assert confirm(r, KEYS, [b"listed", b"str", b"nothing"]) == []


class TestScan:
    """The SCAN is bounded per call, resumes where it stopped, and remembers what it found."""

    def test_slices_resume_and_the_record_keeps_what_was_found(
        self, r: redis.Redis
    ) -> None:
        """With 500 keys per call over 5000 keys the queue is found in some slice, then on every call."""
        r.mset({f"rq:filler:{i}": b"x" for i in range(5000)})
        r.zadd(KEYS.failed("gone"), {b"id": 1})
        found_at = None
        for call in range(40):
            found = find_unlisted(r, KEYS, time.time(), task="test", keys_per_run=500)
            apply(r, found.bookkeeping)
            if found.names:
                found_at = found_at if found_at is not None else call
                assert found.names == (b"gone",)
            else:
                assert found_at is None, "forgotten after it was found"
        assert found_at is not None
        assert r.zrange(KEYS.unlisted_record(), 0, -1) == [b"gone"]
        assert 0 < r.ttl(KEYS.unlisted_record()) <= 7 * DAY

    def test_a_queue_listed_again_or_emptied_leaves_the_record(
        self, r: redis.Redis
    ) -> None:
        """Once its registries are gone (or it is listed again), a recorded name is dropped from the record."""
        r.zadd(KEYS.failed("gone"), {b"id": 1})
        apply(r, find_unlisted(r, KEYS, time.time(), task="test").bookkeeping)
        assert r.zrange(KEYS.unlisted_record(), 0, -1) == [b"gone"]
        r.delete(KEYS.failed("gone"))
        found = find_unlisted(r, KEYS, time.time(), task="test")
        assert found.names == ()
        assert any(
            isinstance(a.write, SetJanitorMember) and a.write.score is None
            for a in found.bookkeeping
        )
        apply(r, found.bookkeeping)
        assert not r.exists(KEYS.unlisted_record())


class TestDeadIds:
    """Ids whose job hash is gone leave the lists of queues no worker serves."""

    def test_only_dead_ids_go_and_live_ones_keep_their_order(
        self, r: redis.Redis
    ) -> None:
        """[a, dead, b, dead, c] becomes [a, b, c] in the queue list and the intermediate list, each id audited."""
        queue = Queue("pj", connection=r)
        live = [queue.enqueue(funcs.ok).id.encode() for _ in range(3)]
        for key in (KEYS.queue("pj"), KEYS.intermediate("pj")):
            r.delete(key)
            r.rpush(key, live[0], b"dead-1", live[1], b"dead-1", live[2], b"dead-2")
        before = snapshot(r)
        _, dry = run_tasks(r, only=["clean_registries"], dry_run=True)
        assert_unchanged(before, snapshot(r))
        _, events = run_tasks(r, only=["clean_registries"])
        for key in (KEYS.queue("pj"), KEYS.intermediate("pj")):
            assert r.lrange(key, 0, -1) == live
        removed = sorted(
            (e["list"], e["job_id"]) for e in events_of(events, "dead_id_removed")
        )
        assert removed == sorted(
            (lst, job)
            for lst in ("queue", "intermediate")
            for job in ("dead-1", "dead-2")
        )
        assert removed == sorted(
            (e["list"], e["job_id"]) for e in events_of(dry, "dead_id_removed")
        )

    def test_result_matches_rqs_compact_and_intermediate_cleanup(
        self, r: redis.Redis
    ) -> None:
        """The lists end as RQ's Queue.compact() and IntermediateQueue.cleanup() leave them."""
        queue = Queue("pj", connection=r)
        live = [queue.enqueue(funcs.ok).id.encode() for _ in range(3)]
        r.delete(KEYS.queue("pj"))
        r.rpush(KEYS.queue("pj"), b"dead-1", live[0], b"dead-2", live[1])
        r.rpush(KEYS.intermediate("pj"), live[2], b"dead-3")
        state = snapshot(r)
        run_tasks(r, only=["clean_registries"])
        janitor = [
            r.lrange(k, 0, -1) for k in (KEYS.queue("pj"), KEYS.intermediate("pj"))
        ]
        restore(r, state)
        queue.compact()  # type: ignore[no-untyped-call]  # RQ leaves compact() unannotated
        IntermediateQueue(queue.key, connection=r).cleanup(
            Worker([queue], connection=r), queue
        )
        rq = [r.lrange(k, 0, -1) for k in (KEYS.queue("pj"), KEYS.intermediate("pj"))]
        assert janitor == rq == [live[:2], [live[2]]]

    def test_per_job_queue_with_an_expired_ttl_job_is_pruned(
        self, r: redis.Redis
    ) -> None:
        """A queue whose list holds only a job that expired through its ttl is pruned after prune_after."""
        job = Queue("job_queue_resource_id-1", connection=r).enqueue(funcs.ok, ttl=1)
        time.sleep(1.2)
        assert not r.exists(KEYS.job(job.id))
        assert r.llen(KEYS.queue("job_queue_resource_id-1")) == 1
        config = Settings(queues=QueuesSettings(prune_after=60))
        now = time.time()
        only = ["clean_registries", "prune_queues"]
        _, first = run_tasks(r, config, only=only, now=now)
        assert [e["job_id"] for e in events_of(first, "dead_id_removed")] == [job.id]
        assert events_of(first, "queue_pruned") == []
        _, early = run_tasks(r, config, only=only, now=now + 59)
        assert events_of(early, "queue_pruned") == []
        _, late = run_tasks(r, config, only=only, now=now + 61)
        assert [e["queue"] for e in events_of(late, "queue_pruned")] == [
            "job_queue_resource_id-1"
        ]
        assert r.smembers(KEYS.queues()) == set()

    def test_served_queue_keeps_its_dead_ids(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        """A queue a live worker serves keeps its list as it is: its worker skips dead ids itself."""
        manifest = produce(redis_server.url, queue="default", with_started=True)
        try:
            r.rpush(KEYS.queue("default"), b"dead-1")
            before = r.lrange(KEYS.queue("default"), 0, -1)
            _, events = run_tasks(r, only=["clean_registries"])
            assert events_of(events, "dead_id_removed") == []
            assert r.lrange(KEYS.queue("default"), 0, -1) == before
        finally:
            manifest.kill_workers()


class TestReport:
    """report and explain show unlisted queues and interrupted compactions, reading only."""

    def test_report_lists_an_unlisted_queue_and_explain_says_so(
        self, r: redis.Redis
    ) -> None:
        """The unlisted queue has its rows (listed false), its leak with counts; explain names the SCAN."""
        queue = Queue("gone", connection=r)
        failed = queue.enqueue(funcs.boom)
        queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        queue.delete()
        Queue("kept", connection=r).enqueue(funcs.ok)
        r.rpush("rq:queue:_compact:5d1c", b"some-id")
        before = snapshot(r)
        report = build_report(r, Settings(), time.time())
        explained = explain(r, Settings(), failed.id, time.time())
        assert_unchanged(before, snapshot(r))
        by_name = {q["name"]: q for q in report["queues"]}
        assert by_name["gone"]["listed"] is False
        assert by_name["kept"]["listed"] is True
        states = {s["state"]: s["count"] for s in by_name["gone"]["states"]}
        assert states == {"finished": 1, "failed": 1}
        unlisted = leak(report, "unlisted_queues")
        assert unlisted["examples"] == ["gone"]
        assert unlisted["by_kind"]["failed"] == 1
        assert leak(report, "interrupted_compactions")["examples"] == [
            "rq:queue:_compact:5d1c"
        ]
        assert explained["queue_listed"] is False
        assert "unlisted-queue SCAN" in explained["janitor"]["reason"]
        assert "gone (unlisted)" in render_report(report)

    def test_report_filters_unlisted_queues_by_glob(self, r: redis.Redis) -> None:
        """--queue globs apply to unlisted queues as to listed ones."""
        for name in ("gone-a", "other"):
            queue = Queue(name, connection=r)
            queue.enqueue(funcs.ok, result_ttl=-1)
            work(r, queue)
            queue.delete()
        report = build_report(r, Settings(), time.time(), queues=["gone-*"])
        assert [q["name"] for q in report["queues"]] == ["gone-a"]


def test_abandoned_job_of_a_recorded_unlisted_queue_is_recovered(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """recover_abandoned walks the unlisted queues the SCAN recorded: the killed worker's job is failed."""
    manifest = produce(redis_server.url, queue="gone", with_killed_worker=True)
    manifest.expire_dead_workers(r)
    delete_queue(redis_server.url, "gone")
    (job_id,) = manifest.ids("abandoned")
    later = time.time() + 3600  # past the started entry's heartbeat deadline
    only = ["recover_abandoned"]
    for _ in range(2):
        _, alone = run_tasks(r, only=only, now=later)
        assert events_of(alone, "job_abandoned") == [], "found without the SCAN"
    run_tasks(r, only=["clean_registries"], now=later)  # its SCAN records the queue
    assert r.zrange(KEYS.unlisted_record(), 0, -1) == [b"gone"]
    run_tasks(r, only=only, now=later)
    _, second = run_tasks(r, only=only, now=later)
    abandoned = events_of(second, "job_abandoned")
    assert [(e["queue"], e["job_id"]) for e in abandoned] == [("gone", job_id)]
    assert r.hget(KEYS.job(job_id), "status") == b"failed"
