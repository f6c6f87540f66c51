"""``clean_registries``' part for RQ 3's ready registry: enqueue the jobs left in it.

RQ 3 moves a dependent whose parents are done to ``rq:ready:<q>`` (status
``ready_to_enqueue``) and enqueues it right after; when that enqueue loses a WATCH race or
its process dies, only ``ReadyJobRegistry.cleanup()`` in the maintenance of a worker
serving the queue recovers the job (docs/keyspace.md, "Leaks RQ leaves", item 18). On a
queue nobody serves, or while its only worker sits in a long job, it waits indefinitely.

Per allowed queue (listed or not) this plans what ``ReadyJobRegistry.enqueue_jobs`` does
with each entry: of a queue no live worker serves every entry, of a served queue those
older than ``SERVED_GRACE_S`` (its worker's maintenance may come first). A job still
``ready_to_enqueue`` is enqueued (``ready_job_enqueued``); an entry whose job is gone or
no longer ready is dropped, as RQ drops it (``registry_entry_removed``, registry
``ready``). Each is re-checked in Lua at write time (``scripts.ENQUEUE_READY_JOBS``): an
entry someone else enqueued meanwhile is left alone, so a job is never enqueued twice. A
rate-limited ready job waits for a slot in RQ, through RQ 3's rate-limit scripts; the
janitor leaves it to RQ and says so (a ``Skip``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch, Skip
from janitor.batches import chunks
from janitor.jobs import format_rq_time
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext

SERVED_GRACE_S = 10
"""A served queue's ready entry must be this old. RQ enqueues a ready job milliseconds after it
registers it, so an older entry is stranded; the grace only keeps the janitor from racing
that (harmless: both re-check) on every pass."""
MAX_PER_QUEUE = 10_000
"""Ready entries planned per queue and run; more wait for the next run."""
DEFAULT_TIMEOUT_S = 180
"""RQ's default job timeout, which ``Queue._prepare_for_queue`` gives a job without one."""
READY = b"ready_to_enqueue"


@dataclass(frozen=True, slots=True)
class EnqueueReady(ScriptBatch):
    """Enqueue one ready job, or drop its stale entry; see ``scripts.ENQUEUE_READY_JOBS``."""

    op: bytes
    """``enqueue`` or ``stale``."""
    ready: bytes
    job: bytes
    queue: bytes
    dependents: bytes
    dependencies: bytes
    job_id: bytes
    origin: bytes
    score: bytes
    enqueued_at: bytes

    source: ClassVar[str] = scripts.ENQUEUE_READY_JOBS
    what: ClassVar[str] = "ready-job enqueues"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.READY_ENTRY``."""
        return scripts.READY_ENTRY.encode(
            {
                "ready": self.ready,
                "job": self.job,
                "queue": self.queue,
                "dependents": self.dependents,
                "dependencies": self.dependencies,
            },
            {
                "op": self.op,
                "id": self.job_id,
                "origin": self.origin,
                "score": self.score,
                "enqueued_at": self.enqueued_at,
                "default_timeout": DEFAULT_TIMEOUT_S,
            },
        )


def plan_ready(
    ctx: TaskContext, task: str, queue: bytes, *, served: bool
) -> Iterator[Action | Skip]:
    """Yield the enqueues and drops of one queue's ready entries (see the module)."""
    keys = ctx.keys
    ready = keys.ready(queue)
    if ctx.client.type(ready) != b"zset":
        return
    latest = ctx.now - SERVED_GRACE_S if served else ctx.now
    entries = cast(
        "list[tuple[bytes, bytes]]",
        ctx.client.zrangebyscore(
            ready,
            "-inf",
            latest,
            start=0,
            num=MAX_PER_QUEUE,
            withscores=True,
            score_cast_func=bytes,
        ),
    )
    for page in chunks(entries, ctx.page_size):
        yield from _page(ctx, task, queue, page)


def _page(
    ctx: TaskContext, task: str, queue: bytes, entries: Sequence[tuple[bytes, bytes]]
) -> Iterator[Action | Skip]:
    keys = ctx.keys
    pipe = ctx.client.pipeline(transaction=False)
    for job_id, _ in entries:
        pipe.hmget(keys.job(job_id), ["status", "origin", "rate_limit_key"])
    replies = pipe.execute(raise_on_error=False)
    name = to_text(queue)
    enqueued_at = format_rq_time(ctx.now).encode()
    for (job_id, score), fields in zip(entries, replies, strict=True):
        where = {"queue": name, "job_id": to_text(job_id)}
        if isinstance(fields, Exception):
            yield Skip(task, "the job key has the wrong type", where)
            continue
        status, origin, limit = cast("list[bytes | None]", fields)
        if status == READY and limit:
            yield Skip(
                task, "a rate-limited ready job waits for RQ's rate limiter", where
            )
            continue
        if status == READY and origin != queue:
            yield Skip(
                task, "job origin differs from its ready registry's queue", where
            )
            continue
        op = b"enqueue" if status == READY else b"stale"
        write = EnqueueReady(
            op,
            keys.ready(queue),
            keys.job(job_id),
            keys.queue(queue),
            keys.dependents(job_id),
            keys.dependencies(job_id),
            job_id,
            queue,
            score,
            enqueued_at,
        )
        if op == b"enqueue":
            yield Action(task, "ready_job_enqueued", where, write)
        else:
            fields_ = {**where, "registry": "ready"}
            yield Action(task, "registry_entry_removed", fields_, write)
