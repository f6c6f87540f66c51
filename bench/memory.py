"""Benchmark: how long ``expire_jobs`` takes from 95 % of ``maxmemory`` to under a 75 % budget.

Starts its own server with ``--maxmemory`` (default 256 MB, ``noeviction``), fills it through
RQ's own ``Job.create`` / ``save`` and registries with finished and failed jobs that carry a
payload (ended a day ago, so no age rule of a year's retention takes them) up to 95 %, then
runs ``janitor run --once --task expire_jobs`` with ``[memory] budget = "75%"`` and
``keep_for = "0s"`` while another process PINGs the server. Prints the time, the jobs
deleted, ``used_memory`` before and after, and the PING latency meanwhile. See
bench/README.md, round 4.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Latency, pinging

from janitor.localserver import RedisServer, first_server_binary

PAYLOAD = "p" * 2_000


def fill(client: redis.Redis, share: float, maxmemory: int) -> int:
    """Finished and failed jobs with payloads until used_memory passes ``share``; return how many."""
    queue = Queue("backlog", connection=client)
    finished, failed = FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    made = 0
    while int(client.info("memory")["used_memory"]) < share * maxmemory:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(queue.redis_queues_keys, queue.key)
        for _ in range(1_000):
            done = made % 5 != 0
            job = Job.create(
                "janitor.demo_jobs.resize_image",
                args=(PAYLOAD,),
                connection=client,
                origin=queue.name,
                status=JobStatus.FINISHED if done else JobStatus.FAILED,
                result_ttl=-1 if done else None,
            )
            job.started_at, job.ended_at = ended, ended
            job.save(pipeline=pipe)
            if done:
                finished.add(job, ttl=-1, pipeline=pipe)
            else:
                failed.add(job, ttl=31_536_000, pipeline=pipe)
            made += 1
        pipe.execute()
    return made


def main() -> int:
    """Fill, run the janitor once, print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--maxmemory-mb", type=int, default=256)
    args = parser.parse_args()
    maxmemory = args.maxmemory_mb * 1024**2
    binary = first_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found; run ./scripts/bootstrap")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="janitor-membench-"))
    server = RedisServer(
        binary,
        workdir,
        extra_args=("--maxmemory", str(maxmemory), "--maxmemory-policy", "noeviction"),
    ).start()
    try:
        client = server.client()
        jobs = fill(client, 0.95, maxmemory)
        before = int(client.info("memory")["used_memory"])
        config = workdir / "janitor.toml"
        config.write_text(
            '[memory]\nbudget = "75%"\nkeep_for = "0s"\n'
            '[retention]\nfinished = "365d"\nfailed = "365d"\n'
            f'[audit]\npath = "{workdir / "audit.jsonl"}"\n',
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "janitor", "run", "--once", "--task"]
        command += ["expire_jobs", "-c", str(config), "--redis-url", server.url]
        with pinging(server.url) as samples:
            started = time.perf_counter()
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            _, status, usage = os.wait4(process.pid, 0)
            took = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"janitor exited with {os.waitstatus_to_exitcode(status)}")
            return 1
        after = int(client.info("memory")["used_memory"])
        deleted = sum(1 for _ in (workdir / "audit.jsonl").open() if "job_deleted" in _)
        ping = Latency.of(samples)
    finally:
        server.stop()
    mb = 1024**2
    print(f"server        {binary} with maxmemory {args.maxmemory_mb} MB, noeviction")
    print(
        f"backlog       {jobs:,} jobs, used_memory {before / mb:.1f} MB ({before / maxmemory:.0%})"
    )
    print(
        f"janitor       {took:.2f} s to {after / mb:.1f} MB ({after / maxmemory:.0%}), {deleted:,} jobs deleted"
    )
    print(
        f"PING          p99 {ping.p99_ms:.2f} ms, max {ping.max_ms:.2f} ms ({ping.count:,} pings)"
    )
    print(f"janitor RSS   peak {usage.ru_maxrss / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
