"""Bounded, read-only reads of RQ's job collections for ``report`` and ``explain``.

A *collection* is one of a queue's places where RQ keeps job ids: the queue list or one
of its registries (``Keyspace`` method names in ``COLLECTIONS``). A small collection is
read whole; a large one is sampled: a registry's first and last entries by score plus
entries at evenly spaced ranks in between, so the oldest and the never-expiring (``+inf``
/ ``-1`` scored) entries are always among those read; a queue list from its two ends. For every
entry read, only lifecycle fields of the job hash are read (HMGET, never ``data``,
``exc_info``, ``meta`` or results), with the hash's PTTL and the number of dependents.

Nothing here writes, and nothing calls RQ's API, whose registry counts clean as a side
effect (docs/keyspace.md, "Registry cleaning by RQ").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from janitor.expiry import terminal_end
from janitor.jobs import (
    JOB_FIELDS,
    FieldError,
    JobFields,
    parse_int,
    parse_rq_time,
)
from janitor.keyspace import Keyspace

COLLECTIONS = (
    "queue",
    "started",
    "deferred",
    "scheduled",
    "finished",
    "failed",
    "canceled",
    "ready",
)
"""Where a queue's jobs are, as ``Keyspace`` method names; ``queue`` is a list, the rest sorted
sets (``ready``: RQ 3's jobs whose dependencies are done, about to be enqueued)."""

STATES: tuple[tuple[str, str], ...] = (
    ("queued", "queue"),
    ("started", "started"),
    ("deferred", "deferred"),
    ("scheduled", "scheduled"),
    ("finished", "finished"),
    ("failed", "failed"),
    ("stopped", "failed"),
    ("canceled", "canceled"),
)
"""Each job state the report shows, and the collection RQ keeps it in (stopped jobs share ``failed``)."""

TERMINAL_COLLECTIONS = ("finished", "failed", "canceled")
"""The collections ``expire_jobs`` walks."""

EXTRA_FIELDS = ("created_at", "enqueued_at", "started_at", "ttl")
"""Lifecycle fields read beyond ``jobs.JOB_FIELDS``; payload fields are never among them."""

EDGE = 5
"""Entries read at each end of a sampled collection: the oldest, and ``+inf``-scored ones."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The lifecycle fields of one job hash, parsed; ``unreadable`` says why parsing failed."""

    job_id: bytes
    exists: bool
    status: str | None = None
    origin: bytes | None = None
    created_at: float | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    last_heartbeat: float | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    ttl: int | None = None
    pttl_ms: int = -2
    """The hash's PTTL: -1 = no TTL (RQ never deletes it), -2 = no such key."""
    dependents: int = 0
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a collection: its rank, score (None for the queue list) and job."""

    rank: int
    member: bytes
    score: float | None
    job: JobInfo


def sample_ranks(total: int, budget: int, *, spread: bool = True) -> list[int]:
    """The ranks to read from a collection of ``total`` entries, at most ``budget`` of them.

    Everything when it fits; else ``EDGE`` entries at the end and the rest evenly spaced
    from the start (``spread``), or all from the start: a queue list is read from its
    ends only, where LRANGE is cheap, and its oldest jobs are at the head.
    """
    if total <= budget:
        return list(range(total))
    edge = min(EDGE, budget // 2)
    if not spread:
        return [*range(budget - edge), *range(total - edge, total)]
    middle = budget - 2 * edge
    ranks = set(range(edge)) | set(range(total - edge, total))
    span = total - 2 * edge
    ranks |= {edge + (i * span) // middle for i in range(middle)} if middle else set()
    return sorted(ranks)


def runs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Group sorted ranks into contiguous (start, stop) runs, both inclusive."""
    found: list[tuple[int, int]] = []
    for rank in ranks:
        if found and found[-1][1] == rank - 1:
            found[-1] = (found[-1][0], rank)
        else:
            found.append((rank, rank))
    return found


def read_collection(
    client: redis.Redis,
    keys: Keyspace,
    queue: bytes,
    kind: str,
    ranks: Sequence[int],
) -> list[Entry]:
    """Read the entries at ``ranks`` of one collection of ``queue``, with their jobs.

    One LRANGE / ZRANGE per contiguous run of ranks, so a collection read whole costs
    one command.
    """
    key = cast("bytes", getattr(keys, kind)(queue))
    pipe = client.pipeline(transaction=False)
    spans = runs(ranks)
    for start, stop in spans:
        if kind == "queue":
            pipe.lrange(key, start, stop)
        else:
            pipe.zrange(key, start, stop, withscores=True)
    found: list[tuple[int, bytes, float | None]] = []
    for (start, _), reply in zip(
        spans, pipe.execute(raise_on_error=False), strict=True
    ):
        for offset, item in enumerate(reply if isinstance(reply, list) else []):
            if isinstance(item, bytes):
                found.append((start + offset, item, None))
            else:
                member, score = cast("tuple[bytes, float]", item)
                found.append((start + offset, member, float(score)))
    members = [member for _, member, _ in found]
    job_ids = started_job_ids(client, keys, members) if kind == "started" else members
    jobs = read_jobs(client, keys, job_ids)
    return [
        Entry(rank, member, score, job)
        for (rank, member, score), job in zip(found, jobs, strict=True)
    ]


def started_job_ids(
    client: redis.Redis, keys: Keyspace, members: Sequence[bytes]
) -> list[bytes]:
    """The job ids of started-registry members: ``<id>`` (RQ 1) or ``<id>:<exec>`` (RQ 2+).

    RQ 1 ids may contain ``:``, so a member is split only when no job hash exists
    under the whole member (as recover_abandoned decides).
    """
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.exists(keys.job(member))
    whole = pipe.execute(raise_on_error=False)
    return [
        member.rpartition(b":")[0] if b":" in member and not exists else member
        for member, exists in zip(members, whole, strict=True)
    ]


def read_jobs(
    client: redis.Redis, keys: Keyspace, job_ids: Sequence[bytes]
) -> list[JobInfo]:
    """Read the lifecycle fields, PTTL and dependents count of each job, pipelined."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), [*JOB_FIELDS, *EXTRA_FIELDS])
        pipe.pttl(keys.job(job_id))
        pipe.scard(keys.dependents(job_id))
    replies = pipe.execute(raise_on_error=False)
    return [
        parse_job(job_id, *replies[3 * index : 3 * index + 3])
        for index, job_id in enumerate(job_ids)
    ]


def parse_job(
    job_id: bytes, fields: object, pttl: object, dependents: object
) -> JobInfo:
    """Build a JobInfo from the HMGET, PTTL and SCARD replies (errors: wrong key types)."""
    if not isinstance(fields, list):
        return JobInfo(job_id, exists=False, unreadable="job key has the wrong type")
    raw = cast("list[bytes | None]", fields)
    pttl_ms = pttl if isinstance(pttl, int) else -2
    children = dependents if isinstance(dependents, int) else 0
    job = JobFields.from_reply(job_id, raw[: len(JOB_FIELDS)])
    if not job.exists:
        return JobInfo(job_id, exists=False, pttl_ms=pttl_ms, dependents=children)
    extra = dict(zip(EXTRA_FIELDS, raw[len(JOB_FIELDS) :], strict=True))
    try:
        return JobInfo(
            job_id,
            exists=True,
            status=job.status,
            origin=job.raw_origin,
            created_at=parse_rq_time(extra["created_at"]),
            enqueued_at=parse_rq_time(extra["enqueued_at"]),
            started_at=parse_rq_time(extra["started_at"]),
            ended_at=job.ended_at,
            last_heartbeat=job.last_heartbeat,
            result_ttl=job.result_ttl,
            failure_ttl=job.failure_ttl,
            ttl=parse_int(extra["ttl"]),
            pttl_ms=pttl_ms,
            dependents=children,
        )
    except FieldError as err:
        return JobInfo(
            job_id,
            exists=True,
            pttl_ms=pttl_ms,
            dependents=children,
            unreadable=str(err),
        )


def since(state: str, kind: str, score: float | None, job: JobInfo) -> float | None:
    """The moment a job's age in ``state`` counts from: enqueue, start, creation or end."""
    if kind in TERMINAL_COLLECTIONS:
        return terminal_end(kind, score, job)
    if state == "queued":
        return job.enqueued_at or job.created_at
    if state == "started":
        return job.started_at
    return job.created_at or job.enqueued_at
