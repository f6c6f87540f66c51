"""The report's ``rate_limits``: RQ 3's concurrency limits, their held slots and waiting jobs.

RQ 3.0 keeps, per rate-limit key, ``rq:rl:<key>`` (its ``concurrency``), the ids holding a
slot (``rq:rl:<key>:allowed``) and those waiting for one (``rq:rl:<key>:rate_limited``,
oldest first); ``rq:rl-keys`` lists the keys. A slot held by a job that is neither queued
nor started (*stale*) is freed only by a worker's maintenance or the janitor's
``clean_registries``; a limit with jobs waiting while it has free slots is *starved*. Read
only: SSCAN of ``rq:rl-keys`` (at most ``MAX_KEYS``), the holders' statuses, the number of
waiting jobs and the oldest one.
"""

from __future__ import annotations

from typing import Any

from janitor.keyspace import to_text
from janitor.rate_limits import concurrency, holds_slot, limit_names
from janitor.report.queues import Scope

MAX_KEYS = 1_000
"""Rate-limit keys reported at most; ``exact`` says whether that was all."""
MAX_ALLOWED = 1_000
"""Slot holders read per limit, to count the stale ones."""


def rate_limits(scope: Scope) -> dict[str, Any]:
    """``{"count", "exact", "keys": [...]}`` as docs/report.md documents it."""
    client, keys = scope.client, scope.keys
    names = limit_names(client, keys, MAX_KEYS)
    if not names:  # Redis keeps no empty set: there are no limits
        return {"count": 0, "exact": True, "keys": []}
    count = client.scard(keys.rate_limit_keys())
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(keys.rate_limit(name), "concurrency")
        pipe.zrange(keys.rate_limit_allowed(name), 0, MAX_ALLOWED - 1)
        pipe.zcard(keys.rate_limit_waiting(name))
        pipe.zrange(keys.rate_limit_waiting(name), 0, 0, withscores=True)
    replies = pipe.execute(raise_on_error=False)
    found = []
    for index, name in enumerate(names):
        raw, held, waiting, oldest = replies[4 * index : 4 * index + 4]
        allowed = held if isinstance(held, list) else []
        most = concurrency(raw)
        waiting = waiting if isinstance(waiting, int) else 0
        stale = _stale(scope, allowed)
        first = oldest[0][1] if isinstance(oldest, list) and oldest else None
        found.append(
            {
                "key": to_text(name),
                "concurrency": most,
                "allowed": len(allowed),
                "waiting": waiting,
                "stale": stale,
                "starved": bool(waiting) and (len(allowed) - stale < (most or 0)),
                "oldest_waiting_age_s": (
                    None if first is None else round(scope.now - float(first), 3)
                ),
            }
        )
    return {"count": count, "exact": len(names) == count, "keys": found}


def _stale(scope: Scope, allowed: list[bytes]) -> int:
    """Slots held by jobs that do not hold them (``rate_limits.holds_slot``): leaked."""
    pipe = scope.client.pipeline(transaction=False)
    for job_id in allowed:
        pipe.hget(scope.keys.job(job_id), "status")
    return sum(
        1 for status in pipe.execute(raise_on_error=False) if not holds_slot(status)
    )
