"""The report's doctor findings: risky settings seen in the data or the server, each with what to do.

Findings (docs/report.md lists them): jobs enqueued with ``result_ttl=-1``, failed jobs
relying on RQ's one-year default ``failure_ttl``, a ``maxmemory-policy`` other than
``noeviction``, no ``maxmemory``, and queues whose workers have not cleaned them for
longer than RQ's maintenance interval, and ``rq:suspended`` without a TTL (every worker
paused until someone resumes them), and scheduled jobs long overdue on a queue whose
scheduler lock nobody holds (no ``--with-scheduler`` worker). The maintenance one is measured, not guessed: RQ's
cleaning removes every registry entry whose score (an expiry or a heartbeat deadline)
has passed, so the oldest such entry tells how long nobody cleaned the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from janitor.config.values import format_duration
from janitor.keyspace import to_text
from janitor.report.leaks import Workers
from janitor.report.queues import QueueReport, Scope

MAINTENANCE_INTERVAL_S = 600
"""RQ's default ``maintenance_interval`` (hard-coded before 1.14)."""
IDLE_DEQUEUE_S = 405
"""An idle worker checks whether maintenance is due only between its blocking dequeues (``worker_ttl - 15``)."""
OVERDUE_AFTER_S = MAINTENANCE_INTERVAL_S + IDLE_DEQUEUE_S
"""A served queue with entries expired longer than this was not cleaned when RQ should have."""
SCHEDULED_OVERDUE_S = 300
"""A scheduled job due longer ago than this, on a queue whose scheduler lock nobody holds,
waits for a scheduler that is not running (RQ's scheduler polls every second)."""
CLEANED_REGISTRIES = ("started", "finished", "failed")
"""The registries RQ's ``clean_registries`` prunes by score."""


def _finding(  # noqa: PLR0913 - the documented fields of one finding
    code: str,
    severity: str,
    message: str,
    advice: str,
    *,
    count: int | None = None,
    queues: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "code": code,
        "severity": severity,
        "message": message,
        "advice": advice,
        "count": count,
        "queues": list(queues),
    }


def findings(
    scope: Scope,
    server: dict[str, str],
    queues: Sequence[QueueReport],
    workers: Workers,
) -> list[dict[str, Any]]:
    """The report's ``findings`` list, most important first."""
    return [
        *_suspension_findings(scope),
        *_server_findings(server, holds_rq_data=bool(queues)),
        *_ttl_findings(queues),
        *_maintenance_findings(scope, queues, workers),
        *_scheduler_findings(scope, queues),
    ]


def _suspension_findings(scope: Scope) -> list[dict[str, Any]]:
    """``rq suspend`` without ``--duration`` pauses every worker until ``rq resume``."""
    if scope.client.pttl(scope.keys.suspended()) != -1:
        return []  # not suspended, or only for a while (-2: no key; >= 0: a TTL)
    return [
        _finding(
            "suspended_forever",
            "warning",
            f"{to_text(scope.keys.suspended())} exists without a TTL: every RQ worker on this "
            "server has paused and stays paused (rq suspend without --duration); no job runs "
            "and no worker does its maintenance",
            "Run `rq resume` once the reason for the pause is gone, or suspend with "
            "`--duration` so that it ends by itself.",
        )
    ]


def _server_findings(
    server: dict[str, str], *, holds_rq_data: bool
) -> list[dict[str, Any]]:
    found = []
    policy, maxmemory = server.get("maxmemory_policy"), server.get("maxmemory")
    if policy not in (None, "unknown", "noeviction"):
        found.append(
            _finding(
                "maxmemory_policy",
                # eviction loses queued jobs: critical where there are any to lose
                "critical" if holds_rq_data else "warning",
                f"maxmemory-policy is {policy}: under memory pressure Redis evicts RQ's keys "
                "(job hashes with a TTL first under volatile-*), leaving registries that "
                "point at missing jobs (rq#1955)",
                "Use maxmemory-policy noeviction for RQ data: enqueues then fail loudly "
                "instead of jobs vanishing.",
            )
        )
    if maxmemory == "0":
        found.append(
            _finding(
                "no_maxmemory",
                "warning",
                "maxmemory is 0: Redis grows until the machine runs out of memory",
                "Set maxmemory (with noeviction), alert on used_memory, and keep RQ's "
                "data bounded with the janitor's [retention].",
            )
        )
    if "unknown" in (policy, maxmemory):
        found.append(
            _finding(
                "server_settings_unknown",
                "info",
                "the server did not tell maxmemory / maxmemory-policy (CONFIG GET refused?)",
                "Check them in your provider's console.",
            )
        )
    return found


def _ttl_findings(queues: Sequence[QueueReport]) -> list[dict[str, Any]]:
    found = []
    sampled = "" if all(q.exact for q in queues) else " (among the jobs read)"
    forever = {q.name: sum(r.result_ttl_forever for r in q.rows) for q in queues}
    if total := sum(forever.values()):
        found.append(
            _finding(
                "result_ttl_forever",
                "warning",
                f"{total} job(s){sampled} were enqueued with result_ttl=-1: RQ keeps them "
                "forever once they finish",
                "Pass a finite result_ttl to enqueue; until then expire_jobs deletes them "
                "after [retention] finished.",
                count=total,
                queues=[name for name, n in forever.items() if n],
            )
        )
    default = {q.name: sum(r.failure_ttl_default for r in q.rows) for q in queues}
    if total := sum(default.values()):
        found.append(
            _finding(
                "failure_ttl_default",
                "warning",
                f"{total} failed or stopped job(s){sampled} rely on RQ's default failure_ttl "
                "of 1 year, and their failure result streams never expire",
                "Pass failure_ttl to enqueue; until then expire_jobs deletes them (and "
                "their streams) after [retention] failed / stopped.",
                count=total,
                queues=[name for name, n in default.items() if n],
            )
        )
    return found


def _maintenance_findings(
    scope: Scope, queues: Sequence[QueueReport], workers: Workers
) -> list[dict[str, Any]]:
    """Served queues whose oldest passed registry score is older than RQ's interval allows."""
    served = [q.name for q in queues if q.name in workers.served]
    keys, pipe = scope.keys, scope.client.pipeline(transaction=False)
    for name in served:
        for kind in CLEANED_REGISTRIES:
            key = getattr(keys, kind)(name)
            pipe.zrangebyscore(key, 0, scope.now, start=0, num=1, withscores=True)
        pipe.pttl(keys.cleaning_marker(name))
    replies = pipe.execute(raise_on_error=False)
    width = len(CLEANED_REGISTRIES) + 1
    overdue: list[tuple[str, float, int]] = []
    for index, name in enumerate(served):
        *oldest, marker = replies[width * index : width * (index + 1)]
        scores = [r[0][1] for r in oldest if isinstance(r, list) and r]
        if scores and scope.now - min(scores) > OVERDUE_AFTER_S:
            ttl = marker if isinstance(marker, int) else -2
            overdue.append((name, scope.now - min(scores), ttl))
    if not overdue:
        return []
    details = "; ".join(
        f"{name}: not cleaned for {format_duration(int(stale))}"
        + (f", maintenance lock held ({ttl // 1000}s left)" if ttl > 0 else "")
        for name, stale, ttl in overdue[:10]
    )
    return [
        _finding(
            "maintenance_overdue",
            "warning",
            f"workers serve {len(overdue)} queue(s) but have not cleaned them for longer "
            f"than RQ's maintenance interval ({MAINTENANCE_INTERVAL_S}s, plus up to "
            f"{IDLE_DEQUEUE_S}s while idle): {details}",
            "A worker cleans its queues only between jobs, at most every "
            "--maintenance-interval; long jobs, a crashed cleaning that left "
            "rq:clean_registries:<queue> set, or RQ < 1.16 (lock never released) delay "
            "it. recover_abandoned and clean_registries do this work independently.",
            count=len(overdue),
            queues=[name for name, _, _ in overdue],
        )
    ]


def _scheduler_findings(
    scope: Scope, queues: Sequence[QueueReport]
) -> list[dict[str, Any]]:
    """Queues with scheduled jobs long overdue and nobody holding ``rq:scheduler-lock:<q>``."""
    waiting = [q.name for q in queues if q.totals.get("scheduled")]
    keys, pipe = scope.keys, scope.client.pipeline(transaction=False)
    for name in waiting:
        pipe.zrange(keys.scheduled(name), 0, 0, withscores=True)
        pipe.exists(keys.scheduler_lock(name))
    replies = pipe.execute(raise_on_error=False)
    overdue: list[tuple[str, float]] = []
    for index, name in enumerate(waiting):
        first, locked = replies[2 * index : 2 * index + 2]
        if not isinstance(first, list) or not first or locked:
            continue
        late = scope.now - float(first[0][1])
        if late > SCHEDULED_OVERDUE_S:
            overdue.append((name, late))
    if not overdue:
        return []
    details = "; ".join(
        f"{name}: due {format_duration(int(late))} ago" for name, late in overdue[:10]
    )
    return [
        _finding(
            "scheduled_overdue",
            "warning",
            f"{len(overdue)} queue(s) hold scheduled jobs long past due and no scheduler "
            f"holds their rq:scheduler-lock: {details}",
            "Only a worker started with --with-scheduler (or `rq scheduler` on RQ < 1.2) "
            "moves due scheduled jobs to their queue; run one for these queues. The "
            "janitor never enqueues scheduled jobs.",
            count=len(overdue),
            queues=[name for name, _ in overdue],
        )
    ]
