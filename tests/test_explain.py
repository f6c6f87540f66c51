"""janitor explain on real RQ jobs: when RQ and when the janitor delete each one, and why."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from janitor.audit import AuditLog
from janitor.config import RetentionRule, RetentionSettings, RqSettings, Settings
from janitor.engine import run_once
from janitor.errors import NoSuchJob
from janitor.keyspace import Keyspace
from janitor.report.explain import explain
from janitor.report.text import render_explain
from tests import funcs
from tests.cli import janitor
from tests.funcs import work
from tests.reports import SECRETS, assert_same_shape, ended_at, json_examples
from tests.rqstate import produce
from tests.servers import RedisServer, free_port
from tests.snapshot import assert_unchanged, snapshot

DAY = 86_400
YEAR = 31_536_000
KEYS = Keyspace()
TERMINAL = ("finished", "failed", "stopped", "canceled")


def deleted_at(client: redis.Redis, settings: Settings, now: float) -> set[str]:
    """The job ids a dry run of expire_jobs at ``now`` would delete."""
    stream = io.StringIO()
    run_once(
        client,
        settings,
        AuditLog(stream),
        dry_run=True,
        only=["expire_jobs"],
        now=lambda: now,
    )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return {e["job_id"] for e in events if e["event"] == "job_deleted"}


@pytest.fixture
def queue(r: redis.Redis) -> Queue:
    """The RQ queue 'default' on the test server."""
    return Queue("default", connection=r)


def rule_settings(**ages: int) -> Settings:
    """Settings with one [[retention.rules]] entry for queues 'def*' that sets ``ages``."""
    rule = RetentionRule(index=0, queues=("def*",), ages=ages)
    return Settings(retention=RetentionSettings(rules=(rule,)))


class TestRqTime:
    """When RQ's own TTLs delete the job."""

    def test_finished_job_goes_500s_after_it_ended(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A finished job with the default result_ttl is deleted by RQ at ended_at + 500 s."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        data = explain(r, Settings(), job.id, time.time())
        assert data["rq"]["at"] == pytest.approx(ended_at(r, job.id) + 500, abs=2)
        assert "result_ttl (default 500s)" in data["rq"]["reason"]
        assert data["first"] == "rq"

    def test_failed_job_goes_one_year_after_it_ended(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A failed job without failure_ttl is deleted by RQ at ended_at + 1 year; the janitor goes first."""
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        data = explain(r, Settings(), job.id, time.time())
        assert data["rq"]["at"] == pytest.approx(ended_at(r, job.id) + YEAR, abs=2)
        assert data["results"]["ttl_s"] is None  # RQ's failure stream never expires
        assert data["first"] == "janitor"

    def test_result_ttl_minus_one_is_never(self, r: redis.Redis, queue: Queue) -> None:
        """A job enqueued with result_ttl=-1 is never deleted by RQ."""
        job = queue.enqueue(funcs.ok, result_ttl=-1)
        work(r, queue)
        data = explain(r, Settings(), job.id, time.time())
        assert (data["rq"]["at"], data["rq"]["reason"]) == (
            None,
            "never: result_ttl=-1",
        )
        assert data["ttls"]["key_ttl_s"] is None

    def test_canceled_job_is_never_deleted_by_rq(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """RQ never deletes a canceled job; the janitor does, a day after it was canceled."""
        job = queue.enqueue(funcs.ok)
        job.cancel()
        data = explain(r, Settings(), job.id, time.time())
        assert data["rq"]["at"] is None
        assert "rq#1647" in data["rq"]["reason"]
        assert (
            data["janitor"]["reason"] == "1d after it was canceled (retention.canceled)"
        )


class TestJanitorTime:
    """When expire_jobs deletes the job, by which rule, and why."""

    def test_default_rule_is_ended_at_plus_retention(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Without rules, a finished job is due at ended_at + [retention] finished."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        data = explain(r, Settings(), job.id, time.time())
        assert data["janitor"]["at"] == pytest.approx(
            ended_at(r, job.id) + DAY, abs=0.01
        )
        assert data["rule"]["age_rule"] == "retention.finished"
        assert data["rule"]["why"].startswith("no [[retention.rules]] entry matches")
        assert data["janitor"]["due"] is False

    def test_first_matching_rule_sets_the_time(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A rule matching the queue and naming the state sets the time, and explain names its glob."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        data = explain(r, rule_settings(finished=3600), job.id, time.time())
        assert data["janitor"]["at"] == pytest.approx(
            ended_at(r, job.id) + 3600, abs=0.01
        )
        assert data["rule"]["age_rule"] == "retention.rules[0].finished"
        assert "(glob 'def*') and it sets finished" in data["rule"]["why"]

    def test_rule_without_the_state_falls_back_to_retention(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A matching rule that does not name the state leaves it to [retention], and explain says so."""
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        data = explain(r, rule_settings(finished=3600), job.id, time.time())
        assert data["rule"]["age_rule"] == "retention.failed"
        assert "it does not set failed" in data["rule"]["why"]
        assert data["janitor"]["at"] == pytest.approx(
            ended_at(r, job.id) + 30 * DAY, abs=0.01
        )

    def test_keep_last_makes_older_jobs_due_now(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """With keep_last=1 the newest finished job (by RQ's score) waits for its age rule; older ones are due now, as expire_jobs agrees."""
        # RQ scores a finished job ended_at + result_ttl (whole seconds): distinct TTLs
        # give a registry order without waiting, newest = highest score.
        jobs = [queue.enqueue(funcs.ok, result_ttl=500 + 100 * i) for i in range(3)]
        work(r, queue)
        settings = Settings(retention=RetentionSettings(keep_last=1))
        now = time.time()
        found = {j.id: explain(r, settings, j.id, now) for j in jobs}
        due = {job_id for job_id, data in found.items() if data["janitor"]["due"]}
        assert due == {jobs[0].id, jobs[1].id}
        assert (
            "beyond the newest 1 finished jobs"
            in found[jobs[0].id]["janitor"]["reason"]
        )
        assert found[jobs[2].id]["janitor"]["at"] == pytest.approx(
            ended_at(r, jobs[2].id) + DAY, abs=0.01
        )
        assert deleted_at(r, settings, now) == due

    def test_agrees_with_expire_jobs_on_rq_state(
        self, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """For every terminal job RQ made, expire_jobs keeps it just before the time explain gives and deletes it just after."""
        manifest = produce(redis_server.url)
        settings = rule_settings(finished=3600, canceled=7200)
        now = time.time()
        checked = set()
        for job_id in manifest.ids():
            data = explain(r, settings, job_id, now)
            at = data["janitor"]["at"]
            if data["status"] not in TERMINAL or at is None:
                continue
            assert job_id not in deleted_at(r, settings, at - 1), data
            assert job_id in deleted_at(r, settings, at + 1), data
            checked.add(data["status"])
        assert checked == set(TERMINAL)

    def test_failed_parent_is_kept_while_its_dependent_waits(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A failed job whose dependent still waits is kept, never due, and the dependent is named."""
        parent = queue.enqueue(funcs.boom)
        child = queue.enqueue(funcs.ok, depends_on=parent)
        work(r, queue)
        data = explain(r, Settings(), parent.id, time.time())
        assert data["janitor"]["at"] is None
        assert data["janitor"]["reason"].startswith(
            f"kept: dependent {child.id} still waits"
        )
        assert data["dependents"] == 1

    def test_finished_parent_is_kept_while_its_enqueued_child_waits(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A finished parent whose child left its dependents set (queued, not run yet) is kept too."""
        parent = queue.enqueue(funcs.ok, result_ttl=-1)
        child = queue.enqueue(funcs.ok, depends_on=parent)
        SimpleWorker([queue], connection=r).work(burst=True, max_jobs=1)
        assert child.get_status() == "queued"
        assert not r.exists(KEYS.dependents(parent.id))
        data = explain(r, Settings(), parent.id, time.time() + 2 * 86_400)
        assert data["janitor"]["reason"].startswith(
            f"kept: dependent {child.id} still waits"
        )

    def test_live_jobs_and_unlisted_queues_are_never_deleted(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A queued job is never deleted by the janitor, nor a finished one of a queue outside [rq] queues."""
        done = queue.enqueue(funcs.ok)
        work(r, queue)
        waiting = queue.enqueue(funcs.ok)
        live = explain(r, Settings(), waiting.id, time.time())
        assert live["janitor"]["reason"].startswith("never: live job (queued)")
        assert live["rule"] is None
        unlisted = Settings(rq=RqSettings(queues=("other",)))
        outside = explain(r, unlisted, done.id, time.time())
        assert (
            outside["janitor"]["reason"]
            == "never: queue 'default' is outside [rq] queues"
        )

    def test_unreadable_field_is_never_deleted(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A job with a field RQ would never write is explained as skipped, not deleted."""
        job = queue.enqueue(funcs.ok)
        work(r, queue)
        r.hset(KEYS.job(job.id), "ended_at", "yesterday")
        data = explain(r, Settings(), job.id, time.time())
        assert data["unreadable"] == "not an RQ timestamp"
        assert data["janitor"]["at"] is None


class TestJobsAndPrefixes:
    """Started jobs of dead workers, missing jobs and RQ 3 key prefixes."""

    def test_started_job_of_a_dead_worker(
        self, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """A killed worker's started job is never deleted as such; explain names the worker and recover_abandoned."""
        manifest = produce(redis_server.url, with_killed_worker=True)
        [worker] = manifest.dead_workers
        manifest.expire_worker(r, worker)  # its keys expire within 90 s; do not wait
        data = explain(r, Settings(), manifest.jobs["abandoned"][0], time.time())
        assert data["worker"] == {
            "name": worker,
            "exists": False,
            "dead": True,
            "reason": "hash_expired",
        }
        assert data["registry"]["member"] is True
        assert "moves it to failed" in data["rq"]["reason"]
        assert "recover_abandoned (fail)" in data["janitor"]["reason"]

    def test_missing_job_raises_no_such_job(self, r: redis.Redis) -> None:
        """Explaining an id with no job hash raises NoSuchJob (exit 1)."""
        with pytest.raises(NoSuchJob, match="no job 'nope'") as caught:
            explain(r, Settings(), "nope", time.time())
        assert caught.value.exit_code == 1

    def test_rq3_key_prefix(self, redis_server: RedisServer, r: redis.Redis) -> None:
        """A job RQ 3 wrote under RQ_KEY_PREFIX is found with [rq] key_prefix, and only then."""
        manifest = produce(
            redis_server.url, rq_version="3.0.0", env={"RQ_KEY_PREFIX": "myrq"}
        )
        job_id = manifest.jobs["finished"][0]
        data = explain(
            r, Settings(rq=RqSettings(key_prefix="myrq")), job_id, time.time()
        )
        assert (data["key"], data["registry"]["key"]) == (
            f"myrq:job:{job_id}",
            "myrq:finished:default",
        )
        assert data["rq"]["at"] is not None
        with pytest.raises(NoSuchJob):
            explain(r, Settings(), job_id, time.time())


class TestCli:
    """`janitor explain` as users run it."""

    def test_text_and_json(
        self, redis_server: RedisServer, r: redis.Redis, queue: Queue
    ) -> None:
        """Text and --json exit 0, match the documented schema, change nothing and show no payload."""
        job = queue.enqueue(funcs.boom)
        work(r, queue)
        before = snapshot(r)
        text = janitor("explain", job.id, "--redis-url", redis_server.url)
        as_json = janitor("explain", job.id, "--json", "--redis-url", redis_server.url)
        assert_unchanged(before, snapshot(r))
        assert (text.returncode, as_json.returncode) == (0, 0), text.stderr
        data: dict[str, Any] = json.loads(as_json.stdout)
        assert_same_shape(json_examples()[1], data)
        assert data["schema"] == json_examples()[1]["schema"] == "rq-janitor.explain/1"
        assert "RQ deletes it:" in text.stdout
        assert "docs/report.md" in text.stdout
        assert render_explain(data).splitlines()[0] == text.stdout.splitlines()[0]
        output = text.stdout + text.stderr + as_json.stdout + as_json.stderr
        assert [secret for secret in SECRETS if secret in output] == []

    def test_exit_codes(self, redis_server: RedisServer, tmp_path: Path) -> None:
        """No such job exits 1, an unreachable Redis 69, an invalid config 78."""
        missing = janitor("explain", "nope", "--redis-url", redis_server.url)
        assert missing.returncode == 1
        assert "no job 'nope'" in missing.stderr
        url = f"redis://127.0.0.1:{free_port()}/0"
        assert janitor("explain", "x", "--redis-url", url).returncode == 69
        config = tmp_path / "janitor.toml"
        config.write_text("[retention]\nfinshed = '1d'\n")
        assert janitor("explain", "x", "-c", str(config)).returncode == 78
