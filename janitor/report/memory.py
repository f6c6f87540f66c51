"""The report's memory estimate per queue family, from sampled ``MEMORY USAGE``.

A family groups queues whose names differ only in a trailing id (actinia's per-job
queues, ``job_queue_resource_id-<uuid>``). Per family, ``MEMORY USAGE`` (the server's
own estimate, sampling 5 elements of large keys) is read for some of its queue-level keys
(list and registries) and for some of its jobs (hash plus result stream), and each mean
is multiplied by the family's number of such keys and jobs. Always an estimate; the
number of keys measured is in the output. ``MEMORY USAGE`` does not touch a key's LRU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import chain, zip_longest
from typing import Any

from janitor.errors import ConfigError
from janitor.memory import budget_bytes, read_usage, target
from janitor.report.queues import QueueReport, Scope

MEMORY_BUDGET = 5_000
"""``MEMORY USAGE`` calls per report at most."""
MIN_PER_FAMILY = 8
"""Calls per family at least, however many families there are."""
METHOD = (
    "mean MEMORY USAGE of sampled queue-level keys x their number, plus mean MEMORY USAGE "
    "of sampled job hashes and their result streams x the number of jobs"
)


def _round_robin(lists: Sequence[Sequence[bytes]]) -> Iterator[bytes]:
    """Interleave the lists, so a sample takes a little from every queue."""
    return (
        item for item in chain.from_iterable(zip_longest(*lists)) if item is not None
    )


def budget(scope: Scope, families: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``memory.budget`` object: used memory against ``[memory] budget``, and what it would take now.

    ``jobs``/``bytes`` estimate what the memory pass of ``expire_jobs`` would delete now
    to get under its target: the bytes over it, and as many jobs of the families' mean
    size (an estimate, like the families').
    """
    usage = read_usage(scope.client)
    try:
        limit = budget_bytes(scope.settings.memory, usage.maxmemory)
    except ConfigError as err:
        return {"used_memory": usage.used, "budget": None, "error": str(err)}
    if limit is None:
        return {"used_memory": usage.used, "budget": None}
    goal = target(limit)
    over = max(0, usage.used - goal) if usage.used > limit else 0
    jobs = sum(int(row["jobs"]) for row in families)
    size = sum(int(row["bytes"]) for row in families)
    mean = size / jobs if jobs else 0.0
    return {
        "used_memory": usage.used,
        "budget": limit,
        "target": goal,
        "over": usage.used > limit,
        "keep_for_s": scope.settings.memory.keep_for,
        "would_take": {
            "bytes": over,
            "jobs": math.ceil(over / mean) if over and mean else 0,
        },
    }


def memory(scope: Scope, queues: Sequence[QueueReport]) -> dict[str, Any]:
    """The report's ``memory`` object (docs/report.md)."""
    found = _families(scope, queues)
    found["budget"] = budget(scope, found["families"])
    return found


def _families(scope: Scope, queues: Sequence[QueueReport]) -> dict[str, Any]:
    """The per-family estimate part of ``memory``."""
    families: dict[str, list[QueueReport]] = {}
    for queue in queues:
        families.setdefault(queue.family, []).append(queue)
    per_family = max(MIN_PER_FAMILY, MEMORY_BUDGET // max(len(families), 1))
    rows = []
    for family, members in sorted(families.items()):
        row = _family(scope, family, members, per_family)
        if row is None:
            return {
                "estimate": True,
                "available": False,
                "method": METHOD,
                "families": [],
            }
        rows.append(row)
    return {"estimate": True, "available": True, "method": METHOD, "families": rows}


def _family(
    scope: Scope, family: str, members: Sequence[QueueReport], calls: int
) -> dict[str, Any] | None:
    """One family's estimate, or None when the server refuses ``MEMORY USAGE``."""
    keys = scope.keys
    queue_keys = [
        [getattr(keys, kind)(q.name) for kind, size in q.totals.items() if size]
        for q in members
    ]
    n_queue_keys = sum(len(k) for k in queue_keys)
    n_jobs = sum(row.count for q in members for row in q.rows)
    sample_queue_keys = list(_round_robin(queue_keys))[: calls // 2]
    sample_jobs = list(_round_robin([q.job_ids for q in members]))[: calls // 4]
    pipe = scope.client.pipeline(transaction=False)
    for key in sample_queue_keys:
        pipe.memory_usage(key)
    for job_id in sample_jobs:
        pipe.memory_usage(keys.job(job_id))
        pipe.memory_usage(keys.results(job_id))
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(reply, Exception) for reply in replies):
        return None
    sizes = [reply or 0 for reply in replies]
    queue_part = sizes[: len(sample_queue_keys)]
    job_part = sizes[len(sample_queue_keys) :]
    queue_bytes = sum(queue_part) / len(queue_part) * n_queue_keys if queue_part else 0
    job_bytes = sum(job_part) / len(sample_jobs) * n_jobs if sample_jobs else 0
    return {
        "family": family,
        "queues": len(members),
        "jobs": n_jobs,
        "bytes": round(queue_bytes + job_bytes),
        "sampled_keys": len(replies),
    }
