"""Dependencies between jobs: whether a deferred job can still run, and which parents a live job still needs.

RQ enqueues a deferred job only from ``Queue.enqueue_dependents`` of a parent that just
ended, and only when ``Job.dependencies_are_met`` (the same rule in 1.16, 2.x and 3.0):
the parent that ended is ``finished``, or ``failed`` and the child allows failure
(``allow_dependency_failures``, set by ``Dependency(allow_failure=True)``); a ``canceled``
or ``stopped`` parent never lets it run; every other parent whose hash still exists is
``finished`` (or ``failed`` with the same allowance); parents whose hash is gone are not
looked at. ``recover_abandoned`` (enqueue the dependents of the job it failed, as RQ's own
failure handling does) and ``report`` (deferred jobs that can never run) ask ``verdict``;
the write script re-checks the facts it was given (statuses and memberships), never the rule.

The other direction: a terminal parent that a live job still depends on. RQ runs a child
whatever became of its parent, but the child's own code often reads its parent
(``job.dependency``, ``fetch_dependencies()``, the parent's result) and fails when it is
gone (rq#2452). A child not yet enqueued is in its parent's dependents set; one already
enqueued (queued, scheduled, ready, started) has left it and is found only by its own
``dependency_ids`` field: ``read_waiting`` reads those of every live job (bounded), and
``waiting_child`` answers for one parent from both. ``expire_jobs``, ``report`` and
``explain`` keep a parent while ``waiting_child`` names one, for at most ``dependents_bound``
past its due time (``holds``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis

from janitor.config import RetentionSettings
from janitor.jobs import MAX_CHILDREN_CHECKED, TERMINAL_RAW, TERMINAL_STATUSES
from janitor.keyspace import Keyspace


class Verdict(enum.Enum):
    """What becomes of a deferred job given its parents' statuses."""

    READY = "ready"
    """Every parent ended the way the job accepts: RQ would enqueue it now."""
    WAITING = "waiting"
    """A parent has not ended yet: its end decides."""
    STUCK = "stuck"
    """It can never run: a parent ended the way the job does not accept, or every parent is gone."""


def verdict(*, allow_failure: bool, parents: Sequence[str | None]) -> Verdict:
    """The fate of a deferred job whose parents have ``parents`` statuses (None: hash gone).

    RQ 2.0 to 2.7 could also fail a deferred job whose ``ttl`` passed; that is RQ's own
    doing, not a way to run, so it is not a verdict here.
    """
    accepted = {"finished", "failed"} if allow_failure else {"finished"}
    present = [status for status in parents if status is not None]
    if not present:
        return Verdict.STUCK
    if any(s in TERMINAL_STATUSES and s not in accepted for s in present):
        return Verdict.STUCK
    if any(s not in TERMINAL_STATUSES for s in present):
        return Verdict.WAITING
    return Verdict.READY


def allows_failure(raw: bytes | None) -> bool:
    """RQ's ``allow_dependency_failures`` field: ``"1"`` (an int as text) allows, absent does not."""
    try:
        return bool(int(raw)) if raw else False
    except ValueError:
        return False


MAX_PARENTS = 100
"""A deferred job with more parents than this is not judged (it counts as waiting)."""
DEFERRED_FIELDS = ("status", "allow_dependency_failures", "origin", "rate_limit_key")
"""The fields read of a deferred job (never its payload)."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """A deferred job as read: what it accepts, its parents' statuses, and the verdict."""

    job_id: bytes
    allow: bytes | None
    """``allow_dependency_failures`` as stored (None: absent)."""
    parents: dict[bytes, bytes | None]
    """Parent id -> status as stored, or as assumed (None: the hash is gone)."""
    verdict: Verdict
    origin: bytes | None = None
    rate_limit_key: bytes | None = None
    """RQ 3's rate limit of the job, if any (empty as stored: None)."""

    @property
    def why(self) -> str:
        """Why a stuck (or stranded) job never runs, in words."""
        if self.verdict is Verdict.READY:
            return "every parent is done, yet nothing will enqueue it"
        if self.verdict is not Verdict.STUCK:
            return ""
        if all(status is None for status in self.parents.values()):
            return "every parent is gone"
        ended = [
            f"{parent.decode(errors='replace')} {status.decode(errors='replace')}"
            for parent, status in sorted(self.parents.items())
            if status is not None
            and status.decode(errors="replace") in TERMINAL_STATUSES
        ]
        return "parent " + ", ".join(ended)


def read_deferred(
    client: redis.Redis,
    keys: Keyspace,
    job_ids: Sequence[bytes],
    *,
    assume: Mapping[bytes, bytes] | None = None,
) -> list[Deferred]:
    """Read each job's fields and parents' statuses, and judge it.

    ``assume``: parent id -> the status to judge by instead of the stored one (a parent
    the janitor is about to fail). Jobs no longer ``deferred``, or with more than
    ``MAX_PARENTS`` parents, are left out.
    """
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), DEFERRED_FIELDS)
        pipe.srandmember(keys.dependencies(job_id), MAX_PARENTS + 1)
    replies = pipe.execute(raise_on_error=False)
    read: list[tuple[bytes, list[bytes | None], list[bytes]]] = []
    for index, job_id in enumerate(job_ids):
        fields, parents = replies[2 * index : 2 * index + 2]
        if isinstance(fields, Exception) or isinstance(parents, Exception):
            continue
        values = cast("list[bytes | None]", fields)
        if values[0] == b"deferred" and len(parents) <= MAX_PARENTS:
            read.append((job_id, values, sorted(cast("list[bytes]", parents))))
    pipe = client.pipeline(transaction=False)
    for _, _, parents in read:
        for parent in parents:
            pipe.hget(keys.job(parent), "status")
    statuses = iter(pipe.execute(raise_on_error=False))
    found = []
    for job_id, (_, allow, origin, limit), parents in read:
        known = {
            p: s if isinstance(s := next(statuses), bytes) else None for p in parents
        }
        known.update((p, s) for p, s in (assume or {}).items() if p in known)
        fate = verdict(
            allow_failure=allows_failure(allow),
            parents=[
                None if s is None else s.decode(errors="replace")
                for s in known.values()
            ],
        )
        found.append(Deferred(job_id, allow, known, fate, origin, limit or None))
    return found


LIVE_COLLECTIONS = (
    "queue",
    "intermediate",
    "scheduled",
    "ready",
    "started",
    "deferred",
)
"""Where live jobs are (``Keyspace`` method names): a job found there may still read its parents."""
LIVE_READ_CAP = 200_000
"""Live jobs whose ``dependency_ids`` one ``read_waiting`` reads at most."""
PAGE = 500
"""Entries of a live collection read per round trip."""
QUEUES_PER_ROUND = 100
"""Queues whose live collections' first pages are read in one round trip."""


@dataclass
class Waiting:
    """Parents that a live job still depends on, found by the live jobs' ``dependency_ids``."""

    by_parent: dict[bytes, bytes] = field(default_factory=dict)
    """Parent id -> one live child that depends on it."""
    complete: bool = True
    """False when more than ``LIVE_READ_CAP`` live jobs were there: some parents may be missing."""


def read_waiting(
    client: redis.Redis,
    keys: Keyspace,
    queues: Iterable[bytes],
    *,
    cap: int = LIVE_READ_CAP,
) -> Waiting:
    """Read the ``dependency_ids`` of the live jobs of ``queues`` (at most ``cap`` jobs).

    ``QUEUES_PER_ROUND`` queues at a time: one EXISTS per queue tells which hold a live
    job, the first page of each of their live collections comes in one round trip, and
    longer collections are paged on.
    """
    found = Waiting()
    budget = cap
    batch: list[bytes] = []
    for queue in queues:
        batch.append(queue)
        if len(batch) == QUEUES_PER_ROUND:
            budget = _read_batch(client, keys, batch, found, budget)
            batch = []
        if budget <= 0:
            found.complete = False
            return found
    if batch:
        budget = _read_batch(client, keys, batch, found, budget)
    found.complete = budget > 0
    return found


def _read_batch(
    client: redis.Redis,
    keys: Keyspace,
    queues: Sequence[bytes],
    found: Waiting,
    budget: int,
) -> int:
    """Note the parents of the live jobs of ``queues``; return the budget left."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.exists(*(cast("bytes", getattr(keys, k)(queue)) for k in LIVE_COLLECTIONS))
    busy = [q for q, n in zip(queues, pipe.execute(), strict=True) if n]
    collections = [
        (kind, cast("bytes", getattr(keys, kind)(queue)))
        for queue in busy
        for kind in LIVE_COLLECTIONS
    ]
    pipe = client.pipeline(transaction=False)
    for kind, key in collections:
        _range(pipe, kind, key, 0)
    firsts = pipe.execute(raise_on_error=False)
    for (kind, key), first in zip(collections, firsts, strict=True):
        start, page = 0, first
        while isinstance(page, list) and page and budget > 0:
            ids = _ids(kind, cast("list[bytes]", page))[:budget]
            budget -= len(page)
            _note_parents(client, keys, ids, found)
            if len(page) < PAGE:
                break
            start += PAGE
            pipe = client.pipeline(transaction=False)
            _range(pipe, kind, key, start)
            page = pipe.execute(raise_on_error=False)[0]
    return budget


def _range(pipe: redis.client.Pipeline, kind: str, key: bytes, start: int) -> None:
    """Queue the read of one page of a live collection (a list or a sorted set)."""
    if kind in ("queue", "intermediate"):
        pipe.lrange(key, start, start + PAGE - 1)
    else:
        pipe.zrange(key, start, start + PAGE - 1)


def _ids(kind: str, members: list[bytes]) -> list[bytes]:
    """Job ids of a page: the started registry's ``<id>:<exec>`` members read both ways (1.x ids may hold ``:``)."""
    if kind != "started":
        return members
    return [part for m in members for part in {m, m.rpartition(b":")[0]} if part]


def _note_parents(
    client: redis.Redis, keys: Keyspace, ids: Sequence[bytes], found: Waiting
) -> None:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), ["status", "dependency_ids", "dependency_id"])
    for job_id, reply in zip(ids, pipe.execute(raise_on_error=False), strict=True):
        if not isinstance(reply, list):
            continue
        status, many, one = cast("list[bytes | None]", reply)
        if status is None or status in TERMINAL_RAW:
            continue  # gone, or ended: it waits for nothing
        for parent in _parents(many, one):
            found.by_parent.setdefault(parent, job_id)


def _parents(many: bytes | None, one: bytes | None) -> list[bytes]:
    """A job's parent ids as RQ stores them: ``dependency_ids`` (JSON list), else ``dependency_id``."""
    if many:
        try:
            ids = json.loads(many)
        except ValueError:
            ids = None
        if isinstance(ids, list):
            return [str(i).encode() for i in ids if isinstance(i, str) and i]
    return [one] if one else []


def waiting_child(
    client: redis.Redis, keys: Keyspace, job_id: bytes, waiting: Waiting
) -> bytes | None:
    """A dependent that still waits on ``job_id``, or None.

    A live one found by ``read_waiting``, else a member of its dependents set whose job is
    not terminal (more than ``MAX_CHILDREN_CHECKED`` members count as waiting: ``b"?"``).
    """
    child = waiting.by_parent.get(job_id)
    if child is not None:
        return child
    members = cast(
        "list[bytes]",
        client.srandmember(keys.dependents(job_id), MAX_CHILDREN_CHECKED + 1),
    )
    if len(members) > MAX_CHILDREN_CHECKED:
        return b"?"
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hget(keys.job(member), "status")
    for member, status in zip(members, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(status, Exception) or (
            status is not None and status not in TERMINAL_RAW
        ):
            return member
    return None


def holds(*, child: bytes | None, due_at: float, now: float, bound_s: int) -> bool:
    """Whether a waiting ``child`` keeps a parent that became due at ``due_at``.

    For at most ``bound_s`` (``dependents_bound``) past that; then the parent goes anyway
    (with a warning), so a stuck dependent cannot pin it for ever.
    """
    return child is not None and now - due_at <= bound_s


MIN_HOLD_S = 86_400
"""The bound is at least a day, also when every retention is shorter (``"0s"``)."""


def dependents_bound(retention: RetentionSettings) -> int:
    """How long past its due time a waiting dependent may keep a parent.

    ``[retention]``'s longest age (rules included), and at least ``MIN_HOLD_S``.
    """
    ages = [retention.age_for(state) for state in TERMINAL_STATUSES]
    ages += [age for rule in retention.rules for age in rule.ages.values()]
    return max(MIN_HOLD_S, *ages)
