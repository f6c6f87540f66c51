"""Faults in the middle of a run: the janitor killed, Redis restarted, connections cut, a batch replayed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from janitor.actions import run_script
from janitor.engine import BATCH_SIZE
from janitor.keyspace import Keyspace
from janitor.localserver import RedisServer
from tests.bulk import fill_finished
from tests.servers import default_server_binary

KEYS = Keyspace()
JOBS = 20_000


def config(tmp_path: Path, url: str) -> Path:
    """A config with zero retention for finished jobs, a short lease and a file audit log."""
    path = tmp_path / "janitor.toml"
    path.write_text(
        f'[redis]\nurl = "{url}"\n[retention]\nfinished = "0s"\n'
        f'[daemon]\nlease_ttl = "3s"\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    )
    return path


def start_janitor(cfg: Path) -> subprocess.Popen[bytes]:
    """Start ``janitor run --once --task expire_jobs`` as a process; its stderr goes next to the config."""
    with (cfg.parent / "janitor.err").open("ab") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "janitor",
                "run",
                "--once",
                "--task",
                "expire_jobs",
                "-c",
                str(cfg),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def deleted_in_audit(tmp_path: Path) -> list[str]:
    """Job ids of the job_deleted lines written so far."""
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["job_id"] for line in lines if line["event"] == "job_deleted"]


def assert_each_job_whole_or_gone(
    client: redis.Redis, ids: list[str], queue: str
) -> int:
    """Every job is either complete (hash, registry entry, result) or gone entirely; return how many are gone."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.exists(KEYS.job(job_id))
        pipe.zscore(KEYS.finished(queue), job_id)
        pipe.exists(KEYS.results(job_id))
    replies = pipe.execute()
    gone = 0
    for index, job_id in enumerate(ids):
        hash_there, score, result_there = replies[3 * index : 3 * index + 3]
        whole = bool(hash_there) and score is not None and bool(result_there)
        absent = not hash_there and score is None and not result_there
        assert whole or absent, job_id
        gone += absent
    return gone


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_killed_janitor_leaves_no_half_deleted_job(
    tmp_path: Path, redis_server: RedisServer, r: redis.Redis
) -> None:
    """SIGKILL mid-run leaves every job whole or gone; a rerun after the lease lapses finishes the work."""
    ids = fill_finished(r, "bulk", JOBS)
    cfg = config(tmp_path, redis_server.url)
    janitor = start_janitor(cfg)
    wait_until(lambda: r.zcard(KEYS.finished("bulk")) < JOBS - 2 * BATCH_SIZE)
    janitor.send_signal(signal.SIGKILL)
    janitor.wait(timeout=10)
    gone = assert_each_job_whole_or_gone(r, ids, "bulk")
    audited = deleted_in_audit(tmp_path)
    assert 0 < gone < JOBS
    assert (
        len(audited) <= gone <= len(audited) + BATCH_SIZE
    )  # only the batch in flight may lack its lines
    wait_until(lambda: not r.exists("janitor:leader"), timeout=10)
    rerun = start_janitor(cfg)
    assert rerun.wait(timeout=120) == 0
    assert assert_each_job_whole_or_gone(r, ids, "bulk") == JOBS


def test_connections_cut_mid_batch_lose_no_audit_line(
    tmp_path: Path, redis_server: RedisServer, r: redis.Redis
) -> None:
    """CLIENT KILL of the janitor's connections during a run: every deleted job still gets exactly one line."""
    ids = fill_finished(r, "cut", JOBS)
    janitor = start_janitor(config(tmp_path, redis_server.url))
    stop = threading.Event()

    def cut_connections() -> None:
        killer = redis_server.client()
        while not stop.is_set():
            for client in cast("list[dict[str, object]]", killer.client_list()):
                if client.get("name") == "rq-janitor":
                    killer.client_kill_filter(_id=str(client["id"]))
            time.sleep(0.05)

    cutter = threading.Thread(target=cut_connections)
    cutter.start()
    try:
        code = janitor.wait(timeout=120)
    finally:
        stop.set()
        cutter.join()
    gone = assert_each_job_whole_or_gone(r, ids, "cut")
    audited = deleted_in_audit(tmp_path)
    assert len(audited) == len(set(audited)) == gone
    assert code in {0, 1}, (tmp_path / "janitor.err").read_text()


@pytest.fixture
def durable_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own that keeps its data across a restart (append-only file)."""
    server = RedisServer(
        binary=default_server_binary(),
        workdir=tmp_path / "redis",
        extra_args=("--appendonly", "yes", "--appendfsync", "always"),
    ).start()
    yield server
    server.stop()


def test_redis_restart_mid_run(tmp_path: Path, durable_server: RedisServer) -> None:
    """Redis restarting during a run neither hangs nor corrupts anything, and a rerun finishes the work."""
    client = durable_server.client()
    ids = fill_finished(client, "restart", 5_000)
    cfg = config(tmp_path, durable_server.url)
    janitor = start_janitor(cfg)
    wait_until(lambda: client.zcard(KEYS.finished("restart")) < 5_000)
    durable_server.stop()
    durable_server.start()
    assert janitor.wait(timeout=60) in {0, 1}
    client = durable_server.client()
    assert_each_job_whole_or_gone(client, ids, "restart")
    client.delete(
        "janitor:leader"
    )  # the killed run's lease would lapse in 3 s; no need to wait
    assert start_janitor(cfg).wait(timeout=60) == 0
    assert assert_each_job_whole_or_gone(client, ids, "restart") == 5_000


def test_replayed_batch_returns_the_first_reply(r: redis.Redis) -> None:
    """A write script called again with the same memo key returns the first run's reply without re-running."""
    source = "redis.call('INCR', KEYS[1]) return {1, 0, 1}"
    from janitor import scripts

    script = r.register_script(scripts.memoized(source))
    first = script(keys=["counter", "janitor:memo:x"], args=[])
    second = script(keys=["counter", "janitor:memo:x"], args=[])
    assert first == second == [1, 0, 1]
    assert r.get("counter") == b"1"
    assert run_script(r, source, [b"counter"], []) == [1, 0, 1]
    assert r.get("counter") == b"2"
    memos = list(r.scan_iter(match="janitor:memo:*"))
    assert memos == [
        b"janitor:memo:x"
    ]  # only this test's own: a call that got its reply cleans its memo


def test_lease_taken_over_mid_run_stops_writes(r: redis.Redis) -> None:
    """A janitor whose lease another janitor took writes nothing more and reports the loss."""
    import io

    from janitor.audit import AuditLog
    from janitor.config import RetentionSettings, Settings
    from janitor.engine import run_once
    from janitor.leader import Lease

    fill_finished(r, "stolen", 50)
    lease = Lease(r, "janitor:leader", 15)
    assert lease.acquire()
    r.set(
        "janitor:leader", b"another-janitor", ex=15
    )  # our lease lapsed and someone else took it
    settings = Settings(retention=RetentionSettings(finished=0))
    report = run_once(
        r,
        settings,
        AuditLog(io.StringIO()),
        dry_run=False,
        lease=lease,
        only=["expire_jobs"],
    )
    assert report.lease_lost
    assert r.zcard(KEYS.finished("stolen")) == 50
