"""clean_registries removes rq:groups and rq:cron_schedulers entries whose group or scheduler is gone, as RQ would."""

from __future__ import annotations

import subprocess
import time
from typing import Any, cast

import pytest
import redis

from janitor.config import Settings
from janitor.index_entries import CRON_GRACE_S
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter
from janitor.report import build_report
from janitor.tasks.base import TaskContext
from janitor.tasks.indexes import plan_indexes
from tests.engine_run import run_tasks
from tests.reports import leak
from tests.rqenv import python_for
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, restore, snapshot

KEYS = Keyspace()
VERSIONS = ("2.12.0", "3.0.0")
"""The RQ releases with both groups (2.0+) and cron schedulers (2.6+) among those tested."""

PRODUCE = """
import sys
from redis import Redis
from rq import Queue
from rq.cron import CronScheduler
from rq.group import Group
r = Redis.from_url(sys.argv[1])
queue = Queue("idx", connection=r)
for name in ("dead-group", "alive-group"):
    Group.create(connection=r, name=name).enqueue_many(queue, [Queue.prepare_data("os.getcwd")])
for name in ("dead-cron", "alive-cron", "young-cron"):
    CronScheduler(connection=r, name=name).register_birth()
"""
"""Two groups and three cron schedulers, made by RQ's own API."""

RQ_CLEANUP = """
import sys
from redis import Redis
from rq import cron_scheduler_registry
from rq.group import Group
r = Redis.from_url(sys.argv[1])
Group.clean_registries(r)
cron_scheduler_registry.cleanup(r, int(sys.argv[2]))
"""
"""RQ's own cleanup of both indexes, as a worker's maintenance runs it."""


def rq_script(version: str, url: str, code: str, *args: str) -> None:
    """Run ``code`` with that RQ release."""
    subprocess.run(
        [str(python_for(version)), "-c", code, url, *args], check=True, timeout=60
    )


def members(client: redis.Redis, key: bytes) -> set[bytes]:
    """The members of a set or sorted set."""
    if client.type(key) == b"zset":
        return set(cast("list[bytes]", client.zrange(key, 0, -1)))
    return cast("set[bytes]", client.smembers(key))


def removed(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(index, name) of the index_entry_removed events."""
    return {
        (e["index"], e["name"]) for e in events if e["event"] == "index_entry_removed"
    }


@pytest.mark.compat
@pytest.mark.parametrize("rq_version", VERSIONS)
def test_entries_of_gone_groups_and_schedulers_go_as_rq_removes_them(
    rq_version: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """Dead group and cron scheduler entries go, audited; live ones and a young one stay; RQ's cleanup agrees."""
    rq_script(rq_version, redis_server.url, PRODUCE)
    # what time does: the dead group's jobs and set are gone (RQ's Group.cleanup SREMs
    # expired ids, and Redis drops the empty set); two schedulers stopped heartbeating
    # 1000 s ago and the dead one's hash expired; a young one died a moment ago
    (job_id,) = cast("set[bytes]", r.smembers(KEYS.group("dead-group")))
    r.delete(KEYS.group("dead-group"), KEYS.job(job_id))
    old = time.time() - 1000
    r.zadd(KEYS.cron_schedulers(), {"dead-cron": old, "alive-cron": old}, xx=True)
    r.delete(KEYS.cron_scheduler("dead-cron"), KEYS.cron_scheduler("young-cron"))
    state = snapshot(r)
    dead = leak(build_report(r, Settings(), time.time()), "dead_index_entries")
    assert dead["by_kind"] == {"groups": 1, "cron_schedulers": 1}
    assert sorted(dead["examples"]) == [
        "dead-cron",
        "dead-group",
    ]

    _, dry = run_tasks(r, only=["clean_registries"], dry_run=True)
    assert_unchanged(state, snapshot(r))
    _, events = run_tasks(r, only=["clean_registries"])
    expected = {("groups", "dead-group"), ("cron_schedulers", "dead-cron")}
    assert removed(events) == removed(dry) == expected
    assert members(r, KEYS.groups()) == {b"alive-group"}
    assert members(r, KEYS.cron_schedulers()) == {b"alive-cron", b"young-cron"}
    janitor = {key: members(r, key) for key in (KEYS.groups(), KEYS.cron_schedulers())}

    restore(r, state)
    rq_script(rq_version, redis_server.url, RQ_CLEANUP, str(CRON_GRACE_S))
    assert members(r, KEYS.groups()) == janitor[KEYS.groups()]
    # RQ drops an old entry by its score alone; the janitor also wants the hash gone
    assert members(r, KEYS.cron_schedulers()) == {b"young-cron"}
    assert janitor[KEYS.cron_schedulers()] - {b"alive-cron"} == {b"young-cron"}


def test_a_group_set_back_before_the_write_is_kept(r: redis.Redis) -> None:
    """The removal re-checks atomically: a group whose set reappears after planning keeps its entry."""
    r.sadd(KEYS.groups(), "g")
    settings = Settings()
    ctx = TaskContext(r, KEYS, settings, time.time(), QueueFilter.build(settings.rq))
    [action] = list(plan_indexes(ctx, "clean_registries"))
    r.sadd(KEYS.group("g"), "some-job")
    assert action.write is not None
    assert type(action.write).apply_batch(r, [action.write], None, time.time()) == [
        False
    ]
    assert members(r, KEYS.groups()) == {b"g"}
