"""Run tasks through the real engine in a test, and read back the audit lines it wrote."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any

import redis

from janitor.actions import Action, Skip
from janitor.audit import AuditLog
from janitor.config import Settings
from janitor.engine import RunReport, run_once


def run_tasks(  # noqa: PLR0913 - the engine's own keyword options, passed through
    client: redis.Redis,
    settings: Settings | None = None,
    *,
    only: Sequence[str] = (),
    now: float | None = None,
    dry_run: bool = False,
    must_succeed: bool = True,
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run the tasks once (all, or ``only``) at ``now`` (default: the real time).

    Returns the report and the audit lines; with ``must_succeed`` no task may fail.
    """
    stream = io.StringIO()
    clock = time.time if now is None else (lambda: now)
    report = run_once(
        client,
        settings or Settings(),
        AuditLog(stream),
        dry_run=dry_run,
        only=list(only),
        now=clock,
    )
    if must_succeed:
        assert report.failed_tasks == (), report
    return report, [json.loads(line) for line in stream.getvalue().splitlines()]


def apply_in_order(
    client: redis.Redis, actions: Sequence[Action | Skip], now: float
) -> list[bool]:
    """Apply each planned write on its own, in plan order, as the engine would; return the outcomes."""
    done = []
    for action in actions:
        if isinstance(action, Action) and action.write is not None:
            done += type(action.write).apply_batch(client, [action.write], None, now)
    return done
