"""Would ``expire_jobs`` delete a terminal job, when, and by which rule: decided here alone.

``expire_jobs``' planner, ``report`` and ``explain`` ask these functions. The fast path's
Lua judge (``scripts.EXPIRE_TERMINAL_JOBS``) cannot call Python: it compares a job's
``ended_at`` with ``cutoff_text``, the same cutoff in RQ's fixed-width time format, which
orders as the microseconds ``past_age`` compares. ``tests/test_expiry.py`` generates job
hashes and checks that the script and this module agree on every one, at the cutoff too.

The rule: a job's age counts from ``terminal_end``; it is past its age rule when it ended
at or before ``now - max_age``, to the microsecond (``"0s"``: whatever the age); beyond a
``keep_last`` cap it goes at once. See docs/keyspace.md for the registries.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Protocol

from janitor.jobs import entered_failed_registry
from janitor.policy import Retention

REGISTRIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("finished", ("finished",)),
    ("failed", ("failed", "stopped")),
    ("canceled", ("canceled",)),
)
"""Each terminal registry and the job statuses RQ keeps in it."""
TERMINAL_REGISTRY_OF = {
    status: kind for kind, statuses in REGISTRIES for status in statuses
}
"""The terminal registry of each terminal status."""

_EPOCH = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose: only formatted, as UTC
_ALWAYS = 9_000_000_000_000_000
"""Microseconds past every ended_at RQ writes (and the script accepts: years up to 2200)."""


class EndFacts(Protocol):
    """What ``terminal_end`` reads of a job (``JobFields`` of a task, ``JobInfo`` of a report)."""

    @property
    def ended_at(self) -> float | None:
        """When the job ended (epoch seconds)."""
        ...

    @property
    def failure_ttl(self) -> int | None:
        """The job's own failure TTL, if it set one."""
        ...

    @property
    def last_heartbeat(self) -> float | None:
        """The job's last heartbeat (epoch seconds)."""
        ...


def terminal_end(kind: str, score: float | None, job: EndFacts) -> float | None:
    """When a terminal job ended, the moment its age counts from; None when unknown.

    ``ended_at``; where RQ leaves it empty, the cancel time (the canceled registry's
    score), or for a failed job the time it entered the failed registry (score minus its
    failure TTL), else its last heartbeat.
    """
    ended = job.ended_at
    usable = score is not None and score >= 0 and not math.isinf(score)
    if ended is None and kind == "canceled" and usable:
        ended = score
    if ended is None and kind == "failed" and score is not None:
        ended = entered_failed_registry(score, job.failure_ttl) or job.last_heartbeat
    return ended


def micros(epoch: float) -> int:
    """Whole microseconds of an epoch time; exact for RQ's times (parsed to a float of them)."""
    return round(epoch * 1_000_000)


def cutoff(now: float, max_age_s: int) -> int:
    """The latest end, in microseconds, that is past an age rule of ``max_age_s`` at ``now``.

    ``max_age_s <= 0`` (``"0s"``) means whatever the age. Never before 1970: the
    script's strings compare as times only with four-digit years.
    """
    if max_age_s <= 0:
        return _ALWAYS
    return max(-1, math.floor(now * 1_000_000) - max_age_s * 1_000_000)


def cutoff_text(limit: int) -> bytes:
    """``cutoff``'s value in RQ's time format, for the Lua judge (exact: integer arithmetic)."""
    moment = _EPOCH + dt.timedelta(microseconds=limit)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def past_age(end: float, now: float, max_age_s: int) -> bool:
    """Whether a job that ended at ``end`` is past an age rule of ``max_age_s`` at ``now``."""
    return micros(end) <= cutoff(now, max_age_s)


@dataclass(frozen=True, slots=True)
class Expiry:
    """``expire_jobs``' answer for one terminal job."""

    due: bool
    """It deletes the job on its next run."""
    at: float | None
    """When the age rule makes it due (None: no end time to count from)."""
    rule: str | None
    """The rule that makes it due (the age rule when not due yet; None without an end)."""
    age_s: float | None
    """The job's age at ``now`` (None without an end time)."""


def expiry(
    *, end: float | None, retention: Retention, capped: bool, now: float
) -> Expiry:
    """When ``expire_jobs`` deletes a terminal job that ended at ``end``, and by which rule.

    ``end`` is ``terminal_end``'s answer; ``capped``: the job is beyond its ``keep_last``
    newest (the caller places it). The job's other conditions (status, origin,
    dependents that wait on it) are the caller's to check: they decide whether, not when.
    """
    if end is None:
        rule = retention.cap_rule if capped else None
        return Expiry(due=capped, at=None, rule=rule, age_s=None)
    age = max(0.0, now - end)
    at = end + retention.max_age_s
    if past_age(end, now, retention.max_age_s):
        return Expiry(due=True, at=at, rule=retention.age_rule, age_s=age)
    if capped:
        return Expiry(due=True, at=at, rule=retention.cap_rule, age_s=age)
    return Expiry(due=False, at=at, rule=retention.age_rule, age_s=age)
