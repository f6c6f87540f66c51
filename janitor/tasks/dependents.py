"""The dependents of a job the janitor ended: enqueued as RQ's ``Queue.enqueue_dependents`` would.

When ``recover_abandoned`` fails an abandoned job, RQ's own failure handling (a worker's
``handle_job_failure``; RQ 2.0+'s started-registry cleanup too, rq#2006) would then
enqueue the job's dependents that accept its failure; RQ 1.16's started-registry cleanup
forgot to, which is RQ's bug, not its intent. So after the failure, for each member of the
job's dependents set (at most ``MAX_CHILDREN_CHECKED``) this plans, if
``janitor.dependencies.verdict`` says it is ready with the job failed, what
``enqueue_dependents`` does: the ``dependent_enqueued`` event and a write that re-checks
every fact atomically (``scripts.ENQUEUE_DEPENDENTS``), applied after the failure in plan
order. RQ 3 passes such a job through its ready registry and enqueues it at once; the end
state is the same. The others stay deferred, as in RQ (``report`` lists those that can
never run). A rate-limited dependent (RQ 3) is left for RQ's rate limiter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch, Skip
from janitor.dependencies import Deferred, Verdict, read_deferred
from janitor.jobs import MAX_CHILDREN_CHECKED, format_rq_time
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext
from janitor.tasks.ready import DEFAULT_TIMEOUT_S

EVENT = "dependent_enqueued"


@dataclass(frozen=True, slots=True)
class DeferredWrite(ScriptBatch):
    """A write on one deferred job whose script re-checks its planned parents (``parents_as_planned``).

    The subclass names its script (``source``) and the per-job layout (``item``); the
    parents (job hash, id, planned status) follow that layout in KEYS and ARGV.
    """

    keys: dict[str, bytes]
    args: dict[str, Arg]
    parents: tuple[tuple[bytes, bytes, bytes], ...]
    """(job hash, id, planned status as ``+<status>`` or empty) per parent."""

    item: ClassVar[scripts.Slots]

    @staticmethod
    def planned(
        ctx: TaskContext, job: Deferred
    ) -> tuple[tuple[bytes, bytes, bytes], ...]:
        """``parents`` for a job as ``dependencies.read_deferred`` judged it."""
        return tuple(
            (ctx.keys.job(parent), parent, scripts.present(status))
            for parent, status in sorted(job.parents.items())
        )

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``item``, then the parents."""
        keys, args = self.item.encode(
            self.keys, {**self.args, "nparents": len(self.parents)}
        )
        keys += [key for key, _, _ in self.parents]
        for _, parent_id, status in self.parents:
            args += [parent_id, status]
        return keys, args


@dataclass(frozen=True, slots=True)
class EnqueueDependent(DeferredWrite):
    """Enqueue one deferred job if every planned fact still holds; see ``scripts.ENQUEUE_DEPENDENTS``."""

    source: ClassVar[str] = scripts.ENQUEUE_DEPENDENTS
    what: ClassVar[str] = "dependent enqueues"
    item: ClassVar[scripts.Slots] = scripts.DEPENDENT


def plan_dependents(
    ctx: TaskContext, task: str, parent: bytes, *, parent_status: str
) -> Iterator[Action | Skip]:
    """Plan the enqueue of ``parent``'s dependents that are ready once it has ``parent_status``."""
    children = cast(
        "list[bytes]",
        ctx.client.srandmember(ctx.keys.dependents(parent), MAX_CHILDREN_CHECKED + 1),
    )
    if len(children) > MAX_CHILDREN_CHECKED:
        where = {"job_id": to_text(parent)}
        yield Skip(task, "too many dependents to enqueue them one by one", where)
        return
    assume = {parent: parent_status.encode()}
    for child in read_deferred(ctx.client, ctx.keys, children, assume=assume):
        yield from _plan_child(ctx, task, child, parent=parent)


def _plan_child(
    ctx: TaskContext, task: str, child: Deferred, *, parent: bytes
) -> Iterator[Action | Skip]:
    origin = child.origin
    if origin is None or parent not in child.parents:
        return  # not waiting on this parent (RQ would not enqueue it either)
    if not ctx.allows_queue(to_text(origin)) or child.verdict is not Verdict.READY:
        return
    where = {
        "queue": to_text(origin),
        "job_id": to_text(child.job_id),
        "parent": to_text(parent),
    }
    if child.rate_limit_key:
        yield Skip(task, "a rate-limited dependent waits for RQ's rate limiter", where)
        return
    keys, job_id = ctx.keys, child.job_id
    write = EnqueueDependent(
        keys={
            "trigger": keys.dependents(parent),
            "job": keys.job(job_id),
            "dependencies": keys.dependencies(job_id),
            "deferred": keys.deferred(origin),
            "queue": keys.queue(origin),
            "dependents": keys.dependents(job_id),
        },
        args={
            "id": job_id,
            "origin": origin,
            "allow": scripts.present(child.allow),
            "enqueued_at": format_rq_time(ctx.now).encode(),
            "default_timeout": DEFAULT_TIMEOUT_S,
        },
        parents=EnqueueDependent.planned(ctx, child),
    )
    yield Action(task, EVENT, where, write)
