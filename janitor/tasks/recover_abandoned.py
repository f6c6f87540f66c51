"""Task ``recover_abandoned``: fail, requeue or report started jobs whose worker is provably dead.

A job counts as abandoned when all of this holds: its status is ``started``; its
started-registry entry is past its deadline (RQ refreshes the deadline with every
heartbeat, so a live worker keeps it in the future); the worker named in the job is
provably dead by ``liveness.judge`` (its hash expired, or a zombie past ``[workers]
dead_after``, and in both cases nobody on its command channel and no live execution of
it); and on RQ 2+ the job's own execution hash has expired. The first pass
that sees this only records the job as a suspect under ``janitor:suspects:<q>``; the next
pass acts when the evidence is unchanged, re-checking all of it atomically. That second
look guards against a worker that re-registered in between.

The data transition mirrors RQ's ``StartedJobRegistry.cleanup``: a job with retries left is
retried (enqueued, or scheduled after its retry interval), others move to the failed
registry with their failure TTL, a failure result (RQ 2+ data) and the started-registry
entry and execution removed. RQ also runs failure callbacks, exception handlers and
webhooks there, and enqueues dependents that allow failure: those need the user's code
and are not done here.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from janitor.actions import Action, RecordSuspects, RecoverJob, Skip
from janitor.jobs import (
    DEFAULT_FAILURE_TTL,
    FieldError,
    format_rq_time,
    parse_int,
    parse_text,
)
from janitor.keyspace import to_text
from janitor.liveness import Recheck, judge, read_workers
from janitor.tasks.base import TaskContext
from janitor.tasks.dependents import plan_dependents
from janitor.tasks.ratelimits import plan_release
from janitor.unlisted import every_queue, find_unlisted

NAME = "recover_abandoned"

FIELDS = (
    "status",
    "origin",
    "worker_name",
    "retries_left",
    "retry_intervals",
    "failure_ttl",
    "rate_limit_key",
)
"""The job fields this task reads (never payloads)."""

SUSPECTS_TTL_S = 86_400
"""Suspects not confirmed within a day are forgotten."""

ABANDONED_MESSAGE = "Moved to FailedJobRegistry, due to AbandonedJobError, at {at}"
"""The failure text RQ records for an abandoned job (RQ 3's wording)."""


@dataclass(frozen=True, slots=True)
class _Started:
    """One expired started-registry entry and what was read about its job."""

    member: bytes
    score: bytes
    job_id: bytes
    execution_id: bytes | None
    fields: Sequence[bytes | None]
    suspect: bytes | None


class RecoverAbandoned:
    """Recovers started jobs of dead workers, confirmed over two passes."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield recoveries for confirmed suspects, and bookkeeping for new ones.

        Unlisted queues too, those the janitor has recorded: this task runs every minute,
        so it leaves the SCAN that finds them to ``expire_jobs`` and ``clean_registries``.
        """
        unlisted = find_unlisted(
            ctx.client, ctx.keys, ctx.now, task=NAME, keys_per_run=0
        )
        for queue in every_queue(ctx.client, ctx.keys, unlisted):
            if ctx.allows_queue(to_text(queue)):
                yield from self._plan_queue(ctx, queue)
        yield from unlisted.bookkeeping

    def _plan_queue(self, ctx: TaskContext, queue: bytes) -> Iterator[Action | Skip]:
        offset = 0
        while True:
            page = cast(
                "list[tuple[bytes, bytes]]",
                ctx.client.zrangebyscore(
                    ctx.keys.started(queue),
                    0,
                    ctx.now,
                    start=offset,
                    num=ctx.page_size,
                    withscores=True,
                    score_cast_func=bytes,
                ),
            )
            if not page:
                return
            offset += len(page)
            yield from self._plan_page(ctx, queue, _read_entries(ctx, queue, page))

    def _plan_page(
        self, ctx: TaskContext, queue: bytes, entries: Sequence[_Started]
    ) -> Iterator[Action | Skip]:
        names = [e.fields[2] for e in entries if e.fields[2]]
        workers = read_workers(ctx.client, ctx.keys, names)
        live_executions = _live_executions(ctx, entries)
        new_suspects: list[tuple[bytes, bytes]] = []
        for entry in entries:
            where = {"queue": to_text(queue), "job_id": to_text(entry.job_id)}
            try:
                status, origin, worker_name = (
                    parse_text(entry.fields[i]) for i in range(3)
                )
            except FieldError as err:
                yield Skip(NAME, f"unreadable job field: {err}", where)
                continue
            if status != "started" or entry.member in live_executions:
                continue  # not abandoned: finished meanwhile (rq#2424 leftovers), or still running
            if origin != to_text(queue) or not worker_name:
                yield Skip(NAME, "started job names no worker or another queue", where)
                continue
            worker = workers[cast("bytes", entry.fields[2])]
            verdict = judge(worker, ctx.now, ctx.settings.workers.dead_after)
            if not verdict.dead:
                continue
            recheck = Recheck.of(worker, verdict, ctx.keys)
            fingerprint = b"|".join(
                [worker_name.encode(), entry.score, recheck.reason, recheck.heartbeat]
            )
            if entry.suspect != fingerprint:
                new_suspects.append((entry.member, fingerprint))
                continue
            try:
                action = self._recover(ctx, queue, entry, recheck, fingerprint)
            except (FieldError, ValueError) as err:
                yield Skip(NAME, f"unreadable retry fields: {err}", where)
                continue
            yield action
            yield from _afterwards(ctx, queue, entry, action)
        if new_suspects:
            record = RecordSuspects(
                ctx.keys.abandoned_suspects(queue), tuple(new_suspects), SUSPECTS_TTL_S
            )
            yield Action(NAME, None, {}, record)

    def _recover(
        self,
        ctx: TaskContext,
        queue: bytes,
        entry: _Started,
        worker: Recheck,
        fingerprint: bytes,
    ) -> Action:
        worker_name = cast("bytes", entry.fields[2])
        event = {
            "queue": to_text(queue),
            "job_id": to_text(entry.job_id),
            "worker": to_text(worker_name),
        }
        configured = ctx.settings.abandoned.action
        if configured == "report":
            return Action(NAME, "job_abandoned", {**event, "action": "reported"}, None)
        retries_left = parse_int(entry.fields[3])
        mode, at, retries = (
            ("enqueue", 0.0, b"") if configured == "requeue" else ("fail", 0.0, b"")
        )
        if configured == "fail" and retries_left is not None and retries_left > 0:
            interval = _retry_interval(entry.fields[4], retries_left)
            mode, at = (
                ("schedule", ctx.now + interval) if interval else ("enqueue", 0.0)
            )
            retries = str(retries_left - 1).encode()
        failure_ttl = parse_int(entry.fields[5])
        keys = ctx.keys
        write = RecoverJob(
            keys={
                "job": keys.job(entry.job_id),
                "started": keys.started(queue),
                "worker": keys.worker(worker_name),
                "execution": keys.execution(entry.job_id, entry.execution_id or b""),
                "executions": keys.executions(entry.job_id),
                "worker_execs": worker.executions,
                "suspects": keys.abandoned_suspects(queue),
                "failed": keys.failed(queue),
                "queue": keys.queue(queue),
                "queues": keys.queues(),
                "scheduled": keys.scheduled(queue),
                "dependents": keys.dependents(entry.job_id),
                "dependencies": keys.dependencies(entry.job_id),
                "results": keys.results(entry.job_id),
            },
            args={
                "member": entry.member,
                "id": entry.job_id,
                "exec_id": entry.execution_id or b"",
                "score": entry.score,
                "worker_state": worker.reason,
                "heartbeat": worker.heartbeat,
                "fingerprint": fingerprint,
                "mode": mode.encode(),
                "ttl": str(
                    DEFAULT_FAILURE_TTL if failure_ttl is None else failure_ttl
                ).encode(),
                "now_text": format_rq_time(ctx.now).encode(),
                "at": repr(at).encode(),
                "retries": retries,
                "queue_key": keys.queue(queue),
                "exc": _failure_result(ctx.now)
                if entry.execution_id is not None
                else b"",
                "channel": worker.channel,
                "execution_head": worker.execution_head,
            },
        )
        action = "failed" if mode == "fail" else "requeued"
        return Action(NAME, "job_abandoned", {**event, "action": action}, write)


def _afterwards(
    ctx: TaskContext, queue: bytes, entry: _Started, action: Action
) -> Iterator[Action | Skip]:
    """What RQ does after it fails or retries an abandoned job, applied after it in plan order.

    A failure enqueues the dependents that accept it (``tasks.dependents``); the job's rate
    limit slot is freed unless it went back to its queue (``tasks.ratelimits``, the
    script checks the status).
    """
    if action.fields["action"] == "failed":
        yield from plan_dependents(ctx, NAME, entry.job_id, parent_status="failed")
    limit = entry.fields[6]
    if limit and action.write is not None:
        yield from plan_release(ctx, NAME, entry.job_id, queue, limit)


def _read_entries(
    ctx: TaskContext, queue: bytes, page: Sequence[tuple[bytes, bytes]]
) -> list[_Started]:
    """Read each member's job fields, telling RQ 1's ``<id>`` from RQ 2's ``<id>:<exec>``.

    RQ 1 ids may contain ``:``, so a member counts as composite only when no job hash
    exists under the whole member and one exists under the part before the last colon.
    """
    pipe = ctx.client.pipeline(transaction=False)
    for member, _ in page:
        pipe.hmget(ctx.keys.job(member), FIELDS)
        pipe.hmget(ctx.keys.job(member.rpartition(b":")[0]), FIELDS)
        pipe.hget(ctx.keys.abandoned_suspects(queue), member)
    replies = pipe.execute(raise_on_error=False)
    entries = []
    for index, (member, score) in enumerate(page):
        whole, head, suspect = replies[3 * index : 3 * index + 3]
        whole = whole if isinstance(whole, list) else [None] * len(FIELDS)
        head = head if isinstance(head, list) else [None] * len(FIELDS)
        composite = b":" in member and whole[0] is None and head[0] is not None
        job_id, _, execution_id = (
            member.rpartition(b":") if composite else (member, b"", b"")
        )
        fields = head if composite else whole
        entries.append(
            _Started(
                member,
                score,
                job_id,
                execution_id if composite else None,
                fields,
                cast("bytes | None", suspect),
            )
        )
    return entries


def _live_executions(ctx: TaskContext, entries: Sequence[_Started]) -> set[bytes]:
    """The members whose RQ 2+ execution hash still exists: a live execution."""
    composite = [e for e in entries if e.execution_id is not None]
    pipe = ctx.client.pipeline(transaction=False)
    for entry in composite:
        pipe.exists(ctx.keys.execution(entry.job_id, cast("bytes", entry.execution_id)))
    return {
        e.member for e, alive in zip(composite, pipe.execute(), strict=True) if alive
    }


def _retry_interval(raw: bytes | None, retries_left: int) -> int:
    """RQ's ``Job.get_retry_interval``: the interval for the retry about to happen."""
    if not raw:
        return 0
    intervals = json.loads(raw)
    if (
        not isinstance(intervals, list)
        or not intervals
        or not all(isinstance(i, int) for i in intervals)
    ):
        msg = "retry_intervals is not a list of integers"
        raise ValueError(msg)
    return int(intervals[max(len(intervals) - retries_left, 0)])


def _failure_result(now: float) -> bytes:
    """The ``exc_string`` of a failure result as RQ stores it: base64 of zlib-compressed text."""
    text = ABANDONED_MESSAGE.format(at=format_rq_time(now))
    return base64.b64encode(zlib.compress(text.encode()))
