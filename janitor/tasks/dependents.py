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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch, Skip
from janitor.dependencies import Verdict, allows_failure, verdict
from janitor.jobs import MAX_CHILDREN_CHECKED, format_rq_time
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext
from janitor.tasks.ready import DEFAULT_TIMEOUT_S

EVENT = "dependent_enqueued"
CHILD_FIELDS = ("status", "origin", "allow_dependency_failures", "rate_limit_key")


@dataclass(frozen=True, slots=True)
class EnqueueDependent(ScriptBatch):
    """Enqueue one deferred job if every planned fact still holds; see ``scripts.ENQUEUE_DEPENDENTS``."""

    keys: dict[str, bytes]
    args: dict[str, Arg]
    parents: tuple[tuple[bytes, bytes, bytes], ...]
    """(job hash, id, planned status as ``+<status>`` or empty) per parent."""

    source: ClassVar[str] = scripts.ENQUEUE_DEPENDENTS
    what: ClassVar[str] = "dependent enqueues"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.DEPENDENT``, then the parents."""
        keys, args = scripts.DEPENDENT.encode(
            self.keys, {**self.args, "nparents": len(self.parents)}
        )
        keys += [key for key, _, _ in self.parents]
        for _, parent_id, status in self.parents:
            args += [parent_id, status]
        return keys, args


def plan_dependents(
    ctx: TaskContext, task: str, parent: bytes, *, parent_status: str
) -> Iterator[Action | Skip]:
    """Plan the enqueue of ``parent``'s dependents that are ready once it has ``parent_status``."""
    keys, client = ctx.keys, ctx.client
    children = cast(
        "list[bytes]",
        client.srandmember(keys.dependents(parent), MAX_CHILDREN_CHECKED + 1),
    )
    if len(children) > MAX_CHILDREN_CHECKED:
        where = {"job_id": to_text(parent)}
        yield Skip(task, "too many dependents to enqueue them one by one", where)
        return
    pipe = client.pipeline(transaction=False)
    for child in children:
        pipe.hmget(keys.job(child), CHILD_FIELDS)
        pipe.smembers(keys.dependencies(child))
    replies = pipe.execute(raise_on_error=False)
    for index, child in enumerate(children):
        fields, parents = replies[2 * index : 2 * index + 2]
        if isinstance(fields, Exception) or isinstance(parents, Exception):
            continue
        facts = _Child(
            child,
            cast("list[bytes | None]", fields),
            sorted(cast("set[bytes]", parents)),
        )
        yield from _plan_child(
            ctx, task, facts, parent=parent, parent_status=parent_status
        )


@dataclass(frozen=True, slots=True)
class _Child:
    """A dependent as read: its id, ``CHILD_FIELDS`` and its parents' ids."""

    id: bytes
    fields: Sequence[bytes | None]
    parents: Sequence[bytes]


def _plan_child(
    ctx: TaskContext,
    task: str,
    facts: _Child,
    *,
    parent: bytes,
    parent_status: str,
) -> Iterator[Action | Skip]:
    child, parents = facts.id, facts.parents
    status, origin, allow, limit = facts.fields
    if status != b"deferred" or origin is None or parent not in parents:
        return  # not waiting on this parent (RQ would not enqueue it either)
    where = {
        "queue": to_text(origin),
        "job_id": to_text(child),
        "parent": to_text(parent),
    }
    if not ctx.allows_queue(to_text(origin)):
        return
    statuses = _statuses(ctx, parents)
    planned = {**statuses, parent: parent_status.encode()}
    fate = verdict(
        allow_failure=allows_failure(allow),
        parents=[None if s is None else s.decode() for s in planned.values()],
    )
    if fate is not Verdict.READY:
        return
    if limit:
        yield Skip(task, "a rate-limited dependent waits for RQ's rate limiter", where)
        return
    keys = ctx.keys
    write = EnqueueDependent(
        keys={
            "trigger": keys.dependents(parent),
            "job": keys.job(child),
            "dependencies": keys.dependencies(child),
            "deferred": keys.deferred(origin),
            "queue": keys.queue(origin),
            "dependents": keys.dependents(child),
        },
        args={
            "id": child,
            "origin": origin,
            "allow": b"" if allow is None else b"+" + allow,
            "enqueued_at": format_rq_time(ctx.now).encode(),
            "default_timeout": DEFAULT_TIMEOUT_S,
        },
        parents=tuple(
            (keys.job(p), p, b"" if s is None else b"+" + s) for p, s in planned.items()
        ),
    )
    yield Action(task, EVENT, where, write)


def _statuses(ctx: TaskContext, parents: Sequence[bytes]) -> dict[bytes, bytes | None]:
    """Each parent's status as stored (None: its hash is gone)."""
    pipe = ctx.client.pipeline(transaction=False)
    for parent in parents:
        pipe.hget(ctx.keys.job(parent), "status")
    replies = pipe.execute(raise_on_error=False)
    return {
        parent: reply if isinstance(reply, bytes) else None
        for parent, reply in zip(parents, replies, strict=True)
    }
