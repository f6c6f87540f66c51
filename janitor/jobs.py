"""Reading RQ job hashes safely: only the lifecycle fields, never payloads, parsed defensively."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_RESULT_TTL = 500
"""RQ's ``DEFAULT_RESULT_TTL`` (unchanged from 1.0 to 3.0)."""
DEFAULT_FAILURE_TTL = 31_536_000
"""RQ's ``DEFAULT_FAILURE_TTL``: one year."""

LIVE_STATUSES = frozenset(
    {
        "queued",
        "started",
        "deferred",
        "scheduled",
        "created",
        "ready_to_enqueue",
        "rate_limited",
    }
)
"""Statuses of jobs that are waiting or running; the janitor never deletes these."""
TERMINAL_STATUSES: tuple[str, ...] = ("finished", "failed", "stopped", "canceled")
"""Statuses after which RQ will not run a job again unless asked to: the one list of them
(config's retention keys, the tasks, report and explain all use it), in the contract's order."""
TERMINAL_RAW = frozenset(status.encode() for status in TERMINAL_STATUSES)
"""``TERMINAL_STATUSES`` as stored, to compare with raw hash fields."""

MAX_CHILDREN_CHECKED = 100
"""A job with more dependents than this counts as waited on, rather than read child by child."""

JOB_FIELDS: tuple[str, ...] = (
    "status",
    "origin",
    "ended_at",
    "last_heartbeat",
    "failure_ttl",
    "result_ttl",
    "group_id",
    "rate_limit_key",
)
"""The hash fields the janitor reads (HMGET). Payload fields are never among them."""

_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ")


class FieldError(ValueError):
    """Raised when a job field holds something RQ would never have written there."""


def parse_rq_time(raw: bytes | None) -> float | None:
    """Parse RQ's ``utcformat`` timestamp into epoch seconds; None when empty or missing.

    Raises:
        FieldError: the value is neither empty nor in one of RQ's formats.
    """
    if raw is None or raw == b"":
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        msg = "not ASCII"
        raise FieldError(msg) from err
    for fmt in _TIME_FORMATS:
        try:
            parsed = dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        return parsed.timestamp()
    msg = "not an RQ timestamp"
    raise FieldError(msg)


def format_rq_time(epoch: float) -> str:
    """RQ's ``utcformat`` of an epoch time, as RQ writes ``enqueued_at`` and ``ended_at``."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime(_TIME_FORMATS[0])


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_minutes_since_epoch: dict[bytes, int] = {}
_MAX_MINUTES_CACHED = 4096
"""Registries are walked in score order, which follows the end time, so neighbours
mostly share their minute: a small cache of minutes saves most of the parsing."""


def rq_epoch(ended_at: bytes) -> float:
    """Epoch seconds of an ended_at already validated as RQ's 27-character format.

    Exactly ``parse_rq_time``'s value, faster (the fast path of ``expire_jobs`` reads one
    per deleted job).

    ``datetime.timestamp()`` of an aware datetime divides its whole microseconds by a
    million; so does this, with the seconds up to each minute looked up once.
    """
    minute = ended_at[:16]
    seconds = _minutes_since_epoch.get(minute)
    if seconds is None:
        if len(_minutes_since_epoch) >= _MAX_MINUTES_CACHED:
            _minutes_since_epoch.clear()
        date = dt.date(int(minute[:4]), int(minute[5:7]), int(minute[8:10]))
        seconds = _minutes_since_epoch[minute] = (
            (date.toordinal() - _EPOCH_ORDINAL) * 86_400
            + int(minute[11:13]) * 3600
            + int(minute[14:16]) * 60
        )
    return (
        (seconds + int(ended_at[17:19])) * 1_000_000 + int(ended_at[20:26])
    ) / 1_000_000


def parse_int(raw: bytes | None) -> int | None:
    """Parse a decimal integer field (TTLs); None when empty or missing.

    Raises:
        FieldError: the value is not a decimal integer.
    """
    if raw is None or raw == b"":
        return None
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        msg = "not an integer"
        raise FieldError(msg) from err


def parse_text(raw: bytes | None) -> str | None:
    """Decode a text field (status, origin); None when missing.

    Raises:
        FieldError: the value is not UTF-8.
    """
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        msg = "not UTF-8"
        raise FieldError(msg) from err


@dataclass(frozen=True, slots=True)
class JobFields:
    """The lifecycle fields of one job hash, as read; raw bytes kept for atomic re-checks."""

    job_id: bytes
    raw: tuple[bytes | None, ...]
    """The HMGET reply, in ``JOB_FIELDS`` order."""

    @classmethod
    def from_reply(cls, job_id: bytes, reply: Sequence[bytes | None]) -> JobFields:
        """Wrap an HMGET reply for ``JOB_FIELDS``."""
        return cls(job_id, tuple(reply))

    def _raw(self, name: str) -> bytes | None:
        return self.raw[JOB_FIELDS.index(name)]

    @property
    def exists(self) -> bool:
        """Whether the hash had any of the fields (a missing key reads as all None)."""
        return any(value is not None for value in self.raw)

    @property
    def raw_status(self) -> bytes | None:
        """The status exactly as stored."""
        return self._raw("status")

    @property
    def raw_origin(self) -> bytes | None:
        """The origin queue name exactly as stored."""
        return self._raw("origin")

    @property
    def raw_ended_at(self) -> bytes | None:
        """``ended_at`` exactly as stored."""
        return self._raw("ended_at")

    @property
    def status(self) -> str | None:
        """The job's status."""
        return parse_text(self._raw("status"))

    @property
    def ended_at(self) -> float | None:
        """When the job ended, as epoch seconds."""
        return parse_rq_time(self._raw("ended_at"))

    @property
    def last_heartbeat(self) -> float | None:
        """The job's last heartbeat, as epoch seconds."""
        return parse_rq_time(self._raw("last_heartbeat"))

    @property
    def failure_ttl(self) -> int | None:
        """The job's own ``failure_ttl``, if it set one."""
        return parse_int(self._raw("failure_ttl"))

    @property
    def result_ttl(self) -> int | None:
        """The job's own ``result_ttl``, if it set one."""
        return parse_int(self._raw("result_ttl"))

    @property
    def group_id(self) -> bytes | None:
        """The RQ 2 group the job belongs to, if any."""
        raw = self._raw("group_id")
        return raw or None

    @property
    def rate_limit_key(self) -> bytes | None:
        """The RQ 3 rate limit the job counts against, if any."""
        raw = self._raw("rate_limit_key")
        return raw or None


def entered_failed_registry(score: float, failure_ttl: int | None) -> float | None:
    """When a job entered the failed registry, from its score (``entered + failure_ttl``).

    Returns None when the score carries no time: RQ stores a negative ``failure_ttl`` as
    score -1, and an infinite score has no start either.
    """
    ttl = DEFAULT_FAILURE_TTL if failure_ttl is None else failure_ttl
    if ttl < 0 or score < 0 or math.isinf(score):
        return None
    return score - ttl
