"""``janitor demo``: a throwaway Redis with real RQ state, cleaned once, shown before and after."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import click
import redis

from janitor.audit import AuditLog
from janitor.config import RetentionRule, RetentionSettings, Settings
from janitor.demo_jobs import import_dataset, render_map, resize_image
from janitor.engine import run_once
from janitor.errors import EXIT_OK, JanitorError
from janitor.keyspace import Keyspace, iter_queue_names, to_text
from janitor.localserver import RedisServer, first_server_binary

DAY = 86_400
FAST_FORWARD_S = 8 * DAY
WORKER_TIMEOUT_S = 120
COLUMNS = (
    "queued",
    "deferred",
    "scheduled",
    "started",
    "finished",
    "failed",
    "canceled",
)


class DemoError(JanitorError):
    """Raised when the demo cannot set up its throwaway server or its RQ state."""


def run_demo(*, keep: bool = False) -> int:
    """Run the whole demo and return the exit code."""
    binary = first_server_binary()
    if binary is None:
        msg = "no redis-server or valkey-server found; ./scripts/demo installs one"
        raise DemoError(msg)
    with tempfile.TemporaryDirectory(prefix="janitor-demo-") as workdir:
        server = RedisServer(binary=binary, workdir=Path(workdir)).start()
        try:
            _show(server, binary)
        finally:
            if keep:
                click.echo(
                    f"\nThe server keeps running at {server.url} (pid {server.process and server.process.pid})."
                )
            else:
                server.stop()
    return EXIT_OK


def _show(server: RedisServer, binary: Path) -> None:
    client = server.client()
    click.secho(
        f"A throwaway {server.version()} server from {binary} on port {server.port}.",
        bold=True,
    )
    click.echo("Filling it with real RQ state: a real `rq worker` runs real jobs ...")
    per_job = _fill(client, server.url)
    doomed = _kill_a_worker_mid_job(client, server.url)
    _table(client, "Before")
    settings = Settings(
        retention=RetentionSettings(
            rules=(
                RetentionRule(
                    index=0,
                    queues=("job_queue_resource_id-*",),
                    ages={"finished": 3600},
                ),
            )
        )
    )
    click.echo(
        "\nThe janitor runs with its default policy (finished 1d, failed 30d, canceled 1d) plus one\n"
        "rule for actinia-style per_job queues (finished 1h). Its clock is passed in, so the demo\n"
        "runs it as if 8 days had gone by, and once more two hours later, as cron would:\n"
        "    janitor run --once\n"
    )
    first = _pass(client, settings, FAST_FORWARD_S)
    click.echo("Audit log of the first pass (JSON lines; the first three):")
    for line in first[:3]:
        click.echo(f"    {line}")
    click.echo(f"    ... {len(first) - 3} more")
    second = _pass(client, settings, FAST_FORWARD_S + 2 * 3600)
    for title, lines in (("first pass", first), ("second pass", second)):
        counts = Counter(json.loads(line)["event"] for line in lines)
        counts.pop("run_finished", None)
        summary = (
            ", ".join(f"{n} {event}" for event, n in sorted(counts.items()))
            or "nothing"
        )
        click.secho(f"{title}: {summary}", fg="green")
    pruned = sum(json.loads(line)["event"] == "queue_pruned" for line in second)
    _table(client, "After")
    click.echo(
        "\nFinished and canceled jobs older than their retention are gone with every key they had\n"
        "(result streams, dependents, executions); the failed ones wait for their 30 days; the\n"
        "queued, deferred and scheduled jobs were never touched. The killed worker "
        f"{doomed!r} left\nrq:workers on the first pass; its job, confirmed abandoned on the second, "
        "is now failed.\n"
        f"{pruned} drained queues ({len(per_job)} per_job ones among them) left rq:queues after an hour of grace.\n"
        "The app's own key myapp:session:42 was never written: the janitor touches RQ's keys only."
    )


def _pass(client: redis.Redis, settings: Settings, ahead_s: float) -> list[str]:
    """One run of every task with the clock ``ahead_s`` ahead; its audit lines."""
    stream = io.StringIO()
    run_once(
        client,
        settings,
        AuditLog(stream),
        dry_run=False,
        now=lambda: time.time() + ahead_s,
    )
    return stream.getvalue().splitlines()


def _kill_a_worker_mid_job(client: redis.Redis, url: str) -> str:
    """Start a real worker on a long job and SIGKILL it, as an OOM kill would; return its name."""
    from rq import Queue

    job = Queue("imports", connection=client).enqueue(render_map, "world.tif", 600)
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "-w",
        "rq.worker.SimpleWorker",
        "--name",
        name,
        "--url",
        url,
        "imports",
    ]
    worker = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while client.hget(Keyspace().job(job.id), "status") != b"started":
        if time.monotonic() > deadline:
            worker.kill()
            msg = "the demo's worker did not start its job"
            raise DemoError(msg)
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # Its hash and execution expire 4 minutes after the kill; expire them now to spare the wait.
    keys = Keyspace()
    client.delete(
        keys.worker(name), *client.scan_iter(match=keys.glob("execution", job.id, "*"))
    )
    click.echo(
        f"... and a worker ({name}) was killed with SIGKILL in the middle of a job."
    )
    return name


def _fill(client: redis.Redis, url: str) -> list[str]:
    """Create real RQ state with RQ's own API and a real worker; return the per_job queue names."""
    from rq import Queue

    default = Queue("default", connection=client)
    reports = Queue("reports", connection=client)
    per_job = [f"job_queue_resource_id-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for number in range(12):
        default.enqueue(resize_image, f"photo-{number}.png")
    for number in range(4):
        default.enqueue(import_dataset, f"dataset-{number}")
    for number in range(4):
        reports.enqueue(resize_image, f"report-{number}.pdf", result_ttl=-1)
    for name in per_job:
        Queue(name, connection=client).enqueue(resize_image, f"{name}.tif")
    _work(url, ["default", "reports", *per_job])
    for number in range(2):
        default.enqueue(resize_image, f"cancelled-{number}.png").cancel()
    waiting = default.enqueue(resize_image, "queued-1.png")
    default.enqueue(resize_image, "queued-2.png")
    default.enqueue(resize_image, "deferred.png", depends_on=waiting)
    default.enqueue_in(timedelta(hours=1), resize_image, "later.png")
    client.set("myapp:session:42", b"an app's own key, never touched")
    return per_job


def _work(url: str, queues: Sequence[str]) -> None:
    """Run a real `rq worker --burst` process over the queues."""
    command = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "--url",
        url,
        *queues,
    ]
    result = subprocess.run(  # noqa: S603 - our own argument list, no shell
        command, capture_output=True, timeout=WORKER_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        msg = f"the demo's rq worker failed: {result.stderr.decode(errors='replace')[-500:]}"
        raise DemoError(msg)


def _table(client: redis.Redis, title: str) -> None:
    keys = Keyspace()
    click.secho(f"\n{title}: {client.dbsize()} keys in the database", bold=True)
    click.echo(f"    {'queue':<36}" + "".join(f"{c:>10}" for c in COLUMNS))
    for queue in sorted(iter_queue_names(client, keys)):
        counts = [
            client.llen(keys.queue(queue)),
            client.zcard(keys.deferred(queue)),
            client.zcard(keys.scheduled(queue)),
            client.zcard(keys.started(queue)),
            client.zcard(keys.finished(queue)),
            client.zcard(keys.failed(queue)),
            client.zcard(keys.canceled(queue)),
        ]
        click.echo(f"    {to_text(queue):<36}" + "".join(f"{n:>10}" for n in counts))
