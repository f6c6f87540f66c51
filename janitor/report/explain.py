"""``janitor explain JOB_ID``: one job's state, the rule that applies to it, and when RQ and the janitor delete it.

Read-only: the job's lifecycle fields (never its payload), PTTLs, its registry entry
and, for a started job, whether its worker is provably dead (``liveness.judge``). RQ's deletion time is the
job hash's TTL as Redis holds it (RQ sets it from ``result_ttl`` / ``failure_ttl`` when
the job ends); the janitor's follows ``expire_jobs``: ``[retention]`` age after the job
ended, ``keep_last``, and the jobs it keeps. The JSON shape is in docs/report.md.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, cast

import redis

from janitor.config import TERMINAL_STATES, Settings
from janitor.config.values import format_duration
from janitor.dependencies import (
    dependents_bound,
    holds,
    read_waiting,
    waiting_child,
)
from janitor.errors import ConfigError, NoSuchJob
from janitor.expiry import TERMINAL_REGISTRY_OF, expiry, terminal_end
from janitor.jobs import DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL
from janitor.keyspace import Keyspace, iter_queue_names, to_text
from janitor.liveness import Verdict, WorkerFacts, judge, read_workers
from janitor.memory import budget_bytes, read_usage
from janitor.policy import QueueFilter, Retention, retention_for
from janitor.report.build import DOCS
from janitor.report.queues import ENDED
from janitor.report.read import (
    JobInfo,
    read_jobs,
)

SCHEMA = "rq-janitor.explain/1"
"""The ``schema`` value of ``explain --json``."""

REGISTRY_OF = {
    **TERMINAL_REGISTRY_OF,
    "started": "started",
    "deferred": "deferred",
    "scheduled": "scheduled",
}
"""The registry (``Keyspace`` method) RQ keeps a job of each status in."""

MAX_NEWER_READ = 10_000
"""keep_last: at most this many newer registry entries are read to place the job."""


def explain(
    client: redis.Redis, settings: Settings, job_id: str, now: float
) -> dict[str, Any]:
    """Explain one job (docs/report.md, ``explain --json``).

    Raises:
        NoSuchJob: no job hash exists under that id and the configured key prefix.
    """
    keys = Keyspace(settings.rq.key_prefix)
    raw_id = job_id.encode()
    [job] = read_jobs(client, keys, [raw_id])
    if not job.exists:
        msg = f"no job {job_id!r} (no key {to_text(keys.job(raw_id))!r}; [rq] key_prefix is {settings.rq.key_prefix!r})"
        raise NoSuchJob(msg)
    facts = _Facts.read(client, keys, settings, job, now)
    rq_at, rq_reason = _rq_deletion(facts)
    jan_at, jan_reason = _janitor_deletion(facts)
    return {
        "schema": SCHEMA,
        "docs": DOCS,
        "now": round(now, 3),
        "job_id": job_id,
        "key": to_text(keys.job(raw_id)),
        "status": job.status,
        "queue": facts.queue,
        "queue_listed": facts.listed,
        "allowed": facts.allowed,
        "unreadable": job.unreadable,
        "timestamps": {
            name: getattr(job, name)
            for name in (
                "created_at",
                "enqueued_at",
                "started_at",
                "ended_at",
                "last_heartbeat",
            )
        },
        "ttls": {
            "key_ttl_s": job.pttl_ms / 1000 if job.pttl_ms >= 0 else None,
            "result_ttl": job.result_ttl,
            "failure_ttl": job.failure_ttl,
            "ttl": job.ttl,
        },
        "results": facts.results_json(keys, raw_id),
        "registry": facts.registry_json(),
        "worker": facts.worker_json(),
        "dependents": job.dependents,
        "rule": facts.rule_json(settings),
        "rq": {"at": _round(rq_at), "reason": rq_reason},
        "janitor": {
            "at": _round(jan_at),
            "due": jan_at is not None and jan_at <= now,
            "reason": jan_reason,
            "schedule": settings.schedule["expire_jobs"].text,
        },
        "first": _first(rq_at, jan_at),
        "memory": _memory_risk(client, settings, job, facts),
    }


def _memory_risk(
    client: redis.Redis, settings: Settings, job: JobInfo, facts: _Facts
) -> dict[str, Any]:
    """Whether the memory pass may take the job now (``janitor.memory``): over budget, old enough."""
    usage = read_usage(client)
    try:
        limit = budget_bytes(settings.memory, usage.maxmemory)
    except ConfigError:
        limit = None
    old_enough = (
        facts.end is not None and facts.now - facts.end >= settings.memory.keep_for
    )
    at_risk = (
        limit is not None
        and usage.used > limit
        and job.status in TERMINAL_STATES
        and facts.allowed
        and old_enough
    )
    return {"used_memory": usage.used, "budget": limit, "at_risk": at_risk}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _first(rq_at: float | None, janitor_at: float | None) -> str | None:
    if rq_at is None and janitor_at is None:
        return None
    if janitor_at is None or (rq_at is not None and rq_at <= janitor_at):
        return "rq"
    return "janitor"


class _Facts:
    """Everything read about the job besides its fields, and the policy that applies."""

    def __init__(self, job: JobInfo, now: float, queue: str | None) -> None:
        self.job, self.now, self.queue = job, now, queue
        self.allowed = False
        self.listed: bool | None = None
        """Whether ``rq:queues`` lists the job's queue; None without an origin."""
        self.registry_key: bytes | None = None
        self.score: float | None = None
        self.newer_same: int | None = None
        """Entries of the same status newer in the registry; None = not determined."""
        self.results_pttl = -2
        self.worker: str | None = None
        self.worker_facts: WorkerFacts | None = None
        self.worker_verdict: Verdict | None = None
        self.retention: Retention | None = None
        self.end: float | None = None
        """When a terminal job ended, as expire_jobs counts its age (``terminal_end``)."""
        self.waiting_child: bytes | None = None
        """A dependent that still waits on the job (``dependencies.waiting_child``)."""
        self.bound = 0
        """How long a waiting dependent keeps it (``dependencies.dependents_bound``)."""
        self.abandoned_action = "fail"

    @classmethod
    def read(
        cls,
        client: redis.Redis,
        keys: Keyspace,
        settings: Settings,
        job: JobInfo,
        now: float,
    ) -> _Facts:
        """Read the registry entry, result stream, worker and dependents of ``job``."""
        queue = to_text(job.origin) if job.origin is not None else None
        facts = cls(job, now, queue)
        facts.abandoned_action = settings.abandoned.action
        facts.allowed = queue is not None and QueueFilter.build(settings.rq)(queue)
        facts.results_pttl = client.pttl(keys.results(job.job_id))
        if job.origin is not None:
            member = cast(
                "str", keys.queue(job.origin)
            )  # redis-py types members as str
            facts.listed = bool(client.sismember(keys.queues(), member))
        status = job.status or ""
        if job.origin is not None and status in REGISTRY_OF:
            facts.registry_key = getattr(keys, REGISTRY_OF[status])(job.origin)
            facts.score = _registry_score(client, keys, facts.registry_key, job)
        if status in TERMINAL_STATES and queue is not None:
            facts.retention = retention_for(settings.retention, queue, status)
            facts.newer_same = _newer_same(client, keys, facts, facts.retention)
            facts.end = terminal_end(REGISTRY_OF[status], facts.score, job)
            queues = iter_queue_names(client, keys)
            waiting = read_waiting(client, keys, queues)
            facts.waiting_child = waiting_child(client, keys, job.job_id, waiting)
            facts.bound = dependents_bound(settings.retention)
        if status == "started":
            raw = cast("bytes | None", client.hget(keys.job(job.job_id), "worker_name"))
            if raw:  # no name (a half-written hash): nothing to say about a worker
                facts.worker = to_text(raw)
                facts.worker_facts = read_workers(client, keys, [raw])[raw]
                dead_after = settings.workers.dead_after
                facts.worker_verdict = judge(facts.worker_facts, now, dead_after)
        return facts

    @property
    def worker_dead(self) -> bool:
        """Whether the started job's worker is provably dead (False when unknown)."""
        return self.worker_verdict is not None and self.worker_verdict.dead

    def worker_json(self) -> dict[str, Any]:
        """The ``worker`` object: its name, whether its hash exists, and the liveness verdict."""
        facts, verdict = self.worker_facts, self.worker_verdict
        return {
            "name": self.worker,
            "exists": None if facts is None else facts.ttl != -2,  # noqa: PLR2004 - TTL of a missing key
            "dead": None if verdict is None else verdict.dead,
            "reason": None if verdict is None else verdict.reason,
        }

    def results_json(self, keys: Keyspace, job_id: bytes) -> dict[str, Any]:
        """The ``results`` object: the job's result stream and its TTL."""
        return {
            "key": to_text(keys.results(job_id)),
            "exists": self.results_pttl != -2,  # noqa: PLR2004 - PTTL of a missing key
            "ttl_s": self.results_pttl / 1000 if self.results_pttl >= 0 else None,
        }

    def registry_json(self) -> dict[str, Any]:
        """The ``registry`` object: where RQ lists the job, and its score there."""
        return {
            "key": to_text(self.registry_key) if self.registry_key else None,
            "member": self.score is not None,
            "score": self.score,
            "newer_same_status": self.newer_same,
        }

    def rule_json(self, settings: Settings) -> dict[str, Any] | None:
        """The ``rule`` object: which retention applies to the job, and why."""
        if self.retention is None or self.queue is None or self.job.status is None:
            return None
        return {
            "age_rule": self.retention.age_rule,
            "retention_s": self.retention.max_age_s,
            "keep_last": self.retention.keep_last,
            "cap_rule": self.retention.cap_rule,
            "why": why(settings, self.queue, self.job.status),
        }


def _registry_score(
    client: redis.Redis, keys: Keyspace, registry: bytes, job: JobInfo
) -> float | None:
    """The job's score in its registry; started jobs are ``<id>`` (RQ 1) or ``<id>:<exec>`` (RQ 2+)."""
    score = client.zscore(registry, job.job_id)
    if score is None and job.status == "started":
        executions = cast(
            "list[bytes]", client.zrange(keys.executions(job.job_id), 0, -1)
        )
        for execution in executions:
            score = client.zscore(registry, keys.started_member(job.job_id, execution))
            if score is not None:
                break
    return None if score is None else float(score)


def _newer_same(
    client: redis.Redis, keys: Keyspace, facts: _Facts, retention: Retention
) -> int | None:
    """How many jobs of the same status are newer in the registry, counted up to ``keep_last``.

    That is what the cap counts (RQ's score order, newest first, as expire_jobs reads
    it). None without ``keep_last``, or when ``MAX_NEWER_READ`` entries do not decide it.
    """
    limit = retention.keep_last
    if limit is None or facts.registry_key is None or facts.score is None:
        return None
    rank = client.zrevrank(facts.registry_key, facts.job.job_id)
    if not isinstance(rank, int):
        return None
    same, start, wanted = 0, 0, (facts.job.status or "").encode()
    end = min(rank, MAX_NEWER_READ)
    while start < end and same < limit:
        stop = min(end, start + 500)
        members = cast(
            "list[bytes]", client.zrevrange(facts.registry_key, start, stop - 1)
        )
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.hget(keys.job(member), "status")
        same += sum(status == wanted for status in pipe.execute(raise_on_error=False))
        start = stop
    return same if same >= limit or rank <= MAX_NEWER_READ else None


def why(settings: Settings, queue: str, state: str) -> str:
    """In words, why ``retention_for`` picks the rule it picks for this queue and state."""
    source = settings.sources.get(f"retention.{state}", "default")
    for rule in settings.retention.rules:
        glob = next((g for g in rule.queues if fnmatchcase(queue, g)), None)
        if glob is None:
            continue
        head = f"retention.rules[{rule.index}] is the first rule matching {queue!r} (glob {glob!r})"
        if state in rule.ages:
            return f"{head} and it sets {state}"
        return f"{head}; it does not set {state}, so [retention] {state} applies (set by: {source}); later rules are not consulted"
    return f"no [[retention.rules]] entry matches {queue!r}, so [retention] {state} applies (set by: {source})"


def _rq_deletion(facts: _Facts) -> tuple[float | None, str]:
    """When RQ deletes the job hash, and why: the key's TTL, or never."""
    job, status = facts.job, facts.job.status or "unknown"
    if job.pttl_ms > 0:
        at = facts.now + job.pttl_ms / 1000
        if status == "finished":
            ttl = (
                job.result_ttl
                if job.result_ttl is not None
                else f"default {DEFAULT_RESULT_TTL}s"
            )
            return at, f"the key's TTL: result_ttl ({ttl}) after it ended"
        if status in ("failed", "stopped"):
            ttl = (
                format_duration(job.failure_ttl)
                if job.failure_ttl is not None
                else f"default {format_duration(DEFAULT_FAILURE_TTL)}"
            )
            return at, f"the key's TTL: failure_ttl ({ttl}) after it {status}"
        return at, f"the key's TTL (the job's ttl is {job.ttl})"
    return None, _rq_never(facts, status)


_RQ_NEVER = {
    "canceled": "never: RQ does not delete canceled jobs (rq#1647, every version to 3.x)",
    "failed": "never: the key has no TTL (failed on a worker with disable_default_exception_handler?)",
    "stopped": "never: the key has no TTL",
    "finished": "never: the key has no TTL",
    "unknown": "never: the key has no TTL",
}


def _rq_never(facts: _Facts, status: str) -> str:
    """Why RQ never deletes a job whose hash has no TTL."""
    job = facts.job
    if status == "finished" and job.result_ttl == -1:
        return "never: result_ttl=-1"
    if status in ("failed", "stopped") and job.failure_ttl == -1:
        return "never: failure_ttl=-1"
    if status == "started" and not facts.worker_dead:
        return "never while it runs (RQ persists a started job's key)"
    if status == "started":
        return (
            f"never as it is: its worker {facts.worker!r} is dead; a worker serving "
            f"{facts.queue!r} moves it to failed at its next maintenance (none, if no "
            "worker serves the queue), then failure_ttl applies"
        )
    return _RQ_NEVER.get(
        status, f"never: a {status} job has no TTL unless enqueued with ttl"
    )


def _janitor_never(facts: _Facts) -> str | None:  # noqa: PLR0911 - one return per check of expire_jobs
    """Why expire_jobs never deletes the job, or None when it does; its checks in order."""
    job, status = facts.job, facts.job.status
    if job.unreadable:
        return f"never: unreadable job field ({job.unreadable}); expire_jobs skips it"
    if status is None:
        return "never: the job hash has no status; expire_jobs skips it"
    if status == "started" and facts.worker_dead:
        return (
            f"never while started; recover_abandoned ({facts.abandoned_action}) acts "
            "on its second pass that finds the worker dead, then [retention] failed applies"
        )
    if status not in TERMINAL_STATES:
        return f"never: live job ({status}); only finished, failed, stopped and canceled jobs are deleted"
    if not facts.allowed:
        return f"never: queue {facts.queue!r} is outside [rq] queues"
    if facts.score is None:
        return f"never: not in {to_text(facts.registry_key or b'its registry')}; expire_jobs finds jobs through their registry"
    if facts.end is None:
        return "never: no end time to measure its age from"
    retention = cast("Retention", facts.retention)
    due_at = facts.end + retention.max_age_s
    if holds(
        child=facts.waiting_child, due_at=due_at, now=facts.now, bound_s=facts.bound
    ):
        child = to_text(cast("bytes", facts.waiting_child))
        return (
            f"kept: dependent {child} still waits (it may read this job); "
            f"{format_duration(facts.bound)} past its due time it goes anyway"
        )
    return None


UNLISTED = (
    "; its queue {queue!r} is no longer in rq:queues (Queue.delete() leaves the registries): "
    "the janitor finds it by its unlisted-queue SCAN"
)
"""Added to the janitor's reason for a job of an unlisted queue (docs/keyspace.md, "Leaks RQ leaves", item 13)."""


def _janitor_deletion(facts: _Facts) -> tuple[float | None, str]:
    """When expire_jobs deletes the job, and why; where its queue is unlisted, that too."""
    at, reason = _janitor_reason(facts)
    if facts.listed is False and facts.allowed:
        reason += UNLISTED.format(queue=facts.queue)
    return at, reason


def _janitor_reason(facts: _Facts) -> tuple[float | None, str]:
    """When expire_jobs deletes the job (due by keep_last, or by age), and why."""
    never = _janitor_never(facts)
    if never is not None:
        return None, never
    status = cast("str", facts.job.status)
    retention = cast("Retention", facts.retention)
    limit = retention.keep_last
    capped = (
        limit is not None and facts.newer_same is not None and facts.newer_same >= limit
    )
    verdict = expiry(end=facts.end, retention=retention, capped=capped, now=facts.now)
    if verdict.due and verdict.rule == retention.cap_rule:
        return (
            facts.now,
            f"beyond the newest {limit} {status} jobs of its queue ({retention.cap_rule}): at the next expire_jobs run",
        )
    at = cast("float", verdict.at)
    reason = f"{format_duration(retention.max_age_s)} after it {ENDED[status]} ({retention.age_rule})"
    if verdict.due:
        reason += ": overdue, at the next expire_jobs run"
    return at, reason
