"""[memory] budget: over it, expire_jobs deletes terminal jobs beyond their age rules, oldest first, until under."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from rq import Queue, SimpleWorker

from janitor.config import MemorySettings, Settings
from janitor.jobs import parse_rq_time
from janitor.keyspace import Keyspace
from janitor.memory import budget_bytes, read_usage, target
from janitor.report import build_report, explain, render_report
from tests import funcs
from tests.cli import clean_env, janitor
from tests.engine_run import run_tasks
from tests.servers import RedisServer, default_server_binary
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()
MAXMEMORY = 32 * 1024**2
PAYLOAD = "x" * 16_000
"""Each job carries this much as its argument: a few hundred jobs fill the server."""


@pytest.fixture
def small(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own with a small maxmemory and noeviction, as a queue's server should be."""
    server = RedisServer(
        binary=default_server_binary(),
        workdir=tmp_path / "small",
        extra_args=("--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"),
    ).start()
    yield server
    server.stop()


def fill(client: redis.Redis, share: float) -> list[str]:
    """Finished jobs with payloads made by a real worker until used_memory passes ``share`` of maxmemory.

    One result TTL for all, so the finished registry's order (end + TTL) is the end order.
    """
    queue = Queue("big", connection=client)
    ids: list[str] = []
    while read_usage(client).used < share * MAXMEMORY:
        ids += [queue.enqueue(funcs.ok, PAYLOAD, result_ttl=3600).id for _ in range(50)]
        SimpleWorker([queue], connection=client).work(burst=True)
    return ids


def settings(budget: str, keep_for: int = 0) -> Settings:
    """Default settings with a memory budget."""
    kind, amount = (
        ("percent", float(budget[:-1]))
        if budget.endswith("%")
        else ("bytes", float(budget))
    )
    return Settings(memory=MemorySettings(budget=(kind, amount), keep_for=keep_for))


def deleted(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job_deleted lines."""
    return [e for e in events if e["event"] == "job_deleted"]


def test_over_budget_the_oldest_jobs_go_until_under(small: RedisServer) -> None:
    """Jobs younger than their age rule go, oldest ended first, till used_memory is under the target; a dry run writes nothing."""
    client = small.client()
    ids = fill(client, 0.7)
    config = settings("50%")
    goal = target(budget_bytes(config.memory, MAXMEMORY) or 0)
    ended = {
        job_id: parse_rq_time(cast("bytes", client.hget(KEYS.job(job_id), "ended_at")))
        or 0.0
        for job_id in ids
    }
    state = snapshot(client)
    _, dry = run_tasks(client, config, only=["expire_jobs"], dry_run=True)
    assert_unchanged(state, snapshot(client))
    _, events = run_tasks(client, config, only=["expire_jobs"])
    gone = deleted(events)
    assert gone
    assert {e["rule"] for e in gone} == {"memory.budget"}
    assert read_usage(client).used <= goal
    assert len(deleted(dry)) >= len(gone) * 0.5  # estimated from MEMORY USAGE
    removed = {e["job_id"] for e in gone}
    kept = [job_id for job_id in ids if job_id not in removed]
    assert client.exists(*(KEYS.job(job_id) for job_id in kept)) == len(kept)
    # oldest first: RQ scores whole seconds, so the cut may fall inside one second
    assert max(ended[j] for j in removed) <= min(ended[j] for j in kept) + 1.0


def test_young_jobs_stay_and_the_janitor_says_so(small: RedisServer) -> None:
    """Jobs younger than keep_for are never deleted for memory, however full Redis is."""
    client = small.client()
    fill(client, 0.6)
    _, events = run_tasks(client, settings("50%", keep_for=3600), only=["expire_jobs"])
    assert deleted(events) == []


def test_under_budget_nothing_happens(small: RedisServer) -> None:
    """Under the budget the memory pass reads INFO and does nothing else."""
    client = small.client()
    fill(client, 0.2)
    _, events = run_tasks(client, settings("90%"), only=["expire_jobs"])
    assert deleted(events) == []


def test_percent_budget_without_maxmemory_exits_78(redis_server: RedisServer) -> None:
    """A budget in percent on a server without maxmemory stops run --once with exit 78 and the reason."""
    env = {**clean_env(), "JANITOR_REDIS_URL": redis_server.url}
    config = Path(redis_server.workdir) / "budget.toml"
    config.write_text('[memory]\nbudget = "80%"\n', encoding="utf-8")
    done = janitor("run", "--once", "-c", str(config), env=env)
    assert done.returncode == 78, done.stderr
    assert "maxmemory" in done.stderr
    assert "[memory] budget" in done.stderr


def test_report_and_explain_show_the_budget(small: RedisServer) -> None:
    """Over the budget, report says how much it would take and explain marks an old job at risk; nothing is written."""
    client = small.client()
    ids = fill(client, 0.6)
    config = settings("50%")
    state = snapshot(client)
    report = build_report(client, config, time.time())
    explained = explain(client, config, ids[0], time.time())
    assert_unchanged(state, snapshot(client))
    budget = report["memory"]["budget"]
    assert budget["over"] is True
    assert budget["budget"] == MAXMEMORY // 2
    assert budget["would_take"]["jobs"] > 0
    assert "OVER; expire_jobs would delete about" in render_report(report)
    assert explained["memory"]["at_risk"] is True
    young = explain(client, settings("50%", keep_for=3600), ids[0], time.time())
    assert young["memory"]["at_risk"] is False


def test_eviction_policy_is_critical_where_rq_data_lives(small: RedisServer) -> None:
    """An eviction policy on a server holding RQ queues is a critical finding (eviction loses queued jobs)."""
    client = small.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    Queue("q", connection=client).enqueue(funcs.ok)
    found = {
        f["code"]: f for f in build_report(client, Settings(), time.time())["findings"]
    }
    assert found["maxmemory_policy"]["severity"] == "critical"
