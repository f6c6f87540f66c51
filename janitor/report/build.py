"""``janitor report``: a read-only, bounded overview of RQ's data and when each part gets deleted.

Per queue and state: counts, the oldest age, when RQ's own TTLs delete the jobs, when the
janitor's policy does, and the janitor's backlog (``janitor.report.queues``); leaks
(``janitor.report.leaks``); memory per queue family (``janitor.report.memory``); doctor
findings (``janitor.report.doctor``). Nothing is written and no RQ API is called: RQ's
registry counts clean as a side effect. The JSON shape is documented in docs/report.md
and versioned by ``SCHEMA``; ``janitor.report.text`` renders it for a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any, cast

import redis

from janitor.config import Settings
from janitor.connection import server_info
from janitor.keyspace import to_text
from janitor.report.doctor import findings
from janitor.report.leaks import (
    SCAN_CALLS,
    SCAN_COUNT,
    ScanResult,
    Workers,
    check_keys,
    leaks,
    read_workers,
    scan_keys,
)
from janitor.report.memory import memory
from janitor.report.queues import Limits, QueueReport, Scope, queue_names, read_queues
from janitor.report.ratelimits import rate_limits
from janitor.report.read import TERMINAL_COLLECTIONS
from janitor.unlisted import confirm

SCHEMA = "rq-janitor.report/1"
"""The ``schema`` value of ``report --json``; changed on any incompatible change."""
DOCS = "docs/report.md"
"""Where "when is a job deleted?" is answered, per state and RQ version."""

__all__ = ["DOCS", "SCHEMA", "Limits", "backlog", "build_report"]


def build_report(
    client: redis.Redis,
    settings: Settings,
    now: float,
    *,
    queues: Sequence[str] = (),
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Read RQ's data (bounded, read-only) and return the report as documented in docs/report.md.

    Args:
        client: a bytes client.
        settings: the effective settings (key prefix, retention, allowlist, dead_after).
        now: the time ages and deletion times are measured against (epoch seconds).
        queues: globs; only matching queues are reported (all when empty).
        limits: bounds on the work done; the defaults suit millions of keys.
    """
    scope = Scope.build(client, settings, now, limits or Limits())
    chosen = queue_names(client, scope.keys, queues, scope.limits.max_queues)
    scan = scan_keys(scope)
    unlisted = _unlisted(scope, scan, queues)
    reports = read_queues(scope, chosen.names, unlisted=unlisted)
    workers = read_workers(scope, reports)
    check_keys(scope, scan, workers.listed)
    server = server_info(client)
    exact = (
        all(q.exact for q in reports)
        and workers.exact
        and scan.complete
        and chosen.complete
    )
    return {
        "schema": SCHEMA,
        "docs": DOCS,
        "generated_at": round(now, 3),
        "key_prefix": settings.rq.key_prefix,
        "server": server,
        "sampling": {
            "exact": exact,
            "queues_listed": chosen.listed,
            "queues_matching": chosen.matching,
            "queues_reported": len(chosen.names),
            "queues_complete": chosen.complete,
            "max_queues": scope.limits.max_queues,
            "read_budget": scope.limits.read_budget,
            "per_collection_max": scope.limits.per_collection_max,
            "workers_exact": workers.exact,
            "scan": {
                "keys_seen": scan.keys_seen,
                "calls": scan.calls,
                "max_calls": SCAN_CALLS,
                "count": SCAN_COUNT,
                "complete": scan.complete,
            },
        },
        "queues": [_queue_json(q, workers) for q in reports],
        "leaks": leaks(scope, reports, workers, scan),
        "memory": memory(scope, reports),
        "rate_limits": rate_limits(scope),
        "findings": findings(scope, server, reports, workers),
    }


def _unlisted(scope: Scope, scan: ScanResult, globs: Sequence[str]) -> list[bytes]:
    """Unlisted queues the SCAN saw or the janitor recorded, matching ``globs`` (all when none)."""
    recorded = cast(
        "list[bytes]", scope.client.zrange(scope.keys.unlisted_record(), 0, -1)
    )
    names = confirm(scope.client, scope.keys, [*scan.queue_names, *recorded])
    return [
        name
        for name in names
        if not globs or any(fnmatchcase(to_text(name), g) for g in globs)
    ][: scope.limits.max_queues]


def _queue_json(queue: QueueReport, workers: Workers) -> dict[str, Any]:
    return {
        "name": queue.name,
        "listed": queue.listed,
        "family": queue.family,
        "allowed": queue.allowed,
        "sizes": queue.totals,
        "served": queue.name in workers.served,
        "exact": queue.exact,
        "states": [row.to_json() for row in queue.rows],
    }


def backlog(
    client: redis.Redis, settings: Settings, now: float
) -> dict[tuple[str, str], float]:
    """Per (queue, state), the age in seconds of the oldest job past its janitor retention but not deleted.

    "Past retention" is what ``expire_jobs`` would delete now: older than the age rule,
    or beyond ``keep_last``; jobs it keeps (dependents waiting, origin mismatch) are not
    counted. Covers the terminal states of the queues in ``[rq] queues`` with the
    report's bounds: a large registry is sampled (its oldest entries always included),
    so the age may be underestimated there. Pairs without such a job are left out.
    Meant for a Prometheus gauge.
    """
    scope = Scope.build(client, settings, now, Limits())
    # The allowlist as the globs: the janitor deletes nothing outside it.
    chosen = queue_names(
        client, scope.keys, settings.rq.queues, scope.limits.max_queues
    )
    return {
        (queue.name, row.state): row.backlog_oldest_age_s
        for queue in read_queues(scope, chosen.names, TERMINAL_COLLECTIONS)
        for row in queue.rows
        if row.backlog_oldest_age_s is not None
    }
