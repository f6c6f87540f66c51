"""``clean_registries``' part for deferred jobs that can never run: cancel them, if asked to.

RQ keeps a deferred job deferred for ever once a parent failed (and the job does not allow
failure), was canceled or stopped, or every parent is gone (rq#675, rq#743);
``janitor.dependencies.verdict`` says which. ``report`` always lists them. With
``[deferred] stuck = "cancel"``, per allowed queue (at most ``MAX_PER_QUEUE`` deferred
entries a run): the first pass that finds a job stuck records a sighting (janitor state:
when, and a fingerprint of the facts it was judged on, for ``SIGHTING_TTL_S``); a pass at
least ``SECOND_LOOK_S`` later that finds the same facts cancels it as RQ's ``Job.cancel()``
does, re-checked atomically (``scripts.CANCEL_STUCK_JOBS``): ``deferred_canceled``
(``queue``, ``job_id``, ``reason``). A dry run records nothing, so dry runs alone never
cancel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, SetJanitorState
from janitor.dependencies import Deferred, Verdict, read_deferred
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext, first_seen
from janitor.tasks.dependents import DeferredWrite

MAX_PER_QUEUE = 1_000
"""Deferred entries judged per queue and run."""
SECOND_LOOK_S = 60
"""A job is canceled only on a pass at least this long after the one that first found it stuck."""
SIGHTING_TTL_S = 86_400
"""A first sighting not confirmed within a day is forgotten."""
EVENT = "deferred_canceled"


@dataclass(frozen=True, slots=True)
class CancelStuck(DeferredWrite):
    """Cancel one stuck deferred job if every planned fact still holds; see ``scripts.CANCEL_STUCK_JOBS``."""

    source: ClassVar[str] = scripts.CANCEL_STUCK_JOBS
    what: ClassVar[str] = "stuck-job cancels"
    item: ClassVar[scripts.Slots] = scripts.STUCK_JOB


def fingerprint(job: Deferred) -> bytes:
    """A short digest of the facts a job was judged stuck on (its allowance, parents, statuses)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(job.allow or b"-")
    for parent, status in sorted(job.parents.items()):
        digest.update(b"\x00" + parent + b"\x00" + (status or b"-"))
    return digest.hexdigest().encode()


def plan_stuck(ctx: TaskContext, task: str, queue: bytes) -> Iterator[Action]:
    """Yield the sightings and cancels of one queue's stuck deferred jobs (``[deferred] stuck = "cancel"``)."""
    if ctx.settings.deferred.stuck != "cancel":
        return
    keys = ctx.keys
    if ctx.client.type(keys.deferred(queue)) != b"zset":
        return
    ids = cast(
        "list[bytes]", ctx.client.zrange(keys.deferred(queue), 0, MAX_PER_QUEUE - 1)
    )
    stuck = [
        d for d in read_deferred(ctx.client, keys, ids) if d.verdict is Verdict.STUCK
    ]
    pipe = ctx.client.pipeline(transaction=False)
    for job in stuck:
        pipe.get(keys.stuck_sighting(job.job_id))
    for job, seen in zip(stuck, pipe.execute(), strict=True):
        mark = fingerprint(job)
        first = first_seen(cast("bytes | None", seen), mark)
        if first is None:
            value = repr(ctx.now).encode() + b" " + mark
            record = SetJanitorState(
                keys.stuck_sighting(job.job_id), value, SIGHTING_TTL_S
            )
            yield Action(task, None, {"queue": to_text(queue)}, record)
        elif ctx.now - first >= SECOND_LOOK_S:
            yield _cancel(ctx, task, queue, job)


def _cancel(ctx: TaskContext, task: str, queue: bytes, job: Deferred) -> Action:
    keys = ctx.keys
    write = CancelStuck(
        keys={
            "job": keys.job(job.job_id),
            "dependencies": keys.dependencies(job.job_id),
            "deferred": keys.deferred(queue),
            "queue": keys.queue(queue),
            "canceled": keys.canceled(queue),
        },
        args={
            "id": job.job_id,
            "allow": scripts.present(job.allow),
            "score": str(int(ctx.now)).encode(),
        },
        parents=CancelStuck.planned(ctx, job),
    )
    fields = {"queue": to_text(queue), "job_id": to_text(job.job_id), "reason": job.why}
    return Action(task, EVENT, fields, write)
