"""``expire_jobs``' memory pass: while Redis is over ``[memory] budget``, terminal jobs go beyond their age rules.

After its ordinary pass, ``expire_jobs`` reads ``INFO memory``; over the budget
(``janitor.memory``) it gathers, from the front (lowest score) of every terminal registry
of every allowed queue, at most ``PER_REGISTRY`` jobs each (and again, round after round), planned the ordinary way with
``[memory] keep_for`` as the age rule of every state (``memory.budget`` in the audit line):
everything else stays as for any delete (never a live job, dependents that wait, the
atomic re-check, the lease, the allowlist). They go oldest ended first, ``BATCH`` jobs at a
time; after each batch the engine applies it (``Barrier``) and ``used_memory`` is read
again, until it is under the target (``memory.target``). A dry run deletes nothing, so
there the figure goes down by the ``MEMORY USAGE`` of what would have gone. When the
candidates run out over the budget, it says so once (``memory_budget_unreachable``).
A registry's front is its oldest by RQ's score (the end plus the job's TTL), so across
jobs of different TTLs "oldest ended first" holds among the jobs gathered (and the registries are gone through
``GROUP`` at a time, so with many queues it holds within each group); jobs kept for
ever share one score (``+inf`` for ``result_ttl=-1``, ``-1`` for ``failure_ttl=-1``), and
Redis orders those by id, not by age.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from janitor.actions import Action, DeleteJob, Skip
from janitor.audit import get_logger
from janitor.batches import chunks
from janitor.jobs import format_rq_time
from janitor.leader import Fence
from janitor.memory import RULE, budget_bytes, read_usage, target
from janitor.policy import Retention
from janitor.tasks.base import Decided, Decision, TaskContext
from janitor.tasks.expire_jobs.registry import Registry

PER_REGISTRY = 200
"""Jobs gathered from the front of each terminal registry per round."""
BATCH = 200
"""Jobs deleted between two readings of ``used_memory``."""
MAX_ROUNDS = 1_000
"""Rounds of gathering per group of registries at most (``PER_REGISTRY`` jobs of each per round)."""
GROUP = 50
"""Registries gathered together (at most ``GROUP * PER_REGISTRY`` jobs held at once): many
small queues (actinia's per_job ones) are gone through group by group."""

log = get_logger(__name__)

PagePlanner = Callable[
    [TaskContext, Registry, Sequence[tuple[bytes, bytes]]], Iterator[Action | Skip]
]
"""Plans one page of a registry the ordinary way (``ExpireJobs._plan_page``, hold bound)."""


@dataclass(frozen=True, slots=True)
class Barrier:
    """A decision with nothing to judge: the engine applies every action planned before it first."""

    def __len__(self) -> int:
        """Nothing to judge."""
        return 0

    def send(
        self,
        client: redis.Redis,  # noqa: ARG002 - the protocol's signature
        fence: Fence | None,  # noqa: ARG002 - as above
        *,
        dry_run: bool,  # noqa: ARG002 - as above
    ) -> Callable[[], Decided]:
        """Nothing to send."""
        return lambda: Decided((), ())


def plan_memory(
    ctx: TaskContext, registries: Iterable[Registry], plan_page: PagePlanner
) -> Iterator[Action | Skip | Decision]:
    """Delete for memory while over the budget (see the module); nothing when under it."""
    usage = read_usage(ctx.client)
    budget = budget_bytes(ctx.settings.memory, usage.maxmemory)
    if budget is None or usage.used <= budget:
        return
    goal = target(budget)
    keep = ctx.settings.memory.keep_for
    state = _Progress()
    for group in _groups(registries):
        chosen = [_for_memory(reg, keep) for reg in group]
        yield from _rounds(ctx, chosen, plan_page, state, goal)
        if state.under(ctx, goal):
            return
    log.warning(
        "memory_budget_unreachable",
        task="expire_jobs",
        used_memory=read_usage(ctx.client).used - state.freed,
        budget=budget,
        deleted=state.done,
    )


@dataclass
class _Progress:
    """What the pass deleted so far, and (dry run) the bytes that would have been freed."""

    done: int = 0
    freed: int = 0
    reached: bool = False

    def under(self, ctx: TaskContext, goal: int) -> bool:
        """Whether ``used_memory`` (less what a dry run would have freed) is at the goal."""
        self.reached = self.reached or read_usage(ctx.client).used - self.freed <= goal
        return self.reached


def _groups(registries: Iterable[Registry]) -> Iterator[list[Registry]]:
    """The registries, ``GROUP`` at a time: what one round gathers stays bounded."""
    group: list[Registry] = []
    for reg in registries:
        group.append(reg)
        if len(group) == GROUP:
            yield group
            group = []
    if group:
        yield group


def _rounds(
    ctx: TaskContext,
    chosen: Sequence[Registry],
    plan_page: PagePlanner,
    state: _Progress,
    goal: int,
) -> Iterator[Action | Skip | Decision]:
    """Delete from one group's fronts, round after round, oldest ended first, until under the goal."""
    kept: set[bytes] = set()
    # each round takes the new fronts (what the round before deleted is gone); a dry
    # run deletes nothing, so it has one round; a job a re-check kept (still there after
    # its round) is not tried again, so a round only holds its own jobs: memory stays flat
    for _ in range(1 if ctx.dry_run else MAX_ROUNDS):
        jobs = [j for j in _gather(ctx, chosen, plan_page) if j.job_key not in kept]
        if not jobs:
            return
        jobs.sort(key=lambda job: job.ended)
        for batch in chunks(jobs, BATCH):
            for job in batch:
                yield from job.actions
            yield Barrier()
            state.done += len(batch)
            if ctx.dry_run:
                state.freed += _size(ctx, batch)
            if state.under(ctx, goal):
                return
        kept |= _still_there(ctx, jobs)


def _still_there(ctx: TaskContext, jobs: Sequence[_Job]) -> set[bytes]:
    """The job hashes of ``jobs`` that exist after their round (their delete was refused)."""
    pipe = ctx.client.pipeline(transaction=False)
    for job in jobs:
        pipe.exists(job.job_key)
    return {j.job_key for j, n in zip(jobs, pipe.execute(), strict=True) if n}


@dataclass(frozen=True, slots=True)
class _Job:
    """One job the memory pass would delete: when it ended and its actions (the delete first)."""

    ended: bytes
    """RQ's ``utcformat`` of its end: fixed width, so it sorts in time order."""
    job_key: bytes
    actions: tuple[Action | Skip, ...]


def _for_memory(reg: Registry, keep_for: int) -> Registry:
    """The registry with ``keep_for`` as the age rule of every state, and no cap."""
    retention = Retention(keep_for, RULE, None, None)
    return Registry(
        reg.queue, reg.name, reg.kind, reg.key, dict.fromkeys(reg.retentions, retention)
    )


def _gather(
    ctx: TaskContext, registries: Sequence[Registry], plan_page: PagePlanner
) -> list[_Job]:
    """Plan the front of every registry; group the actions by job."""
    pipe = ctx.client.pipeline(transaction=False)
    for reg in registries:
        pipe.zrange(
            reg.key, 0, PER_REGISTRY - 1, withscores=True, score_cast_func=bytes
        )
    fronts = pipe.execute(raise_on_error=False)
    jobs: list[_Job] = []
    for reg, front in zip(registries, fronts, strict=True):
        if not isinstance(front, list) or not front:
            continue
        current: list[Action | Skip] = []
        for item in plan_page(ctx, reg, cast("list[tuple[bytes, bytes]]", front)):
            if isinstance(item, Action) and item.event == "job_deleted":
                if current:
                    jobs.append(_job(ctx, current))
                current = [item]
            elif current:
                current.append(item)
        if current:
            jobs.append(_job(ctx, current))
    return jobs


def _job(ctx: TaskContext, actions: list[Action | Skip]) -> _Job:
    first = cast("Action", actions[0])
    job_id = str(first.fields["job_id"])
    ended = cast("DeleteJob", first.write).ended_at
    if not ended:  # canceled and some stopped jobs: their age counts from elsewhere
        age = float(cast("int", first.fields["age_s"]))
        ended = format_rq_time(ctx.now - age).encode()
    return _Job(ended, ctx.keys.job(job_id), tuple(actions))


def _size(ctx: TaskContext, batch: Sequence[_Job]) -> int:
    """What the batch's job hashes and result streams take (``MEMORY USAGE``), for a dry run."""
    pipe = ctx.client.pipeline(transaction=False)
    for job in batch:
        pipe.memory_usage(job.job_key)
        pipe.memory_usage(ctx.keys.results(job.job_key[len(ctx.keys.job(b"")) :]))
    return sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))
