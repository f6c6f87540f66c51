"""janitor report against real RQ state: counts, deletion times, backlog, leaks, memory, findings; read-only."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.rate_limit import RateLimit
from rq.registry import ReadyJobRegistry
from rq.suspension import resume, suspend

from janitor.audit import AuditLog
from janitor.config import RetentionRule, RetentionSettings, RqSettings, Settings
from janitor.engine import run_once
from janitor.keyspace import Keyspace
from janitor.report.build import SCHEMA, Limits, backlog, build_report
from janitor.report.explain import explain
from janitor.report.text import render_explain, render_report
from tests import funcs
from tests.cli import janitor
from tests.funcs import work
from tests.reports import (
    SECRETS,
    assert_same_shape,
    ended_at,
    json_examples,
    leak,
)
from tests.rqenv import RQ_VERSIONS
from tests.rqstate import Manifest, produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

DAY = 86_400
YEAR = 31_536_000
KEYS = Keyspace()


def expected_counts(manifest: Manifest) -> dict[str, int]:
    """The number of jobs per state that produce.py created."""
    ids = manifest.ids
    counts = {
        "queued": len(ids("queued")),
        "started": len(ids("started", "abandoned")),
        "deferred": len(
            ids(
                "deferred",
                "deferred_child",
                "abandoned_child_allowed",
                "abandoned_child",
            )
        ),
        "scheduled": len(ids("scheduled")),
        "finished": len(
            ids(
                "finished",
                "finished_forever",
                "finished_parent",
                "finished_child",
                "group",
            )
        ),
        "failed": len(ids("failed", "failed_retried", "failed_parent")),
        "stopped": len(ids("stopped")),
        "canceled": len(ids("canceled")),
    }
    return {state: n for state, n in counts.items() if n}


def rows(report: dict[str, Any], queue: str = "default") -> dict[str, dict[str, Any]]:
    """The state rows of one queue, by state."""
    [found] = [q for q in report["queues"] if q["name"] == queue]
    return {row["state"]: row for row in found["states"]}


def codes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The doctor findings, by code."""
    found: dict[str, dict[str, Any]] = {f["code"]: f for f in report["findings"]}
    return found


def dry_run_deletions(
    client: redis.Redis, settings: Settings, now: float
) -> dict[str, int]:
    """What expire_jobs would delete at ``now``: job_deleted events per status."""
    stream = io.StringIO()
    run_once(
        client,
        settings,
        AuditLog(stream),
        dry_run=True,
        only=["expire_jobs"],
        now=lambda: now,
    )
    counts: dict[str, int] = {}
    for line in stream.getvalue().splitlines():
        event = json.loads(line)
        if event["event"] == "job_deleted":
            counts[event["status"]] = counts.get(event["status"], 0) + 1
    return counts


@pytest.fixture
def queue(r: redis.Redis) -> Queue:
    """The RQ queue 'default' on the test server."""
    return Queue("default", connection=r)


class TestCounts:
    """The report counts exactly what RQ created."""

    @pytest.mark.parametrize("rq_version", RQ_VERSIONS)
    def test_counts_equal_what_rq_created_and_nothing_is_written_or_leaked(
        self, rq_version: str, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """Counts equal the jobs this RQ version made; report and explain of every job change no byte and show no payload."""
        manifest = produce(
            redis_server.url, rq_version=rq_version, with_killed_worker=True
        )
        before = snapshot(r)
        report = build_report(r, Settings(), time.time())
        outputs = [json.dumps(report), render_report(report)]
        for job_id in manifest.ids():
            explained = explain(r, Settings(), job_id, time.time())
            outputs += [json.dumps(explained), render_explain(explained)]
        assert_unchanged(before, snapshot(r))
        text = "\n".join(outputs)
        assert [secret for secret in SECRETS if secret in text] == []
        found = rows(report)
        assert {s: row["count"] for s, row in found.items()} == expected_counts(
            manifest
        )
        assert all(
            row["exact"] and row["read"] == row["count"] for row in found.values()
        )
        assert report["sampling"]["exact"] is True

    def test_rq3_key_prefix_is_honoured(
        self, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """RQ 3 data under RQ_KEY_PREFIX is reported with [rq] key_prefix, and not without it."""
        manifest = produce(
            redis_server.url, rq_version="3.0.0", env={"RQ_KEY_PREFIX": "myrq"}
        )
        prefixed = Settings(rq=RqSettings(key_prefix="myrq"))
        report = build_report(r, prefixed, time.time())
        assert {s: row["count"] for s, row in rows(report).items()} == expected_counts(
            manifest
        )
        assert build_report(r, Settings(), time.time())["queues"] == []

    def test_large_registry_is_sampled_and_says_so(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Beyond its budget a registry is sampled: the count is estimated, marked, and the oldest still found."""
        for _ in range(40):
            queue.enqueue(funcs.ok)
        work(r, queue)
        now = time.time()
        whole = rows(build_report(r, Settings(), now))["finished"]
        small = Limits(read_budget=12, per_collection_max=12, per_collection_min=12)
        report = build_report(r, Settings(), now, limits=small)
        sampled = rows(report)["finished"]
        assert (sampled["count"], sampled["exact"], sampled["read"]) == (40, False, 12)
        # RQ scores are whole seconds: the score order finds the oldest to within 1 s.
        assert sampled["oldest_age_s"] == pytest.approx(whole["oldest_age_s"], abs=1)
        assert report["sampling"]["exact"] is False
        assert "~40" in render_report(report)
        assert "Sampled:" in render_report(report)

    def test_long_queue_list_is_read_from_both_ends(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A queue list beyond its budget is read at its ends: the count is estimated and the oldest is the head."""
        first = queue.enqueue(funcs.ok)
        for _ in range(39):
            queue.enqueue(funcs.ok)
        now = time.time()
        small = Limits(read_budget=12, per_collection_max=12, per_collection_min=12)
        queued = rows(build_report(r, Settings(), now, limits=small))["queued"]
        assert (queued["count"], queued["exact"], queued["read"]) == (40, False, 12)
        head = Job.fetch(first.id, connection=r).enqueued_at
        assert head is not None
        assert queued["oldest_age_s"] == pytest.approx(now - head.timestamp(), abs=0.01)

    def test_queue_cap_is_stated(self, r: redis.Redis) -> None:
        """With more queues than max_queues, the report shows the first ones and says it is incomplete."""
        for name in ("a", "b", "c"):
            Queue(name, connection=r).enqueue(funcs.ok)
        report = build_report(r, Settings(), time.time(), limits=Limits(max_queues=2))
        sampling = report["sampling"]
        assert (sampling["queues_listed"], sampling["queues_reported"]) == (3, 2)
        assert (sampling["queues_complete"], sampling["exact"]) == (False, False)
        assert len(report["queues"]) == 2

    def test_queue_globs_select_queues(self, r: redis.Redis) -> None:
        """--queue globs limit the report to matching queues."""
        for name in ("default", "job_queue_resource_id-1", "other"):
            Queue(name, connection=r).enqueue(funcs.ok)
        report = build_report(r, Settings(), time.time(), queues=["job_queue_*"])
        assert [q["name"] for q in report["queues"]] == ["job_queue_resource_id-1"]
        assert report["sampling"]["queues_listed"] == 3


class TestDeletionTimes:
    """When RQ and when the janitor delete each state's jobs."""

    def test_rq_times_follow_the_job_ttls(self, r: redis.Redis, queue: Queue) -> None:
        """Finished jobs expire ended_at + 500 s, failed ones ended_at + 1 year, result_ttl=-1 never."""
        done = queue.enqueue(funcs.ok)
        forever = queue.enqueue(funcs.ok, result_ttl=-1)
        failed = queue.enqueue(funcs.boom)
        work(r, queue)
        found = rows(build_report(r, Settings(), time.time()))
        finished_row, failed_row = found["finished"], found["failed"]
        assert (finished_row["rq"]["with_ttl"], finished_row["rq"]["never"]) == (1, 1)
        assert finished_row["rq"]["first_at"] == pytest.approx(
            ended_at(r, done.id) + 500, abs=2
        )
        assert failed_row["rq"]["first_at"] == pytest.approx(
            ended_at(r, failed.id) + YEAR, abs=2
        )
        assert forever.id not in {done.id, failed.id}

    def test_janitor_columns_follow_the_rules(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """The first matching rule sets the state it names; other states take [retention]; unlisted queues never."""
        done = queue.enqueue(funcs.ok)
        queue.enqueue(funcs.boom)
        work(r, queue)
        rule = RetentionRule(index=0, queues=("def*",), ages={"finished": 3600})
        settings = Settings(retention=RetentionSettings(rules=(rule,)))
        found = rows(build_report(r, settings, time.time()))
        finished = found["finished"]["janitor"]
        assert (finished["rule"], finished["retention_s"]) == (
            "retention.rules[0].finished",
            3600,
        )
        assert finished["oldest_at"] == pytest.approx(
            ended_at(r, done.id) + 3600, abs=0.01
        )
        assert found["failed"]["janitor"]["rule"] == "retention.failed"
        outside = Settings(rq=RqSettings(queues=("other-*",)))
        closed = rows(build_report(r, outside, time.time()))["finished"]["janitor"]
        assert closed["when"] == "never: queue outside [rq] queues"
        assert closed["rule"] is None

    def test_backlog_is_what_expire_jobs_would_delete(
        self, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """Per state, the backlog counts exactly the jobs a dry run of expire_jobs deletes, and backlog() names them."""
        produce(redis_server.url)
        start = time.time()
        scenarios = [
            (Settings(), start + 60),
            (Settings(), start + 2 * DAY),
            (Settings(), start + 40 * DAY),
            (Settings(retention=RetentionSettings(keep_last=2)), start + 60),
        ]
        for settings, now in scenarios:
            found = rows(build_report(r, settings, now))
            counts = {s: row["backlog"]["count"] for s, row in found.items()}
            assert {s: n for s, n in counts.items() if n} == dry_run_deletions(
                r, settings, now
            ), now - start
            expected = {
                ("default", s): row["backlog"]["oldest_age_s"]
                for s, row in found.items()
                if row["backlog"]["count"]
            }
            assert backlog(r, settings, now) == pytest.approx(expected, abs=0.01)
        assert (
            backlog(r, Settings(), start + 40 * DAY)[("default", "failed")] > 30 * DAY
        )


class TestLeaks:
    """State nobody will clean is listed with what to do about it."""

    def test_dead_workers_and_unserved_queues(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A listed worker whose hash expired, and a listed zombie, are dead workers; their queue is unserved."""
        queue.enqueue(funcs.ok)
        for name in ("gone", "zombie"):
            r.sadd(KEYS.workers(), KEYS.worker(name))
            r.sadd(KEYS.workers("default"), KEYS.worker(name))
        r.hset(KEYS.worker("zombie"), "last_heartbeat", "2020-01-01T00:00:00.000000Z")
        report = build_report(r, Settings(), time.time())
        dead = leak(report, "dead_workers_listed")
        assert dead["by_kind"] == {"hash_gone": 1, "zombie": 1}
        assert set(dead["examples"]) == {"rq:worker:gone", "rq:worker:zombie"}
        assert leak(report, "unserved_queues")["examples"] == ["default"]

    def test_live_worker_serves_its_queue(self, r: redis.Redis, queue: Queue) -> None:
        """A registered RQ worker makes its queue served and is not a leak."""
        queue.enqueue(funcs.ok)
        Worker([queue], connection=r, name="alive").register_birth()  # type: ignore[no-untyped-call]
        report = build_report(r, Settings(), time.time())
        assert report["queues"][0]["served"] is True
        assert leak(report, "dead_workers_listed")["count"] == 0
        assert leak(report, "unserved_queues")["count"] == 0

    def test_keys_without_ttl_and_dangling_ids(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """Canceled and result_ttl=-1 jobs, unlisted zombie hashes and orphan dependency sets lack a TTL; a gone job leaves a dangling id."""
        queue.enqueue(funcs.ok, result_ttl=-1)
        evicted = queue.enqueue(funcs.ok)
        work(r, queue)
        queue.enqueue(funcs.ok).cancel()
        r.hset(KEYS.worker("orphan-horse"), "successful_job_count", 1)
        r.sadd(KEYS.dependents("long-gone"), "child")
        r.delete(KEYS.job(evicted.id))  # as an eviction or expiry would (rq#1955)
        report = build_report(r, Settings(), time.time())
        no_ttl = leak(report, "keys_without_ttl")
        assert no_ttl["by_kind"] == {
            "job_hash": 2,
            "worker_hash": 1,
            "dependency_set": 1,
        }
        dangling = leak(report, "dangling_registry_ids")
        assert dangling["examples"] == [f"rq:finished:default {evicted.id}"]
        assert rows(report)["finished"]["count"] == 1

    def test_failure_streams_without_ttl(self, r: redis.Redis, queue: Queue) -> None:
        """Failure result streams have no TTL; the one whose job is gone is counted apart."""
        kept = queue.enqueue(funcs.boom)
        gone = queue.enqueue(funcs.boom)
        queue.enqueue(funcs.ok)
        work(r, queue)
        r.delete(KEYS.job(gone.id))  # the job hash expired; its stream stays forever
        streams = leak(
            build_report(r, Settings(), time.time()), "result_streams_without_ttl"
        )
        assert streams["by_kind"] == {"job_exists": 1, "job_gone": 1}
        assert set(streams["examples"]) == {
            f"rq:results:{kept.id}",
            f"rq:results:{gone.id}",
        }


class TestMemoryAndDoctor:
    """Memory per queue family, and risky settings with advice."""

    def test_memory_per_queue_family(self, r: redis.Redis) -> None:
        """Per-job queues (actinia's) form one family; memory is an estimate per family."""
        ids = (
            "3f2a0c1e-9b1d-4c55-8e0f-0a1b2c3d4e5f",
            "7d9e8f7a-1b2c-4d3e-9f8a-7b6c5d4e3f2a",
        )
        for suffix in ids:
            Queue(f"job_queue_resource_id-{suffix}", connection=r).enqueue(funcs.ok)
        Queue("default", connection=r).enqueue(funcs.ok)
        memory = build_report(r, Settings(), time.time())["memory"]
        families = {f["family"]: f for f in memory["families"]}
        assert set(families) == {"default", "job_queue_resource_id-*"}
        assert (
            families["job_queue_resource_id-*"]["queues"],
            families["job_queue_resource_id-*"]["jobs"],
        ) == (2, 2)
        assert all(f["bytes"] > 0 for f in families.values())
        assert memory["estimate"] is True

    def test_ttl_findings(self, r: redis.Redis, queue: Queue) -> None:
        """result_ttl=-1 jobs and failed jobs on the one-year default are findings with advice."""
        queue.enqueue(funcs.ok, result_ttl=-1)
        queue.enqueue(funcs.boom)
        queue.enqueue(funcs.boom, failure_ttl=3600)
        work(r, queue)
        found = codes(build_report(r, Settings(), time.time()))
        assert (
            found["result_ttl_forever"]["count"],
            found["result_ttl_forever"]["queues"],
        ) == (1, ["default"])
        assert found["failure_ttl_default"]["count"] == 1
        assert "failure_ttl" in found["failure_ttl_default"]["advice"]

    def test_server_findings(self, r: redis.Redis) -> None:
        """No maxmemory, and an evicting maxmemory-policy, are findings."""
        assert "no_maxmemory" in codes(build_report(r, Settings(), time.time()))
        old = {k: str(v) for k, v in r.config_get("maxmemory*").items()}
        try:
            r.config_set("maxmemory", "512mb")
            r.config_set("maxmemory-policy", "volatile-lru")
            found = codes(build_report(r, Settings(), time.time()))
        finally:
            r.config_set("maxmemory", old["maxmemory"])
            r.config_set("maxmemory-policy", old["maxmemory-policy"])
        assert "no_maxmemory" not in found
        assert "volatile-lru" in found["maxmemory_policy"]["message"]

    def test_maintenance_overdue_on_served_queue(
        self, r: redis.Redis, queue: Queue
    ) -> None:
        """A served queue whose expired entries nobody removed for longer than RQ's interval is a finding."""
        queue.enqueue(funcs.ok)
        work(r, queue)
        Worker([queue], connection=r, name="busy").register_birth()  # type: ignore[no-untyped-call]
        now = time.time()
        assert "maintenance_overdue" not in codes(build_report(r, Settings(), now))
        late = codes(build_report(r, Settings(), now + 500 + 1100))
        assert late["maintenance_overdue"]["queues"] == ["default"]

    def test_suspended_forever(self, r: redis.Redis) -> None:
        """Rq suspend without --duration is a finding; with a duration, or after rq resume, it is not."""
        assert "suspended_forever" not in codes(
            build_report(r, Settings(), time.time())
        )
        suspend(r)
        found = codes(build_report(r, Settings(), time.time()))
        assert found["suspended_forever"]["severity"] == "warning"
        assert "rq resume" in found["suspended_forever"]["advice"]
        suspend(r, ttl=600)
        assert "suspended_forever" not in codes(
            build_report(r, Settings(), time.time())
        )
        resume(r)
        assert "suspended_forever" not in codes(
            build_report(r, Settings(), time.time())
        )

    def test_scheduled_overdue_without_a_scheduler(self, r: redis.Redis) -> None:
        """A job due an hour ago on a queue whose scheduler lock nobody holds is a finding; a held lock is not."""
        queue = Queue("later", connection=r)
        queue.enqueue_at(datetime.now(UTC) - timedelta(hours=1), funcs.ok)
        queue.enqueue_at(datetime.now(UTC) + timedelta(hours=1), funcs.ok)
        found = codes(build_report(r, Settings(), time.time()))
        assert found["scheduled_overdue"]["queues"] == ["later"]
        assert "--with-scheduler" in found["scheduled_overdue"]["advice"]
        r.set(KEYS.scheduler_lock("later"), "scheduler-1", ex=61)
        assert "scheduled_overdue" not in codes(
            build_report(r, Settings(), time.time())
        )


class TestRq3Structures:
    """RQ 3's ready registry and rate limits, as the report counts them."""

    def test_ready_jobs_and_rate_limits_are_counted(self, r: redis.Redis) -> None:
        """A stranded ready job shows in the queue's sizes; a limit's held slot and waiting jobs in rate_limits."""
        queue = Queue("rl", connection=r)
        limit = RateLimit("api", 1)
        jobs = [queue.enqueue(funcs.ok, rate_limit=limit) for _ in range(3)]
        stranded = queue.enqueue(funcs.ok)
        ReadyJobRegistry(queue=queue).add(stranded)
        report = build_report(r, Settings(), time.time())
        [rl] = [q for q in report["queues"] if q["name"] == "rl"]
        assert rl["sizes"]["ready"] == 1
        assert rl["sizes"]["queue"] == 2  # the allowed job and the stranded one
        assert report["rate_limits"]["count"] == 1
        [api] = report["rate_limits"]["keys"]
        assert (api["key"], api["concurrency"], api["allowed"], api["waiting"]) == (
            "api",
            1,
            1,
            2,
        )
        assert api["oldest_waiting_age_s"] >= 0
        assert "api: 1/1 slots held, 2 waiting" in render_report(report)
        assert r.zrange(KEYS.rate_limit_allowed("api"), 0, -1) == [jobs[0].id.encode()]


class TestCli:
    """The real command line."""

    def test_report_json_matches_the_documented_schema(
        self, redis_server: RedisServer, r: redis.Redis
    ) -> None:
        """`janitor report --json` exits 0 with exactly the keys docs/report.md documents."""
        manifest = produce(redis_server.url, with_killed_worker=True)
        before = snapshot(r)
        result = janitor("report", "--json", "--redis-url", redis_server.url)
        assert_unchanged(before, snapshot(r))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["schema"] == SCHEMA == json_examples()[0]["schema"]
        assert_same_shape(json_examples()[0], report)
        assert [item["kind"] for item in report["leaks"]] == [
            "keys_without_ttl",
            "dangling_registry_ids",
            "dead_workers_listed",
            "result_streams_without_ttl",
            "unserved_queues",
            "unlisted_queues",
            "interrupted_compactions",
            "stuck_deferred_jobs",
            "dead_index_entries",
        ]
        assert list(rows(report)) == list(expected_counts(manifest))
        assert {f["code"] for f in report["findings"]} <= {
            "maxmemory_policy",
            "no_maxmemory",
            "server_settings_unknown",
            "result_ttl_forever",
            "failure_ttl_default",
            "maintenance_overdue",
        }

    def test_report_text_links_the_docs(
        self, redis_server: RedisServer, r: redis.Redis, queue: Queue
    ) -> None:
        """`janitor report` prints the table, links docs/report.md and exits 0."""
        queue.enqueue(funcs.ok)
        result = janitor("report", "--redis-url", redis_server.url, "--queue", "def*")
        assert result.returncode == 0, result.stderr
        assert "docs/report.md" in result.stdout
        assert re.search(r"default\s+queued\s+1\s", result.stdout)

    def test_report_exit_codes(self, tmp_path: Path) -> None:
        """An unreachable Redis exits 69 and an invalid config 78."""
        from tests.servers import free_port

        url = f"redis://127.0.0.1:{free_port()}/0"
        assert janitor("report", "--redis-url", url).returncode == 69
        config = tmp_path / "janitor.toml"
        config.write_text('[retention]\nfailed = "abc"\n')
        assert janitor("report", "-c", str(config)).returncode == 78
