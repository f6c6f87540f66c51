"""The ``janitor`` command line: thin commands that load settings, call one function, map exit codes."""

from __future__ import annotations

import functools
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import click

from janitor import __version__
from janitor.audit import AuditLog, configure_logging
from janitor.config import Settings, load_settings, render_settings
from janitor.connection import connect, server_info
from janitor.engine import RunReport, run_once
from janitor.errors import (
    EXIT_LEASE_HELD,
    EXIT_OK,
    EXIT_TASK_FAILED,
    JanitorError,
    LeaseHeld,
)
from janitor.keyspace import Keyspace, detect_layout, iter_queue_names
from janitor.leader import Lease
from janitor.memory import budget_bytes, read_usage
from janitor.tasks import TASKS

P = ParamSpec("P")
R = TypeVar("R")

LOG_FORMATS = ("json", "console", "auto")


@dataclass(frozen=True)
class GlobalOptions:
    """The options every command accepts, before or after the command name."""

    config: str | None = None
    redis_url: str | None = None
    log_format: str | None = None

    def over(self, other: GlobalOptions) -> GlobalOptions:
        """These options, with any value ``other`` sets taking precedence."""
        return GlobalOptions(
            config=other.config or self.config,
            redis_url=other.redis_url or self.redis_url,
            log_format=other.log_format or self.log_format,
        )

    def load(self) -> Settings:
        """Load the effective settings (defaults < actinia < file < env < flags)."""
        return load_settings(
            config_path=self.config,
            env=os.environ,
            redis_url=self.redis_url,
            log_format=self.log_format,
        )


def global_options(func: Callable[P, R]) -> Callable[P, R]:
    """Add ``-c/--config``, ``--redis-url`` and ``--log-format`` to a command or the group."""
    decorators = [
        click.option(
            "-c",
            "--config",
            "config",
            type=click.Path(dir_okay=False),
            help="TOML config file. [env: JANITOR_CONFIG]",
        ),
        click.option(
            "--redis-url",
            "redis_url",
            help="Redis URL, beats the config file. [env: JANITOR_REDIS_URL]",
        ),
        click.option(
            "--log-format",
            "log_format",
            type=click.Choice(LOG_FORMATS),
            help="Operational log format on stderr; auto = console on a terminal, else JSON.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _options(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> GlobalOptions:
    group = ctx.find_object(GlobalOptions) or GlobalOptions()
    return group.over(GlobalOptions(config, redis_url, log_format))


def _load(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> Settings:
    """The effective settings, with the operational log set up as they say."""
    settings = _options(ctx, config, redis_url, log_format).load()
    configure_logging(settings.log_format)
    return settings


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn the janitor's errors into a message on stderr and their exit code."""
    try:
        yield
    except JanitorError as err:
        click.echo(f"janitor: {err}", err=True)
        sys.exit(err.exit_code)


def _handled(func: Callable[P, int]) -> Callable[P, None]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        with _exit_codes():
            code = func(*args, **kwargs)
        sys.exit(code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="janitor")
@global_options
@click.pass_context
def main(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> None:
    """Maintenance and garbage collection for RQ data in Redis and Valkey."""
    ctx.obj = GlobalOptions(config, redis_url, log_format)


@main.command()
@click.option(
    "--once",
    is_flag=True,
    help="Run the enabled tasks once and exit (cron, CI, by hand).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Plan and audit as usual, but write nothing to Redis.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    type=click.Choice(list(TASKS)),
    help="Run only this task (repeatable).",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="GLOB",
    help="Only queues matching GLOB (repeatable); never widens [rq] queues.",
)
@global_options
@click.pass_context
@_handled
def run(  # noqa: PLR0913 - one parameter per documented option
    ctx: click.Context,
    *,
    once: bool,
    dry_run: bool,
    tasks: tuple[str, ...],
    queues: tuple[str, ...],
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Run the maintenance tasks: once with --once, else as a daemon."""
    if not once and (dry_run or tasks or queues):
        msg = "--dry-run, --task and --queue go with --once"
        raise click.UsageError(msg, ctx)
    settings = _load(ctx, config, redis_url, log_format)
    if not once:
        from janitor.daemon import serve

        return serve(settings)
    client = connect(settings.redis)
    # a percent budget on a server without maxmemory is a config error (exit 78), now
    budget_bytes(settings.memory, read_usage(client).maxmemory)
    audit = AuditLog.open(settings.audit.path)
    lease: Lease | None = None
    try:
        if not dry_run:
            lease = Lease(client, settings.daemon.lease_key, settings.daemon.lease_ttl)
            if not lease.acquire():
                msg = f"another janitor holds the lease {settings.daemon.lease_key!r}; not writing (retry later)"
                raise LeaseHeld(msg)
        report = run_once(
            client,
            settings,
            audit,
            dry_run=dry_run,
            lease=lease,
            only=tasks,
            queues=queues,
        )
    finally:
        if lease is not None:
            lease.release()
        audit.close()
    _print_summary(report)
    if report.lease_lost:
        return EXIT_LEASE_HELD
    return EXIT_TASK_FAILED if report.failed_tasks else EXIT_OK


def _print_summary(report: RunReport) -> None:
    """One human line per task on stderr; the audit log holds the details."""
    prefix = "dry run: " if report.dry_run else ""
    for task in report.tasks:
        counts = (
            ", ".join(f"{n} {event}" for event, n in sorted(task.counts.items()))
            or "nothing to do"
        )
        outcome = f"FAILED ({task.error})" if task.error else "ok"
        skipped = f", {task.skipped} skipped (see log)" if task.skipped else ""
        click.echo(
            f"{prefix}{task.task}: {outcome}: {counts}{skipped} in {task.duration_s:.2f}s",
            err=True,
        )


@main.command()
@global_options
@click.pass_context
@_handled
def check(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Validate the config, connect, ping, and report the RQ data layout found."""
    settings = _load(ctx, config, redis_url, log_format)
    client = connect(settings.redis)
    keys = Keyspace(settings.rq.key_prefix)
    click.echo("config: ok")
    for name, value in server_info(client).items():
        click.echo(f"{name}: {value}")
    click.echo(f"rq key prefix: {settings.rq.key_prefix}")
    click.echo(f"rq data layout: {detect_layout(client, keys).value}")
    queue_count = sum(1 for _ in iter_queue_names(client, keys))
    click.echo(f"queues listed in {keys.queues().decode()}: {queue_count}")
    return EXIT_OK


@main.command(name="config")
@global_options
@click.pass_context
@_handled
def show_config(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Print the effective settings and where each came from (secrets redacted)."""
    settings = _options(ctx, config, redis_url, log_format).load()
    click.echo(render_settings(settings))
    return EXIT_OK


_JSON_HELP = "Print the documented JSON (docs/report.md) instead of tables."


@main.command(name="report")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="GLOB",
    help="Only queues matching GLOB (repeatable).",
)
@global_options
@click.pass_context
@_handled
def report_command(  # noqa: PLR0913 - one parameter per documented option
    ctx: click.Context,
    *,
    as_json: bool,
    queues: tuple[str, ...],
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Read-only: per queue and state, counts, ages, leaks, and when RQ and the janitor delete jobs."""
    import json
    import time

    from janitor.report import build_report
    from janitor.report.text import render_report

    settings = _load(ctx, config, redis_url, log_format)
    data = build_report(connect(settings.redis), settings, time.time(), queues=queues)
    click.echo(json.dumps(data, indent=2) if as_json else render_report(data))
    return EXIT_OK


@main.command(name="explain")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@global_options
@click.pass_context
@_handled
def explain_command(  # noqa: PLR0913 - one parameter per documented option
    ctx: click.Context,
    job_id: str,
    *,
    as_json: bool,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Read-only: a job's state, the rule that applies, and when RQ and the janitor delete it."""
    import json
    import time

    from janitor.report.explain import explain
    from janitor.report.text import render_explain

    settings = _load(ctx, config, redis_url, log_format)
    data = explain(connect(settings.redis), settings, job_id, time.time())
    click.echo(json.dumps(data, indent=2) if as_json else render_explain(data))
    return EXIT_OK


@main.command()
@global_options
@click.pass_context
@_handled
def healthcheck(
    ctx: click.Context,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Ask the daemon's /healthz at [http] listen (the container's HEALTHCHECK): exit 0 if it answers 200."""
    settings = _load(ctx, config, redis_url, log_format)
    url = f"http://{local_address(settings.http.listen)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTHCHECK_TIMEOUT_S) as answer:
            status = int(answer.status)
    except (OSError, ValueError) as err:
        click.echo(f"unhealthy: {url}: {err}", err=True)
        return EXIT_TASK_FAILED
    click.echo(f"healthy: {url}: {status}")
    return EXIT_OK


def local_address(listen: str) -> str:
    """``[http] listen`` as this host reaches it: a wildcard bind is asked on loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", ""):  # noqa: S104 - a bind address read, not bound
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


@main.command()
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the throwaway server running at the end and print its URL.",
)
@global_options
@click.pass_context
@_handled
def demo(
    ctx: click.Context,
    *,
    keep: bool,
    config: str | None,
    redis_url: str | None,
    log_format: str | None,
) -> int:
    """Start a throwaway Redis, fill it with real RQ state, and clean it before your eyes."""
    from janitor.demo import run_demo

    options = _options(ctx, config, redis_url, log_format)
    configure_logging(options.log_format or "auto")
    return run_demo(keep=keep)


HEALTHCHECK_TIMEOUT_S = 4
"""Inside the image's HEALTHCHECK timeout (5 s)."""

__all__ = ["main"]
