"""Whether a deferred job can still run, and what it waits on: decided here alone.

RQ enqueues a deferred job only from ``Queue.enqueue_dependents`` of a parent that just
ended, and only when ``Job.dependencies_are_met`` (the same rule in 1.16, 2.x and 3.0):
the parent that ended is ``finished``, or ``failed`` and the child allows failure
(``allow_dependency_failures``, set by ``Dependency(allow_failure=True)``); a ``canceled``
or ``stopped`` parent never lets it run; every other parent whose hash still exists is
``finished`` (or ``failed`` with the same allowance); parents whose hash is gone are not
looked at. ``recover_abandoned`` (enqueue the dependents of the job it failed, as RQ's own
failure handling does) and ``report`` (deferred jobs that can never run) ask ``verdict``;
the write script re-checks the facts it was given (statuses and memberships), never the rule.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from janitor.jobs import TERMINAL_STATUSES
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


@dataclass(frozen=True, slots=True)
class Deferred:
    """A deferred job as read: what it accepts, its parents' statuses, and the verdict."""

    job_id: bytes
    allow: bytes | None
    """``allow_dependency_failures`` as stored (None: absent)."""
    parents: dict[bytes, bytes | None]
    """Parent id -> status as stored (None: the hash is gone)."""
    verdict: Verdict

    @property
    def why(self) -> str:
        """The parents that keep a stuck job from ever running, in words."""
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
    client: redis.Redis, keys: Keyspace, job_ids: Sequence[bytes]
) -> list[Deferred]:
    """Read each job's ``allow_dependency_failures``, status and parents, and judge it.

    Jobs no longer ``deferred``, or with more than ``MAX_PARENTS`` parents, are left out.
    """
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), ["status", "allow_dependency_failures"])
        pipe.srandmember(keys.dependencies(job_id), MAX_PARENTS + 1)
    replies = pipe.execute(raise_on_error=False)
    read: list[tuple[bytes, bytes | None, list[bytes]]] = []
    for index, job_id in enumerate(job_ids):
        fields, parents = replies[2 * index : 2 * index + 2]
        if isinstance(fields, Exception) or isinstance(parents, Exception):
            continue
        status, allow = cast("list[bytes | None]", fields)
        if status == b"deferred" and len(parents) <= MAX_PARENTS:
            read.append((job_id, allow, sorted(cast("list[bytes]", parents))))
    pipe = client.pipeline(transaction=False)
    for _, _, parents in read:
        for parent in parents:
            pipe.hget(keys.job(parent), "status")
    statuses = iter(pipe.execute(raise_on_error=False))
    found = []
    for job_id, allow, parents in read:
        known = {
            p: s if isinstance(s := next(statuses), bytes) else None for p in parents
        }
        fate = verdict(
            allow_failure=allows_failure(allow),
            parents=[
                None if s is None else s.decode(errors="replace")
                for s in known.values()
            ],
        )
        found.append(Deferred(job_id, allow, known, fate))
    return found
