"""Key names and member formats, checked against the templates in RQ 1.16.2, 2.x and 3.0's source."""

from __future__ import annotations

import pytest
import redis

from janitor.keyspace import Keyspace, Layout, detect_layout, iter_queue_names
from tests.rqstate import produce
from tests.servers import RedisServer

# (method, args, expected) — taken from rq's registry.py key_templates, queue.py, job.py,
# executions.py, worker.py and group.py; the same in 1.16.2, 2.x and 3.0 with prefix "rq".
TEMPLATES: list[tuple[str, tuple[str, ...], bytes]] = [
    ("queues", (), b"rq:queues"),
    ("queue", ("default",), b"rq:queue:default"),
    ("intermediate", ("default",), b"rq:queue:default:intermediate"),
    ("groups", (), b"rq:groups"),
    ("cron_schedulers", (), b"rq:cron_schedulers"),
    ("cron_scheduler", ("a",), b"rq:cron_scheduler:a"),
    ("started", ("default",), b"rq:wip:default"),
    ("finished", ("default",), b"rq:finished:default"),
    ("failed", ("default",), b"rq:failed:default"),
    ("canceled", ("default",), b"rq:canceled:default"),
    ("deferred", ("default",), b"rq:deferred:default"),
    ("scheduled", ("default",), b"rq:scheduled:default"),
    ("ready", ("default",), b"rq:ready:default"),
    ("cleaning_marker", ("default",), b"rq:clean_registries:default"),
    ("job", ("abc",), b"rq:job:abc"),
    ("dependents", ("abc",), b"rq:job:abc:dependents"),
    ("dependencies", ("abc",), b"rq:job::abc:dependencies"),
    ("results", ("abc",), b"rq:results:abc"),
    ("executions", ("abc",), b"rq:executions:abc"),
    ("execution", ("abc", "e1"), b"rq:execution:abc:e1"),
    ("group", ("g",), b"rq:group:g"),
    ("worker", ("w1",), b"rq:worker:w1"),
    ("workers", (), b"rq:workers"),
    ("workers", ("default",), b"rq:workers:default"),
    ("worker_executions", ("w1",), b"rq:worker:w1:executions"),
]


@pytest.mark.parametrize(("method", "args", "expected"), TEMPLATES)
def test_key_names_match_rq(
    method: str, args: tuple[str, ...], expected: bytes
) -> None:
    """Each key name is exactly what RQ writes, including the double colon of the dependencies set."""
    assert getattr(Keyspace(), method)(*args) == expected


def test_rq3_prefix_applies_to_every_key() -> None:
    """RQ 3's RQ_KEY_PREFIX replaces "rq" in every name, and the janitor's own keys keep theirs."""
    keys = Keyspace("myapp")
    assert keys.job("abc") == b"myapp:job:abc"
    assert keys.dependencies("abc") == b"myapp:job::abc:dependencies"
    assert keys.queue_name_from_key(b"myapp:queue:q1") == b"q1"
    assert keys.queue_name_from_key(b"rq:queue:q1") is None
    assert keys.janitor_key("leader") == b"janitor:leader"


def test_started_members_per_layout() -> None:
    """RQ 1 members are plain ids (which may contain colons); RQ 2 members split on the last colon."""
    assert Keyspace.parse_started_member(b"a:b", Layout.RQ1) == (b"a:b", None)
    assert Keyspace.parse_started_member(b"abc:e1", Layout.RQ2) == (b"abc", b"e1")
    assert Keyspace.started_member(b"abc", b"e1") == b"abc:e1"
    assert Keyspace.started_member(b"abc", None) == b"abc"


def test_queue_names_come_from_rq_queues(r: redis.Redis) -> None:
    """Queue names are read from rq:queues; members that are not queue keys are ignored."""
    r.sadd("rq:queues", "rq:queue:a", "rq:queue:b", "garbage")
    assert sorted(iter_queue_names(r, Keyspace())) == [b"a", b"b"]


@pytest.mark.parametrize(
    ("setup", "layout"),
    [
        ({}, Layout.UNKNOWN),
        ({"rq:queue:x": "list"}, Layout.RQ1),
        ({"rq:executions:j": "zset"}, Layout.RQ2_OR_LATER),
        ({"rq:ready:q": "zset"}, Layout.RQ3),
        ({"rq:clean_groups": "string"}, Layout.RQ3),
        ({"rq:worker:w:executions": "set"}, Layout.RQ3),
        ({"rq:job:j": "hash+group_id"}, Layout.RQ2_OR_LATER),
        ({"rq:job:j": "hash"}, Layout.RQ1),
    ],
)
def test_layout_detection_from_keys(
    r: redis.Redis, setup: dict[str, str], layout: Layout
) -> None:
    """Without workers, the layout is told by RQ 2's executions and job fields and by keys only RQ 3 writes."""
    for key, kind in setup.items():
        if kind == "list":
            r.rpush(key, "j")
        elif kind == "string":
            r.set(key, "1", ex=600)
        elif kind == "set":
            r.sadd(key, "j:e")
        elif kind.startswith("hash"):
            r.hset(key, mapping={"status": "finished", "origin": "q"})
            if kind.endswith("group_id"):
                r.hset(key, "group_id", "")
        else:
            r.zadd(key, {"m": 1})
    assert detect_layout(r, Keyspace()) is layout


def test_layout_detection_from_worker_versions(r: redis.Redis) -> None:
    """A live worker's version field decides the layout."""
    r.sadd("rq:workers", "rq:worker:w1")
    r.hset("rq:worker:w1", "version", "1.16.2")
    assert detect_layout(r, Keyspace()) is Layout.RQ1
    r.hset("rq:worker:w1", "version", "3.0.0")
    assert detect_layout(r, Keyspace()) is Layout.RQ3


def test_a_key_prefix_other_than_rq_means_rq_3(r: redis.Redis) -> None:
    """Only RQ 3 honours RQ_KEY_PREFIX, so data under another prefix is 3.x."""
    r.rpush("acme:queue:x", "j")
    assert detect_layout(r, Keyspace("acme")) is Layout.RQ3


@pytest.mark.compat
@pytest.mark.parametrize(
    ("rq_version", "layout"),
    [
        ("1.16.2", Layout.RQ1),
        ("2.12.0", Layout.RQ2_OR_LATER),
        ("3.0.0", Layout.RQ3),
    ],
)
def test_layout_of_real_data_without_live_workers(
    rq_version: str, layout: Layout, redis_server: RedisServer, r: redis.Redis
) -> None:
    """Data a real RQ left (finished, failed, no worker alive) is told apart by version."""
    produce(redis_server.url, rq_version=rq_version, queue="layout")
    assert r.scard("rq:workers") == 0
    assert detect_layout(r, Keyspace()) is layout
