"""The report's rows: per queue and state, how many jobs, how old, and when RQ and the janitor delete them.

Queue names come from ``rq:queues``, sizes from LLEN/ZCARD, and the jobs of each
collection are read whole when small and sampled when large (``janitor.report.read``),
within one read budget shared by all queues. Every number derived from the jobs read
comes with how many were read (``read``) and whether that was all of them (``exact``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import redis

from janitor.batches import chunks
from janitor.config import TERMINAL_STATES, Settings
from janitor.config.values import format_duration
from janitor.dependencies import (
    Waiting,
    dependents_bound,
    holds,
    read_waiting,
    waiting_child,
)
from janitor.expiry import expiry, terminal_end
from janitor.keyspace import Keyspace, iter_queue_names, to_text
from janitor.policy import QueueFilter, retention_for
from janitor.report.read import (
    COLLECTIONS,
    EDGE,
    STATES,
    TERMINAL_COLLECTIONS,
    Entry,
    read_collection,
    sample_ranks,
    since,
)

RQ_RULES = {
    "queued": "never, unless enqueued with ttl",
    "started": "never while it runs; if its worker dies, a worker of the queue fails it",
    "deferred": "never, unless enqueued with ttl",
    "scheduled": "never, unless enqueued with ttl",
    "finished": "result_ttl after it ended (default 500s; -1 = never)",
    "failed": "failure_ttl after it failed (default 1 year; -1 = never)",
    "stopped": "failure_ttl after it stopped (default 1 year; -1 = never)",
    "canceled": "never (rq#1647)",
}
"""What RQ's own TTLs do to each state, in every RQ version from 1.16 to 3.x."""

ENDED = {
    "finished": "ended",
    "failed": "failed",
    "stopped": "stopped",
    "canceled": "was canceled",
}
"""How each terminal state's age starts, in words."""

SIZES_PER_PIPELINE = 500
"""Queues whose collection sizes are read per round trip."""

NAMES_EXAMINED_PER_QUEUE = 10
"""``rq:queues`` names examined per queue reported, at most (for ``--queue`` globs)."""

MAX_DEPENDENT_CHECKS = 50
"""Per state and queue, at most this many overdue parents get their dependents read; the rest count as kept."""

_ID_TAIL = re.compile(
    r"(?<=[-_:.])(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|\d+)$"
)


@dataclass(frozen=True, slots=True)
class Limits:
    """How much work one report may do; the defaults suit millions of keys."""

    max_queues: int = 10_000
    read_budget: int = 20_000
    """Collection entries read in all, across every queue."""
    per_collection_max: int = 1_000
    """A collection with more entries than its share of the budget (at most this) is sampled."""
    per_collection_min: int = 2 * EDGE + 2


@dataclass(slots=True)
class StateRow:
    """One queue and state: counts, ages and deletion times, over the jobs read."""

    state: str
    count: int
    exact: bool
    read: int
    oldest_age_s: float | None = None
    rq_with_ttl: int = 0
    rq_never: int = 0
    rq_first_at: float | None = None
    rq_last_at: float | None = None
    janitor_rule: str | None = None
    retention_s: int | None = None
    keep_last: int | None = None
    janitor_when: str = ""
    janitor_oldest_at: float | None = None
    backlog_count: int = 0
    backlog_oldest_age_s: float | None = None
    result_ttl_forever: int = 0
    failure_ttl_default: int = 0

    def to_json(self) -> dict[str, Any]:
        """The documented JSON object of this row."""
        return {
            "state": self.state,
            "count": self.count,
            "exact": self.exact,
            "read": self.read,
            "oldest_age_s": _round(self.oldest_age_s),
            "rq": {
                "rule": RQ_RULES[self.state],
                "with_ttl": self.rq_with_ttl,
                "never": self.rq_never,
                "first_at": _round(self.rq_first_at),
                "last_at": _round(self.rq_last_at),
            },
            "janitor": {
                "when": self.janitor_when,
                "rule": self.janitor_rule,
                "retention_s": self.retention_s,
                "keep_last": self.keep_last,
                "oldest_at": _round(self.janitor_oldest_at),
            },
            "backlog": {
                "count": self.backlog_count,
                "oldest_age_s": _round(self.backlog_oldest_age_s),
            },
        }


@dataclass(slots=True)
class QueueReport:
    """What the report found for one queue."""

    name: str
    allowed: bool
    totals: dict[str, int]
    listed: bool = True
    """Whether ``rq:queues`` lists the queue (see ``janitor.unlisted``)."""
    rows: list[StateRow] = field(default_factory=list)
    dangling: list[tuple[str, bytes]] = field(default_factory=list)
    """(collection, member) of entries whose job hash is gone, among those read."""
    job_ids: list[bytes] = field(default_factory=list)
    """Ids of existing jobs read, for the memory estimate."""
    deferred: list[bytes] = field(default_factory=list)
    """Ids of deferred jobs read, for the stuck-deferred leak."""
    no_ttl: list[bytes] = field(default_factory=list)
    """Ids of terminal jobs read whose hash has no TTL: RQ keeps them forever."""
    exact: bool = True

    @property
    def family(self) -> str:
        """The queue's family: its name with a trailing id (uuid, hex, number) as ``*``."""
        return queue_family(self.name)


def queue_family(name: str) -> str:
    """Group actinia-style per-job queues: ``job_queue_resource_id-<uuid>`` -> ``job_queue_resource_id-*``."""
    return _ID_TAIL.sub("*", name)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The queues chosen for a report, and how complete that choice is."""

    names: list[bytes]
    """Sorted."""
    listed: int
    """Members of ``rq:queues`` (SCARD)."""
    matching: int
    """Names matching the globs among those examined."""
    complete: bool
    """Whether every listed name was examined and every match chosen."""


def queue_names(
    client: redis.Redis, keys: Keyspace, globs: Sequence[str], limit: int
) -> QueueNames:
    """The queues to read: those matching ``globs`` (all when none), at most ``limit``.

    SSCAN stops after ``limit`` matches or ``NAMES_EXAMINED_PER_QUEUE * limit`` names,
    so a ``rq:queues`` of millions of per-job queues costs a bounded number of calls.
    """
    listed = client.scard(keys.queues())
    examined = matching = 0
    chosen: list[bytes] = []
    for name in iter_queue_names(client, keys):
        if len(chosen) >= limit or examined >= NAMES_EXAMINED_PER_QUEUE * limit:
            break
        examined += 1
        if not globs or any(fnmatchcase(to_text(name), g) for g in globs):
            matching += 1
            chosen.append(name)
    complete = examined >= listed
    return QueueNames(sorted(chosen), listed, matching, complete)


def collection_sizes(
    client: redis.Redis, keys: Keyspace, names: Sequence[bytes], kinds: Sequence[str]
) -> list[dict[str, int]]:
    """LLEN / ZCARD of each collection of each queue (a key of the wrong type counts as empty)."""
    sizes: list[dict[str, int]] = []
    for chunk in chunks(names, SIZES_PER_PIPELINE):
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            for kind in kinds:
                key = getattr(keys, kind)(name)
                if kind == "queue":
                    pipe.llen(key)
                else:
                    pipe.zcard(key)
        replies = iter(pipe.execute(raise_on_error=False))
        sizes += [
            {kind: n if isinstance(n := next(replies), int) else 0 for kind in kinds}
            for _ in chunk
        ]
    return sizes


def per_collection_budget(sizes: Iterable[dict[str, int]], limits: Limits) -> int:
    """Each collection's share of the read budget, between the per-collection bounds."""
    nonempty = sum(1 for totals in sizes for size in totals.values() if size)
    share = limits.read_budget // max(nonempty, 1)
    return max(limits.per_collection_min, min(limits.per_collection_max, share))


@dataclass(frozen=True)  # no slots: cached_property keeps ``hold`` in __dict__
class Scope:
    """What reading queues needs: the client, key names, settings, time and bounds."""

    client: redis.Redis
    keys: Keyspace
    settings: Settings
    now: float
    limits: Limits = field(default_factory=Limits)

    @functools.cached_property
    def hold(self) -> tuple[Waiting, int]:
        """The parents live jobs depend on (read once, within the read budget) and ``dependents_bound``."""
        queues = iter_queue_names(self.client, self.keys)
        waiting = read_waiting(
            self.client, self.keys, queues, cap=self.limits.read_budget
        )
        return waiting, dependents_bound(self.settings.retention)

    @classmethod
    def build(
        cls, client: redis.Redis, settings: Settings, now: float, limits: Limits
    ) -> Scope:
        """A scope for the key prefix of ``settings``."""
        return cls(client, Keyspace(settings.rq.key_prefix), settings, now, limits)


@dataclass(frozen=True, slots=True)
class _Collection:
    """One collection of a queue: its kind, size, and the entries read from it."""

    kind: str
    total: int
    entries: Sequence[Entry]
    exact: bool
    """Whether every entry was read."""


def read_queues(
    scope: Scope,
    names: Sequence[bytes],
    kinds: Sequence[str] = COLLECTIONS,
    *,
    unlisted: Sequence[bytes] = (),
) -> list[QueueReport]:
    """Read the given queues' collections of ``kinds`` and build their state rows.

    ``unlisted`` queues (not in ``rq:queues``) come after ``names`` and share the budget.
    """
    every = [*names, *unlisted]
    sizes = collection_sizes(scope.client, scope.keys, every, kinds)
    budget = per_collection_budget(sizes, scope.limits)
    allowed = QueueFilter.build(scope.settings.rq)
    reports = [
        read_queue(scope, name, totals, budget, allowed=allowed(to_text(name)))
        for name, totals in zip(every, sizes, strict=True)
    ]
    for report in reports[len(names) :]:
        report.listed = False
    return reports


def read_queue(
    scope: Scope, name: bytes, totals: dict[str, int], budget: int, *, allowed: bool
) -> QueueReport:
    """Read one queue's collections (at most ``budget`` entries each) and build its state rows."""
    report = QueueReport(to_text(name), allowed, totals)
    for kind, total in totals.items():
        if not total:
            continue
        ranks = sample_ranks(total, budget, spread=kind != "queue")
        entries = read_collection(scope.client, scope.keys, name, kind, ranks)
        coll = _Collection(kind, total, entries, exact=len(ranks) == total)
        report.exact &= coll.exact
        report.dangling += [
            (kind, e.member)
            for e in entries
            if not e.job.exists and not e.job.unreadable
        ]
        report.job_ids += [e.job.job_id for e in entries if e.job.exists]
        if kind == "deferred":
            report.deferred += [
                e.job.job_id for e in entries if e.job.status == "deferred"
            ]
        if kind in TERMINAL_COLLECTIONS:
            report.no_ttl += [
                e.job.job_id
                for e in entries
                if e.job.pttl_ms == -1 and e.job.status in TERMINAL_STATES
            ]
        for state, source in STATES:
            if source == kind:
                row = _row(scope, report, state, coll)
                if row.count or row.read:
                    report.rows.append(row)
    return report


def _row(scope: Scope, queue: QueueReport, state: str, coll: _Collection) -> StateRow:
    matched = [e for e in coll.entries if e.job.exists and e.job.status == state]
    read = max(len(coll.entries), 1)
    count = len(matched) if coll.exact else round(coll.total * len(matched) / read)
    row = StateRow(state, count, coll.exact, len(matched))
    now = scope.now
    starts = [
        s for e in matched if (s := since(state, coll.kind, e.score, e.job)) is not None
    ]
    row.oldest_age_s = max((now - s for s in starts), default=None)
    ttls = [e.job.pttl_ms for e in matched if e.job.pttl_ms > 0]
    row.rq_with_ttl, row.rq_never = len(ttls), sum(e.job.pttl_ms == -1 for e in matched)
    row.rq_first_at = now + min(ttls) / 1000 if ttls else None
    row.rq_last_at = now + max(ttls) / 1000 if ttls else None
    row.result_ttl_forever = sum(e.job.result_ttl == -1 for e in matched)
    if state in ("failed", "stopped"):
        row.failure_ttl_default = sum(e.job.failure_ttl is None for e in matched)
    row.janitor_when = janitor_when(
        scope.settings, queue.name, state, allowed=queue.allowed
    )
    if state in TERMINAL_STATES and queue.allowed:
        _janitor_columns(scope, queue.name, row, coll, matched)
    return row


def janitor_when(settings: Settings, queue: str, state: str, *, allowed: bool) -> str:
    """In words, when the janitor deletes jobs of this queue and state."""
    if state not in TERMINAL_STATES:
        return "never: live jobs are never touched"
    if not allowed:
        return "never: queue outside [rq] queues"
    retention = retention_for(settings.retention, queue, state)
    text = f"{format_duration(retention.max_age_s)} after it {ENDED[state]} ({retention.age_rule})"
    if retention.keep_last is not None:
        text += (
            f"; beyond the newest {retention.keep_last} at once ({retention.cap_rule})"
        )
    return text


def _janitor_columns(
    scope: Scope,
    queue: str,
    row: StateRow,
    coll: _Collection,
    matched: Sequence[Entry],
) -> None:
    """Fill the janitor's rule, its time for the oldest job, and its backlog."""
    retention = retention_for(scope.settings.retention, queue, row.state)
    row.janitor_rule, row.retention_s = retention.age_rule, retention.max_age_s
    row.keep_last = retention.keep_last
    ends = [terminal_end(coll.kind, e.score, e.job) for e in matched]
    known = [end for end in ends if end is not None]
    oldest = expiry(
        end=min(known, default=None), retention=retention, capped=False, now=scope.now
    )
    row.janitor_oldest_at = oldest.at
    share = len(matched) / max(len(coll.entries), 1)
    overdue: list[tuple[Entry, float, float]] = []
    for index, (entry, end) in enumerate(zip(matched, ends, strict=True)):
        if end is None or to_text(entry.job.origin or b"") != queue:
            continue  # expire_jobs skips these too
        # Jobs of this state newer in RQ's score order: keep_last counts those.
        newer = (
            len(matched) - 1 - index
            if coll.exact
            else round((coll.total - 1 - entry.rank) * share)
        )
        capped = retention.keep_last is not None and newer >= retention.keep_last
        verdict = expiry(end=end, retention=retention, capped=capped, now=scope.now)
        if verdict.due:
            overdue.append((entry, max(0.0, scope.now - end), verdict.at or scope.now))
    ages = [age for _, age in _not_kept(scope, overdue)]
    row.backlog_count = len(ages)
    row.backlog_oldest_age_s = max(ages, default=None)


def _not_kept(
    scope: Scope, overdue: Sequence[tuple[Entry, float, float]]
) -> list[tuple[Entry, float]]:
    """Drop the overdue (entry, age, due time) parents expire_jobs keeps because dependents wait on them.

    The rule is ``dependencies.holds``; past ``MAX_DEPENDENT_CHECKS`` parents to check, a
    parent with dependents counts as kept.
    """
    result: list[tuple[Entry, float]] = []
    checked = 0
    waiting, bound = scope.hold
    for entry, age, due_at in overdue:
        job_id = entry.job.job_id
        if (entry.job.dependents or job_id in waiting.by_parent) and holds(
            child=b"?", due_at=due_at, now=scope.now, bound_s=bound
        ):
            checked += 1
            if checked > MAX_DEPENDENT_CHECKS or waiting_child(
                scope.client, scope.keys, job_id, waiting
            ):
                continue
        result.append((entry, age))
    return result
