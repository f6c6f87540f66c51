"""Task ``expire_jobs``: plan the complete deletion of terminal jobs past their retention."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from janitor.actions import Action, DeleteJob, Skip
from janitor.audit import get_logger
from janitor.dependencies import (
    LIVE_READ_CAP,
    Waiting,
    dependents_bound,
    holds,
    read_waiting,
    waiting_child,
)
from janitor.expiry import REGISTRIES, expiry, terminal_end
from janitor.jobs import JOB_FIELDS, FieldError, JobFields
from janitor.keyspace import to_text
from janitor.policy import retention_for
from janitor.tasks.base import Decision, TaskContext
from janitor.tasks.expire_jobs.fast import Cleanup, Judge, ScanPage, Sweep
from janitor.tasks.expire_jobs.memory import plan_memory
from janitor.tasks.expire_jobs.registry import CapBoundary, Registry
from janitor.tasks.ratelimits import plan_release
from janitor.unlisted import Unlisted, every_queue, find_unlisted

log = get_logger(__name__)

PROTECTED_MAX = 1_000
"""Above this many parents a live job depends on, a run takes the reference plan: the fast
path's every page would carry their ids."""

NAME = "expire_jobs"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One registry entry and what the read pipeline returned for its job."""

    job_id: bytes
    raw_score: bytes
    fields: object
    dependents: object
    executions: object


class ExpireJobs:
    """Deletes finished, failed, stopped and canceled jobs older than their retention."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield a ``job_deleted`` action per terminal job past its age rule or cap."""
        unlisted = find_unlisted(ctx.client, ctx.keys, ctx.now, task=NAME)
        hold = _Hold.read(ctx, unlisted)
        for reg in _registries(ctx, unlisted):
            yield from self._plan_registry(ctx, reg, hold=hold)
        # the memory pass needs the engine to apply each batch before it reads
        # used_memory again (a Barrier): it is part of ``decide`` only
        yield from unlisted.bookkeeping

    def decide(self, ctx: TaskContext) -> Iterator[Action | Skip | Decision]:
        """Like ``plan``, but hand the registries to ``EXPIRE_TERMINAL_JOBS`` page by page.

        The script scans them itself and deletes the plain cases, judging them by the
        same rules in the same atomic step; only what it answers back is read and planned
        here, the ordinary way. Empty registries are left out, and one page may cover
        many small ones (per_job queues). Each page must be sent before the next one is
        asked for: it starts where the answer of the one before left off.
        """
        unlisted = find_unlisted(ctx.client, ctx.keys, ctx.now, task=NAME)
        hold = _Hold.read(ctx, unlisted)
        if len(hold.waiting.by_parent) > PROTECTED_MAX:
            # every page would carry them all: the reference plan is cheaper then
            log.info("fast_path_off", task=NAME, parents=len(hold.waiting.by_parent))
            for reg in _registries(ctx, unlisted):
                yield from self._plan_registry(ctx, reg, hold=hold)
            yield from self._plan_memory(ctx, unlisted, hold)
            yield from unlisted.bookkeeping
            return
        sweep = Sweep(
            ctx,
            _registries(ctx, unlisted),
            lambda reg: Judge.of(ctx, reg, _cap_boundaries(ctx, reg)),
            (
                functools.partial(self._plan_page, hold=hold),
                functools.partial(self._plan_registry, hold=hold),
            ),
            protected=sorted(hold.waiting.by_parent),
        )
        try:
            while sweep.more():
                page = ScanPage(sweep)
                yield page
                if not page.sent:
                    msg = "each page of the fast path must be sent before the next is made"
                    raise RuntimeError(msg)
            yield Cleanup(sweep.memos, sweep.close)
        finally:
            sweep.close()
        yield from self._plan_memory(ctx, unlisted, hold)
        yield from unlisted.bookkeeping

    def _plan_memory(
        self, ctx: TaskContext, unlisted: Unlisted, hold: _Hold
    ) -> Iterator[Action | Skip | Decision]:
        """While over ``[memory] budget``: jobs beyond their age rules (``memory``)."""

        def plan_page(
            ctx: TaskContext, reg: Registry, page: Sequence[tuple[bytes, bytes]]
        ) -> Iterator[Action | Skip]:
            return self._plan_page(ctx, reg, {}, page, hold=hold)

        yield from plan_memory(ctx, _registries(ctx, unlisted), plan_page)

    def _plan_registry(
        self, ctx: TaskContext, reg: Registry, *, hold: _Hold
    ) -> Iterator[Action | Skip]:
        caps = _cap_boundaries(ctx, reg)
        cursor = 0
        while True:
            cursor, page = ctx.client.zscan(
                reg.key, cursor, count=ctx.page_size, score_cast_func=bytes
            )
            if page:
                yield from self._plan_page(
                    ctx, reg, caps, cast("list[tuple[bytes, bytes]]", page), hold=hold
                )
            if cursor == 0:
                return

    def _plan_page(
        self,
        ctx: TaskContext,
        reg: Registry,
        caps: Mapping[str, CapBoundary],
        page: Sequence[tuple[bytes, bytes]],
        *,
        hold: _Hold,
    ) -> Iterator[Action | Skip]:
        pipe = ctx.client.pipeline(transaction=False)
        for job_id, _ in page:
            pipe.hmget(ctx.keys.job(job_id), JOB_FIELDS)
            pipe.scard(ctx.keys.dependents(job_id))
            pipe.zrange(ctx.keys.executions(job_id), 0, -1)
        replies = pipe.execute(raise_on_error=False)
        for index, (job_id, raw_score) in enumerate(page):
            fields, dependents, executions = replies[3 * index : 3 * index + 3]
            yield from self._plan_job(
                ctx,
                reg,
                caps,
                _Entry(job_id, raw_score, fields, dependents, executions),
                hold,
            )

    def _plan_job(  # noqa: PLR0911 - one early return per reason to leave a job alone
        self,
        ctx: TaskContext,
        reg: Registry,
        caps: Mapping[str, CapBoundary],
        entry: _Entry,
        hold: _Hold,
    ) -> Iterator[Action | Skip]:
        job_id, raw_score = entry.job_id, entry.raw_score
        where = {"queue": reg.name, "job_id": to_text(job_id), "registry": reg.kind}
        if any(
            isinstance(r, Exception)
            for r in (entry.fields, entry.dependents, entry.executions)
        ):
            yield Skip(NAME, "a key of the job has the wrong type", where)
            return
        job = JobFields.from_reply(job_id, cast("list[bytes | None]", entry.fields))
        if not job.exists:
            return  # a dangling registry entry: clean_registries' business, not a job to delete
        try:
            status = job.status
            end = terminal_end(reg.kind, float(raw_score), job)
        except FieldError as err:
            yield Skip(NAME, f"unreadable job field: {err}", where)
            return
        if status is None:
            yield Skip(NAME, "job hash has no status", where)
            return
        if status not in reg.retentions:
            return  # re-enqueued or repeating: the job lives on elsewhere
        if job.raw_origin != reg.queue:
            yield Skip(NAME, "job origin differs from its registry's queue", where)
            return
        if end is None:
            yield Skip(NAME, "no end time to measure the job's age from", where)
            return
        cap = caps.get(status)
        capped = cap is not None and (float(raw_score), job_id) < cap
        verdict = expiry(
            end=end, retention=reg.retentions[status], capped=capped, now=ctx.now
        )
        if not verdict.due:
            return
        child = hold.child(ctx, job_id, int(cast("int", entry.dependents)))
        if hold.keeps(child, verdict.at or ctx.now, ctx.now, where):
            yield Skip(NAME, "dependents still wait on this job", where)
            return
        event = {
            "queue": reg.name,
            "job_id": to_text(job_id),
            "status": status,
            "age_s": int(cast("float", verdict.age_s)),
            "rule": verdict.rule,
        }
        write = _delete_write(ctx, reg, job, entry, check_children=child is None)
        yield Action(NAME, "job_deleted", event, write)
        yield from _release(ctx, reg, job)


def _release(ctx: TaskContext, reg: Registry, job: JobFields) -> Iterator[Action]:
    """RQ's ``release_stale_and_enqueue`` after the delete (applied after it, in plan order)."""
    if job.rate_limit_key:
        yield from plan_release(ctx, NAME, job.job_id, reg.queue, job.rate_limit_key)


@dataclass(frozen=True, slots=True)
class _Hold:
    """What keeps a parent: the live jobs that depend on it, for at most ``bound`` seconds."""

    waiting: Waiting
    bound: int

    @classmethod
    def read(cls, ctx: TaskContext, unlisted: Unlisted) -> _Hold:
        """Read every queue's live jobs' parents (all queues: a child may live anywhere)."""
        queues = every_queue(ctx.client, ctx.keys, unlisted)
        waiting = read_waiting(ctx.client, ctx.keys, queues)
        if not waiting.complete:
            log.warning("dependents_index_incomplete", task=NAME, cap=LIVE_READ_CAP)
        return cls(waiting, dependents_bound(ctx.settings.retention))

    def keeps(
        self, child: bytes | None, due_at: float, now: float, where: dict[str, str]
    ) -> bool:
        """Whether a waiting ``child`` keeps a parent due since ``due_at`` (``dependencies.holds``; warn when no longer)."""
        if child is None:
            return False
        where["dependent"] = to_text(child)
        if holds(child=child, due_at=due_at, now=now, bound_s=self.bound):
            return True
        log.warning(
            "parent_deleted_while_dependent_waits",
            task=NAME,
            bound_s=self.bound,
            **where,
        )
        return False

    def child(self, ctx: TaskContext, job_id: bytes, dependents: int) -> bytes | None:
        """A dependent still waiting on ``job_id`` (``dependencies.waiting_child``), if any."""
        if not dependents and job_id not in self.waiting.by_parent:
            return None
        return waiting_child(ctx.client, ctx.keys, job_id, self.waiting)


def _delete_write(
    ctx: TaskContext,
    reg: Registry,
    job: JobFields,
    entry: _Entry,
    *,
    check_children: bool,
) -> DeleteJob:
    keys, job_id = ctx.keys, job.job_id
    executions = cast("list[bytes]", entry.executions)
    statuses = tuple(state.encode() for state in reg.retentions)
    return DeleteJob(
        job_id=job_id,
        job_key=keys.job(job_id),
        registry=reg.key,
        started=keys.started(reg.queue),
        dependents=keys.dependents(job_id),
        statuses=statuses,
        origin=reg.queue,
        ended_at=job.raw_ended_at or b"",
        score=entry.raw_score,
        dependents_count=int(cast("int", entry.dependents)),
        check_children=check_children,
        group=keys.group(job.group_id) if job.group_id else None,
        side_keys=(
            keys.dependencies(job_id),
            keys.results(job_id),
            keys.executions(job_id),
        ),
        execution_keys=tuple(keys.execution(job_id, e) for e in executions),
        started_members=(job_id, *(keys.started_member(job_id, e) for e in executions)),
    )


def _cap_boundaries(ctx: TaskContext, reg: Registry) -> dict[str, CapBoundary]:
    """Find, per capped state, the newest registry entry beyond its ``keep_last`` newest.

    Reads the registry newest first (by RQ's score) and only the ``status`` of each job,
    so memory stays bounded; an entry re-read because the registry shifted is ignored.
    """
    wanted = {
        s: r.keep_last for s, r in reg.retentions.items() if r.keep_last is not None
    }
    found: dict[str, CapBoundary] = {}
    if not wanted:
        return found
    counts = dict.fromkeys(wanted, 0)
    previous: CapBoundary | None = None
    start = 0
    while len(found) < len(wanted):
        page = cast(
            "list[tuple[bytes, float]]",
            ctx.client.zrevrange(
                reg.key, start, start + ctx.page_size - 1, withscores=True
            ),
        )
        if not page:
            break
        start += len(page)
        pipe = ctx.client.pipeline(transaction=False)
        for member, _ in page:
            pipe.hget(ctx.keys.job(member), "status")
        for (member, score), raw in zip(
            page, pipe.execute(raise_on_error=False), strict=True
        ):
            entry = (score, member)
            if previous is not None and entry >= previous:
                continue
            previous = entry
            state = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
            if state in counts and state not in found:
                counts[state] += 1
                if counts[state] == wanted[state]:
                    found[state] = entry
    return found


def _registries(ctx: TaskContext, unlisted: Unlisted) -> Iterator[Registry]:
    """Every terminal registry of every queue the run may write, listed or not, in contract order."""
    for queue in every_queue(ctx.client, ctx.keys, unlisted):
        name = to_text(queue)
        if not ctx.allows_queue(name):
            continue
        for kind, statuses in REGISTRIES:
            key = cast("bytes", getattr(ctx.keys, kind)(queue))
            retentions = {
                s: retention_for(ctx.settings.retention, name, s) for s in statuses
            }
            yield Registry(queue, name, kind, key, retentions)
