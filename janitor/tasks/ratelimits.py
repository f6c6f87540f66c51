"""RQ 3's rate limits: free the slots the janitor's jobs (and leaked ones) hold, promote waiting jobs.

RQ 3 keeps per limit key the ids holding a slot (``rq:rl:<key>:allowed``) and those
waiting (``rq:rl:<key>:rate_limited``, oldest first). A job gives its slot back when it
ends on a worker; when the janitor fails an abandoned job, or a slot leaked (its job
deleted, or ended without the release), only ``RateLimitRegistry.cleanup()`` in a
worker's maintenance frees it, and until then the waiting jobs wait (docs/keyspace.md,
"Leaks RQ leaves", item 19). This does what RQ's scripts do, step by step, each step a
write re-checked in Lua (``scripts.RATE_LIMIT_WRITES``):

* ``plan_release``: after ``recover_abandoned`` fails a rate-limited job, release its slot
  (RQ's ``release_slot``) and promote the waiting jobs the freed slot lets through.
* ``plan_limits``: per limit in ``rq:rl-keys`` (at most ``MAX_LIMITS``), what
  ``RateLimitRegistry.cleanup()`` does: release every allowed entry whose job is not
  ``queued`` or ``started`` (and has no live execution), promote the oldest waiting jobs
  into the free slots (dropping stale waiting entries on the way, as RQ's loop does), and
  forget a limit whose sets are both empty.

Events: ``rate_limit_slot_released`` and ``rate_limited_job_promoted`` (``queue``,
``job_id``, ``key``), ``registry_entry_removed`` (registry ``rate_limited``) for a dropped
entry, ``index_entry_removed`` (index ``rl-keys``) for a forgotten limit. A waiting job of
a queue outside the allowlist stops the promotions of its limit: RQ promotes oldest first,
and the janitor will not write that queue.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch
from janitor.jobs import format_rq_time
from janitor.keyspace import to_text
from janitor.rate_limits import concurrency, holds_slot, limit_names
from janitor.tasks.base import TaskContext

MAX_LIMITS = 1_000
"""Rate-limit keys handled per run."""
MAX_ENTRIES = 1_000
"""Allowed and waiting entries read per limit and run."""


@dataclass(frozen=True, slots=True)
class RateLimitWrite(ScriptBatch):
    """One step of RQ 3's rate-limit scripts; see ``scripts.RATE_LIMIT_WRITES``."""

    op: bytes
    key: bytes
    """The limit's key (the part after ``rq:rl:``)."""
    job_id: bytes
    origin: bytes
    keys: dict[str, bytes]
    timestamp: int
    enqueued_at: bytes

    source: ClassVar[str] = scripts.RATE_LIMIT_WRITES
    what: ClassVar[str] = "rate-limit writes"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.RATE_LIMIT_WRITE``."""
        return scripts.RATE_LIMIT_WRITE.encode(
            self.keys,
            {
                "op": self.op,
                "id": self.job_id,
                "timestamp": self.timestamp,
                "enqueued_at": self.enqueued_at,
                "origin": self.origin,
                "key": self.key,
            },
        )


@dataclass(slots=True)
class _Limit:
    """One limit as read, and the writes planned for it."""

    ctx: TaskContext
    task: str
    key: bytes
    actions: list[Action]

    def write(self, op: bytes, job_id: bytes, origin: bytes) -> RateLimitWrite:
        keys = self.ctx.keys
        return RateLimitWrite(
            op,
            self.key,
            job_id,
            origin,
            {
                "allowed": keys.rate_limit_allowed(self.key),
                "waiting": keys.rate_limit_waiting(self.key),
                "job": keys.job(job_id),
                "executions": keys.executions(job_id),
                "queue": keys.queue(origin),
                "config": keys.rate_limit(self.key),
                "rl_keys": keys.rate_limit_keys(),
            },
            int(self.ctx.now),
            format_rq_time(self.ctx.now).encode(),
        )

    def event(self, name: str, op: bytes, job_id: bytes, origin: bytes) -> None:
        fields = {
            "queue": to_text(origin),
            "job_id": to_text(job_id),
            "key": to_text(self.key),
        }
        self.actions.append(
            Action(self.task, name, fields, self.write(op, job_id, origin))
        )

    def release(self, job_id: bytes, origin: bytes) -> None:
        self.event("rate_limit_slot_released", b"release", job_id, origin)

    def promote(self, free: int) -> int:
        """Plan promotions of the oldest waiting jobs into ``free`` slots; return how many are left waiting."""
        client, keys = self.ctx.client, self.ctx.keys
        waiting = cast(
            "list[bytes]",
            client.zrange(keys.rate_limit_waiting(self.key), 0, MAX_ENTRIES - 1),
        )
        fields = _fields(self.ctx, waiting, ("origin", "status"))
        left = len(waiting)
        for job_id, (origin, status) in zip(waiting, fields, strict=True):
            if origin is None or status != b"rate_limited":
                fields_ = {
                    "queue": to_text(origin or b""),
                    "job_id": to_text(job_id),
                    "registry": "rate_limited",
                }
                write = self.write(b"drop", job_id, origin or b"")
                self.actions.append(
                    Action(self.task, "registry_entry_removed", fields_, write)
                )
            elif free <= 0 or not self.ctx.allows_queue(to_text(origin)):
                break  # RQ promotes oldest first: not past a job the janitor may not write
            else:
                self.event("rate_limited_job_promoted", b"promote", job_id, origin)
                free -= 1
            left -= 1
        return left


def _fields(
    ctx: TaskContext, job_ids: Sequence[bytes], names: tuple[str, ...]
) -> list[list[bytes | None]]:
    pipe = ctx.client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(ctx.keys.job(job_id), list(names))
    return [
        cast("list[bytes | None]", r) if isinstance(r, list) else [b"?"] * len(names)
        for r in pipe.execute(raise_on_error=False)
    ]


def _concurrency(ctx: TaskContext, key: bytes) -> int:
    return concurrency(ctx.client.hget(ctx.keys.rate_limit(key), "concurrency")) or 0


def plan_release(
    ctx: TaskContext, task: str, job_id: bytes, origin: bytes, key: bytes
) -> Iterator[Action]:
    """After ``job_id`` was failed: release its slot of limit ``key`` and promote whom that lets through."""
    limit = _Limit(ctx, task, key, [])
    allowed = cast(
        "list[bytes]", ctx.client.zrange(ctx.keys.rate_limit_allowed(key), 0, -1)
    )
    if job_id not in allowed:
        return
    limit.release(job_id, origin)
    limit.promote(_concurrency(ctx, key) - (len(allowed) - 1))
    yield from limit.actions


def plan_limits(ctx: TaskContext, task: str) -> Iterator[Action]:
    """``RateLimitRegistry.cleanup()`` for every limit: release stale slots, promote, forget empty limits."""
    for name in limit_names(ctx.client, ctx.keys, MAX_LIMITS):
        yield from _plan_limit(ctx, task, name)


def _plan_limit(ctx: TaskContext, task: str, key: bytes) -> Iterator[Action]:
    keys = ctx.keys
    limit = _Limit(ctx, task, key, [])
    allowed = cast(
        "list[bytes]",
        ctx.client.zrange(keys.rate_limit_allowed(key), 0, MAX_ENTRIES - 1),
    )
    holding = 0
    for job_id, (status, origin) in zip(
        allowed, _fields(ctx, allowed, ("status", "origin")), strict=True
    ):
        if holds_slot(status):
            holding += 1
        elif origin is not None and not ctx.allows_queue(to_text(origin)):
            holding += 1  # not ours to release
        else:
            limit.release(job_id, origin or b"")
    left = limit.promote(_concurrency(ctx, key) - holding)
    if holding == 0 and left == 0:
        fields = {"index": "rl-keys", "name": to_text(key)}
        forget = limit.write(b"forget", b"", b"")
        limit.actions.append(Action(task, "index_entry_removed", fields, forget))
    yield from limit.actions
