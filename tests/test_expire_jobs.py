"""expire_jobs against real RQ state: what it deletes, what it keeps, and how it re-checks."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
import redis
from rq import Queue
from rq.job import Job

from janitor.actions import Action, DeleteJob
from janitor.config import RetentionRule, RetentionSettings, RqSettings, Settings
from janitor.engine import RunReport
from janitor.errors import LeadershipLost
from janitor.keyspace import Keyspace
from janitor.leader import Fence
from janitor.policy import QueueFilter
from janitor.tasks.base import TaskContext
from janitor.tasks.expire_jobs import ExpireJobs
from tests import funcs
from tests.engine_run import run_tasks
from tests.funcs import work
from tests.snapshot import assert_unchanged, snapshot

DAY = 86_400
KEYS = Keyspace()


def settings(**retention: Any) -> Settings:
    """Settings with the given [retention] values (everything else default)."""
    rq = retention.pop("rq", RqSettings())
    return Settings(retention=RetentionSettings(**retention), rq=rq)


def run(
    client: redis.Redis, config: Settings, now: float, *, dry_run: bool = False
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run expire_jobs once; return the report and the parsed audit lines."""
    return run_tasks(
        client,
        config,
        only=["expire_jobs"],
        now=now,
        dry_run=dry_run,
        must_succeed=False,
    )


def deleted_ids(events: list[dict[str, Any]]) -> set[str]:
    """The job ids of the job_deleted events."""
    return {e["job_id"] for e in events if e["event"] == "job_deleted"}


@pytest.fixture
def queue(r: redis.Redis) -> Queue:
    """The RQ queue 'default' on the test server."""
    return Queue("default", connection=r)


def job_keys(client: redis.Redis, job_id: str) -> set[bytes]:
    """Every key whose name contains the job id."""
    return {cast("bytes", k) for k in client.scan_iter(match=f"*{job_id}*")}


class TestWhatGoes:
    """Old terminal jobs go, with everything that belongs to them."""

    def test_old_finished_job_is_deleted_with_all_its_keys(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A finished job past retention loses its hash, result stream, registry entry and side keys."""
        parent = queue.enqueue(funcs.ok)
        child = queue.enqueue(funcs.ok, depends_on=parent)
        work(r, queue)
        assert job_keys(r, parent.id)
        report, events = run(r, settings(finished=DAY), time.time() + 2 * DAY)
        assert deleted_ids(events) == {parent.id, child.id}
        assert job_keys(r, parent.id) == set()
        assert job_keys(r, child.id) == set()
        assert r.zcard(KEYS.finished("default")) == 0
        assert report.failed_tasks == ()

    def test_young_jobs_stay(self, r: redis.Redis, queue: Queue) -> None:
        """A finished job younger than its retention is kept untouched."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        before = snapshot(r)
        _, events = run(r, settings(finished=DAY), time.time() + 60)
        assert deleted_ids(events) == set()
        assert_unchanged(before, snapshot(r))
        assert Job.fetch(job.id, connection=r).get_status() == "finished"

    def test_failed_job_and_its_failure_stream_go(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A failed job past retention goes with its result stream, which RQ would keep forever."""
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        assert r.exists(KEYS.results(job.id))
        _, events = run(r, settings(failed=30 * DAY), time.time() + 31 * DAY)
        assert deleted_ids(events) == {job.id}
        assert [e["status"] for e in events if e["event"] == "job_deleted"] == [
            "failed"
        ]
        assert job_keys(r, job.id) == set()

    def test_canceled_job_ages_from_its_registry_score(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A canceled job has no ended_at; its age counts from the cancellation."""
        job = queue.enqueue(funcs.ok)
        job.cancel()
        _, young = run(r, settings(canceled=DAY), time.time() + 60, dry_run=True)
        _, old = run(r, settings(canceled=DAY), time.time() + 2 * DAY)
        assert deleted_ids(young) == set()
        assert deleted_ids(old) == {job.id}
        assert r.zcard(KEYS.canceled("default")) == 0

    def test_forever_jobs_are_subject_to_policy(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A result_ttl=-1 job (kept forever by RQ) is deleted once past the janitor's retention."""
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        assert r.ttl(KEYS.job(job.id)) == -1
        _, events = run(r, settings(finished=DAY), time.time() + 2 * DAY)
        assert deleted_ids(events) == {job.id}

    def test_audit_line_has_the_contract_fields(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Each job_deleted line carries the contract's fields and nothing of the payload."""
        queue.enqueue(funcs.ok)
        work(r, queue)
        _, events = run(r, settings(finished=0), time.time())
        line = next(e for e in events if e["event"] == "job_deleted")
        assert set(line) == {
            "event",
            "timestamp",
            "run_id",
            "task",
            "dry_run",
            "queue",
            "job_id",
            "status",
            "age_s",
            "rule",
        }
        assert line["rule"] == "retention.finished"
        assert line["dry_run"] is False
        assert "SECRET" not in json.dumps(events)
        finished = next(e for e in events if e["event"] == "run_finished")
        assert finished["counts"] == {"job_deleted": 1}


class TestWhatStays:
    """Live jobs, young jobs, other queues and non-RQ keys are never written."""

    def test_live_jobs_and_foreign_keys_are_untouched(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Queued, deferred and scheduled jobs and an app's own keys survive a zero-retention run."""
        done = queue.enqueue(funcs.ok)
        work(r, queue)
        queued = queue.enqueue(funcs.ok)
        deferred = queue.enqueue(funcs.ok, depends_on=queued)
        from datetime import timedelta

        scheduled = queue.enqueue_in(timedelta(hours=1), funcs.ok)
        r.set("RESOURCE-ID::abc", b"app data")
        r.hset(
            "rq:job:notreally", mapping={"status": "finished"}
        )  # in no registry: not ours to judge
        live = {queued.id, deferred.id, scheduled.id}
        gone = {
            KEYS.finished("default")
        }  # emptied by the one delete, so Redis drops it
        before = {
            k: v
            for k, v in snapshot(r).items()
            if done.id.encode() not in k and k not in gone
        }
        _, events = run(
            r,
            settings(finished=0, failed=0, canceled=0, stopped=0),
            time.time() + 400 * DAY,
        )
        assert deleted_ids(events) == {done.id}
        after = snapshot(r)
        assert_unchanged(before, after)
        for job_id in live:
            assert Job.fetch(job_id, connection=r).get_status() in {
                "queued",
                "deferred",
                "scheduled",
            }

    def test_queue_outside_allowlist_is_not_written(self, r: redis.Redis) -> None:
        """A queue that does not match [rq] queues is left alone."""
        other = Queue("private", connection=r)
        other.enqueue(funcs.ok)
        work(r, other)
        before = snapshot(r)
        config = settings(finished=0, rq=RqSettings(queues=("job_queue_*",)))
        _, events = run(r, config, time.time() + DAY)
        assert deleted_ids(events) == set()
        assert_unchanged(before, snapshot(r))

    def test_failed_parent_with_waiting_child_is_kept(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A failed job whose deferred child still waits on it is kept, so a requeue can still run the child."""
        parent = queue.enqueue(funcs.boom)
        child = queue.enqueue(funcs.ok, depends_on=parent)
        work(r, queue)
        assert Job.fetch(child.id, connection=r).get_status() == "deferred"
        _, events = run(r, settings(failed=0), time.time() + DAY)
        assert parent.id not in deleted_ids(events)
        assert r.exists(KEYS.job(parent.id))
        assert Job.fetch(child.id, connection=r).get_status() == "deferred"

    def test_second_run_does_nothing(self, r: redis.Redis, queue: Queue) -> None:
        """After a run, a second run with the same clock finds nothing more to do."""
        for _ in range(3):
            queue.enqueue(funcs.ok)
            queue.enqueue(funcs.boom)
        work(r, queue)
        _, first = run(r, settings(finished=0, failed=0), time.time())
        before = snapshot(r)
        _, second = run(r, settings(finished=0, failed=0), time.time())
        assert len(deleted_ids(first)) == 6
        assert deleted_ids(second) == set()
        assert_unchanged(before, snapshot(r))


class TestDryRun:
    """A dry run plans and reports exactly what a real run would do, and writes nothing."""

    def test_dry_run_changes_nothing_and_reports_the_same_ids(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """--dry-run leaves every key byte-for-byte unchanged and names the same jobs as the real run."""
        for _ in range(3):
            queue.enqueue(funcs.ok)
        queue.enqueue(funcs.boom)
        work(r, queue)
        config = settings(finished=0, failed=0)
        before = snapshot(r)
        _, dry = run(r, config, time.time(), dry_run=True)
        assert_unchanged(before, snapshot(r))
        _, real = run(r, config, time.time())
        assert deleted_ids(dry) == deleted_ids(real)
        assert len(deleted_ids(dry)) == 4
        assert all(e["dry_run"] is True for e in dry)


class TestRules:
    """Retention rules and the keep_last cap."""

    def test_first_matching_rule_wins(self, r: redis.Redis) -> None:
        """A [[retention.rules]] entry overrides the default for its queues only."""
        fast = Queue("job_queue_resource_id-1", connection=r)
        slow = Queue("other", connection=r)
        fast_job = fast.enqueue(funcs.ok)
        slow_job = slow.enqueue(funcs.ok)
        work(r, fast)
        work(r, slow)
        rule = RetentionRule(index=0, queues=("job_queue_*",), ages={"finished": 3600})
        _, events = run(
            r, settings(finished=DAY, rules=(rule,)), time.time() + 2 * 3600
        )
        assert deleted_ids(events) == {fast_job.id}
        assert (
            next(e["rule"] for e in events if e["event"] == "job_deleted")
            == "retention.rules[0].finished"
        )
        assert r.exists(KEYS.job(slow_job.id))

    def test_keep_last_caps_each_queue(self, r: redis.Redis, queue: Queue) -> None:
        """With keep_last=2, only the two newest finished jobs stay, whatever their age."""
        ids = []
        for _ in range(5):
            ids.append(queue.enqueue(funcs.ok).id)
            work(r, queue)
        _, events = run(r, settings(finished=30 * DAY, keep_last=2), time.time())
        members = cast("list[bytes]", r.zrevrange(KEYS.finished("default"), 0, -1))
        newest = [m.decode() for m in members]
        assert len(newest) == 2
        assert deleted_ids(events) == set(ids) - set(newest)
        assert {e["rule"] for e in events if e["event"] == "job_deleted"} == {
            "retention.keep_last"
        }


class TestAtomicRecheck:
    """Every delete re-checks the job at write time."""

    def plan(self, client: redis.Redis, config: Settings, now: float) -> list[Action]:
        """Plan expire_jobs without applying anything."""
        ctx = TaskContext(client, KEYS, config, now, QueueFilter.build(config.rq))
        return [a for a in ExpireJobs().plan(ctx) if isinstance(a, Action)]

    def test_job_requeued_after_planning_is_skipped(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A failed job requeued between plan and write is not deleted."""
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        actions = self.plan(r, settings(failed=0), time.time())
        assert [a.fields["job_id"] for a in actions] == [job.id]
        queue.failed_job_registry.requeue(job.id)
        applied = DeleteJob.apply_batch(
            r, [cast("DeleteJob", a.write) for a in actions], None, time.time()
        )
        assert applied == [False]
        assert Job.fetch(job.id, connection=r).get_status() == "queued"

    def test_job_rerun_under_same_id_is_skipped(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A custom job id that finished again after planning (new ended_at) is not deleted."""
        queue.enqueue(funcs.ok, job_id="nightly")
        work(r, queue)
        actions = self.plan(r, settings(finished=0), time.time())
        queue.enqueue(funcs.ok, job_id="nightly")
        work(r, queue)
        applied = DeleteJob.apply_batch(
            r, [cast("DeleteJob", a.write) for a in actions], None, time.time()
        )
        assert applied == [False]
        assert r.exists(KEYS.job("nightly"))

    def test_wrong_lease_token_writes_nothing(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A batch whose lease token no longer matches raises and deletes nothing."""
        queue.enqueue(funcs.ok)
        work(r, queue)
        r.set("janitor:leader", b"someone-else")
        actions = self.plan(r, settings(finished=0), time.time())
        before = snapshot(r)
        with pytest.raises(LeadershipLost):
            DeleteJob.apply_batch(
                r,
                [cast("DeleteJob", a.write) for a in actions],
                Fence(b"janitor:leader", b"mine"),
                time.time(),
            )
        assert_unchanged(before, snapshot(r))


class TestGarbage:
    """Hashes RQ would never write are skipped and reported, never deleted, never a crash."""

    @pytest.fixture
    def garbage(self, r: redis.Redis) -> None:
        """A finished registry pointing at a broken hash, a non-hash, and a non-UTF-8 status."""
        now = time.time()
        r.sadd(KEYS.queues(), KEYS.queue("default"))
        r.hset(
            KEYS.job("bad-time"),
            mapping={
                "status": "finished",
                "origin": "default",
                "ended_at": "yesterday",
            },
        )
        r.set(KEYS.job("not-a-hash"), b"x")
        r.hset(
            KEYS.job("bad-status"), mapping={"status": b"\xff\xfe", "origin": "default"}
        )
        r.hset(
            KEYS.job("no-status"),
            mapping={"origin": "default", "ended_at": "2020-01-01T00:00:00.000000Z"},
        )
        r.zadd(
            KEYS.finished("default"),
            {"bad-time": now, "not-a-hash": now, "bad-status": now, "no-status": now},
        )

    def test_garbage_is_skipped_and_reported(
        self, r: redis.Redis, garbage: None
    ) -> None:
        """Unreadable job hashes produce skips, no deletes, no task failure."""
        before = snapshot(r)
        report, events = run(r, settings(finished=0), time.time() + DAY)
        assert deleted_ids(events) == set()
        assert report.failed_tasks == ()
        assert report.tasks[0].skipped == 4
        assert_unchanged(before, snapshot(r))


class TestWrongTypes:
    """A key of the wrong type under an RQ name spoils only its own job, never the batch."""

    def test_wrong_type_side_keys_keep_the_job_and_the_batch_goes_on(
        self, r: redis.Redis
    ) -> None:
        """Jobs whose started registry or group is garbage are kept; the other jobs of the batch are deleted."""
        spoiled, clean = Queue("spoiled", connection=r), Queue("clean", connection=r)
        kept = spoiled.enqueue(funcs.ok)
        grouped = clean.enqueue(funcs.ok)
        deleted = clean.enqueue(funcs.ok)
        work(r, spoiled, clean)
        r.set(KEYS.started("spoiled"), b"garbage")
        r.hset(KEYS.job(grouped.id), "group_id", "g1")
        r.set(KEYS.group("g1"), b"garbage")
        report, events = run(r, settings(finished=0), time.time())
        assert report.failed_tasks == ()
        assert deleted_ids(events) == {deleted.id}
        assert r.exists(KEYS.job(kept.id))
        assert r.exists(KEYS.job(grouped.id))


class TestOddIds:
    """Ids RQ allowed before 2.8 (glob characters, colons) and huge hashes are handled exactly."""

    def test_ids_with_glob_characters_and_colons(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A job whose id holds * ? [ ] and : (RQ 1.x allowed them) is deleted alone; a look-alike stays."""
        made = queue.enqueue(funcs.ok)
        work(r, queue)
        for odd_id, ended in (
            ("a*b?[c]:d", None),
            ("axb?[c]:d", b"2999-01-01T00:00:00.000000Z"),
        ):
            for key in (KEYS.job, KEYS.results):
                r.restore(key(odd_id), 0, cast("bytes", r.dump(key(made.id))))
            r.zadd(KEYS.finished("default"), {odd_id: float("inf")})
            if ended:
                r.hset(KEYS.job(odd_id), "ended_at", ended)  # too young to go
        r.delete(KEYS.job(made.id), KEYS.results(made.id))
        r.zrem(KEYS.finished("default"), made.id)
        _, events = run(r, settings(finished=DAY), time.time() + 2 * DAY)
        assert deleted_ids(events) == {"a*b?[c]:d"}
        assert not r.exists(KEYS.job("a*b?[c]:d"), KEYS.results("a*b?[c]:d"))
        assert r.exists(KEYS.job("axb?[c]:d"))
        assert r.exists(KEYS.results("axb?[c]:d"))

    def test_huge_job_hash_is_read_by_its_fields_only(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A job hash with 100,000 extra fields is judged by its lifecycle fields and deleted whole."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        with r.pipeline(transaction=False) as pipe:
            for start in range(0, 100_000, 10_000):
                pipe.hset(
                    KEYS.job(job.id),
                    mapping={f"x{n}": "y" for n in range(start, start + 10_000)},
                )
            pipe.execute()
        _, events = run(r, settings(finished=0), time.time())
        assert deleted_ids(events) == {job.id}
        assert not r.exists(KEYS.job(job.id))
