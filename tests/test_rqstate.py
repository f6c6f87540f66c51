"""Self-checks of the RQ state producer (tests/rqstate) under every supported RQ version, with raw Redis reads."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.rqenv import RQ_VERSIONS, VENVS_DIR, python_for, venv_dir
from tests.rqstate import (
    EXPECTED_STATUS,
    MARKER,
    SECRET_ERROR,
    Manifest,
    ProduceError,
    produce,
    running,
)
from tests.servers import RedisServer, free_port

compat_versions = pytest.mark.parametrize("rq_version", RQ_VERSIONS)

FINISHED = (
    "finished",
    "finished_forever",
    "finished_parent",
    "finished_child",
    "group",
)
FAILED = ("failed", "failed_retried", "failed_parent", "stopped")
DEFERRED = ("deferred_child", "deferred", "abandoned_child_allowed", "abandoned_child")


def text(value: object) -> str:
    """Decode a bytes reply."""
    assert isinstance(value, bytes), value
    return value.decode()


def job_status(r: redis.Redis, m: Manifest, job_id: str) -> str | None:
    """Return the raw status field of a job hash."""
    value = r.hget(m.key(f"job:{job_id}"), "status")
    return None if value is None else text(value)


def zmembers(r: redis.Redis, key: str) -> dict[str, float]:
    """Return a sorted set as member -> score."""
    pairs = cast("list[tuple[bytes, float]]", r.zrange(key, 0, -1, withscores=True))
    return {text(member): float(score) for member, score in pairs}


def wip_job_ids(r: redis.Redis, m: Manifest) -> set[str]:
    """Job ids in the started registry: members are ``<id>`` in 1.x and ``<id>:<execution>`` from 2.0."""
    members = zmembers(r, m.key(f"wip:{m.queue}"))
    if m.rq_major < 2:
        return set(members)
    assert all(":" in member for member in members), members
    return {member.split(":", 1)[0] for member in members}


@pytest.mark.compat
@compat_versions
def test_python_for_gives_exactly_that_rq(rq_version: str) -> None:
    """python_for(v) returns a python of <repo>/.venvs/rq-<v> that imports rq v, and a second call reuses it."""
    python = python_for(rq_version)
    assert python.parent.parent == venv_dir(rq_version)
    assert venv_dir(rq_version).parent == VENVS_DIR
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, rq; print(m.version('rq'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == rq_version
    started = time.monotonic()
    assert python_for(rq_version) == python
    assert time.monotonic() - started < 1.0


def test_python_for_current_is_this_interpreter() -> None:
    """python_for("current") is the interpreter running the tests."""
    assert python_for("current") == Path(sys.executable)


@pytest.mark.compat
@compat_versions
def test_every_category_has_its_status_and_registry(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """Each produced category has the expected status field and sits in exactly the registry RQ puts it in."""
    m = produce(
        redis_server.url, rq_version=rq_version, queue="jobs", with_killed_worker=True
    )
    assert m.rq_version == rq_version
    assert m.key_prefix == "rq"
    counts = {category: len(ids) for category, ids in m.jobs.items()}
    assert counts == {
        "finished": 3,
        "finished_forever": 1,
        "failed": 2,
        "failed_retried": 1,
        "stopped": 1,
        "canceled": 1,
        "failed_parent": 1,
        "deferred_child": 1,
        "finished_parent": 1,
        "finished_child": 1,
        "group": 2 if m.rq_major >= 2 else 0,
        "queued": 2,
        "deferred": 1,
        "scheduled": 1,
        "started": 0,
        "abandoned": 1,
        "abandoned_child_allowed": 1,
        "abandoned_child": 1,
        "rate_limit_holder": 0,
        "rate_limit_waiting": 0,
    }
    all_ids = m.ids()
    assert len(set(all_ids)) == len(all_ids)
    for category, ids in m.jobs.items():
        for job_id in ids:
            assert job_status(r, m, job_id) == EXPECTED_STATUS[category], (
                category,
                job_id,
            )

    q = m.queue
    finished = zmembers(r, m.key(f"finished:{q}"))
    assert set(finished) == set(m.ids(*FINISHED))
    assert finished[m.jobs["finished_forever"][0]] == float("inf")
    assert set(zmembers(r, m.key(f"failed:{q}"))) == set(m.ids(*FAILED))
    assert set(zmembers(r, m.key(f"canceled:{q}"))) == set(m.jobs["canceled"])
    assert set(zmembers(r, m.key(f"deferred:{q}"))) == set(m.ids(*DEFERRED))
    scheduled = zmembers(r, m.key(f"scheduled:{q}"))
    assert set(scheduled) == set(m.jobs["scheduled"])
    assert 3500 < scheduled[m.jobs["scheduled"][0]] - time.time() <= 3600
    assert [text(i) for i in r.lrange(m.key(f"queue:{q}"), 0, -1)] == m.jobs["queued"]
    assert wip_job_ids(r, m) == set(m.jobs["abandoned"])

    # TTLs: results expire (default result_ttl 500), result_ttl=-1 and live jobs do not, failures keep a year.
    assert 0 < r.ttl(m.key(f"job:{m.jobs['finished'][0]}")) <= 500
    assert r.ttl(m.key(f"job:{m.jobs['finished_forever'][0]}")) == -1
    assert r.ttl(m.key(f"job:{m.jobs['failed'][0]}")) > 500
    assert r.ttl(m.key(f"job:{m.jobs['canceled'][0]}")) == -1
    assert r.ttl(m.key(f"job:{m.jobs['abandoned'][0]}")) == -1
    assert (
        text(r.hget(m.key(f"job:{m.jobs['failed_retried'][0]}"), "retries_left")) == "0"
    )


@pytest.mark.compat
@compat_versions
def test_dependencies_groups_and_dead_worker(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """Children are registered on their parents, groups exist from rq 2.0 on, the killed worker left its key."""
    m = produce(redis_server.url, rq_version=rq_version, with_killed_worker=True)
    for parent, child in (("failed_parent", "deferred_child"), ("queued", "deferred")):
        dependents = {
            text(i) for i in r.smembers(m.key(f"job:{m.jobs[parent][0]}:dependents"))
        }
        assert m.jobs[child][0] in dependents
    assert (
        text(r.hget(m.key(f"job:{m.jobs['finished_child'][0]}"), "dependency_id"))
        == m.jobs["finished_parent"][0]
    )

    if m.rq_major >= 2:
        assert len(m.groups) == 1
        assert {text(i) for i in r.smembers(m.key(f"group:{m.groups[0]}"))} == set(
            m.jobs["group"]
        )
        assert m.groups[0] in {text(i) for i in r.smembers(m.key("groups"))}
    else:
        assert m.groups == []
        assert m.jobs["group"] == []

    [dead] = m.dead_workers
    worker_key = m.key(f"worker:{dead}")
    assert r.exists(worker_key)
    assert not r.hexists(worker_key, "death")
    assert 0 < r.ttl(worker_key) <= 480
    assert worker_key in {text(k) for k in r.smembers(m.key("workers"))}
    assert text(r.hget(m.key(f"job:{m.jobs['abandoned'][0]}"), "worker_name")) == dead
    assert m.workers == []
    assert m.worker_pids == []


@pytest.mark.compat
@compat_versions
def test_payload_markers_are_in_the_data(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """Every job's call carries the marker and every failure result carries the secret, for leak tests."""
    m = produce(redis_server.url, rq_version=rq_version)
    for job_id in m.ids():
        assert MARKER in text(r.hget(m.key(f"job:{job_id}"), "description")), job_id
    for job_id in m.ids("failed", "failed_parent"):
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            r.xrange(m.key(f"results:{job_id}")),
        )
        excs = [
            fields[b"exc_string"] for _, fields in entries if b"exc_string" in fields
        ]
        assert excs, job_id
        assert any(
            SECRET_ERROR in zlib.decompress(base64.b64decode(exc)).decode()
            for exc in excs
        )


@pytest.mark.compat
@compat_versions
def test_started_job_runs_until_worker_killed(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """with_started leaves a live busy worker on a started job; kill_workers ends worker and horse."""
    m = produce(
        redis_server.url,
        rq_version=rq_version,
        with_started=True,
        with_killed_worker=True,
    )
    try:
        [name] = m.workers
        [pid] = m.worker_pids
        [horse] = m.horse_pids
        [job_id] = m.jobs["started"]
        assert job_status(r, m, job_id) == "started"
        assert wip_job_ids(r, m) == {job_id, *m.jobs["abandoned"]}
        assert text(r.hget(m.key(f"job:{job_id}"), "worker_name")) == name
        assert m.dead_workers != m.workers
        worker = {
            text(k): text(v) for k, v in r.hgetall(m.key(f"worker:{name}")).items()
        }
        assert worker["state"] == "busy"
        assert worker["pid"] == str(pid)
        assert running(pid)
        assert running(horse)
        # The live worker must leave the queued jobs alone.
        assert [text(i) for i in r.lrange(m.key(f"queue:{m.queue}"), 0, -1)] == m.jobs[
            "queued"
        ]
    finally:
        m.kill_workers()
    assert not running(pid)
    assert not running(horse)
    m.kill_workers()  # idempotent


@pytest.mark.compat
@compat_versions
def test_key_prefix_is_honoured_only_by_rq3(
    r: redis.Redis, redis_server: RedisServer, rq_version: str
) -> None:
    """RQ_KEY_PREFIX in env moves every key under that prefix on rq 3.0, while older versions keep "rq"."""
    m = produce(redis_server.url, rq_version=rq_version, env={"RQ_KEY_PREFIX": "acme"})
    want = "acme" if m.rq_major >= 3 else "rq"
    assert m.key_prefix == want
    prefixes = {text(key).split(":", 1)[0] for key in r.scan_iter(count=1000)}
    assert prefixes == {want}
    assert job_status(r, m, m.jobs["finished"][0]) == "finished"


def test_failure_raises_with_the_scripts_stderr() -> None:
    """Produce raises ProduceError carrying the script's stderr when it cannot do its job."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ProduceError, match=r"ConnectionError|Connection refused"):
        produce(url)
