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

from janitor.jobs import TERMINAL_STATUSES


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
