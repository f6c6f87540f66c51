"""Task ``sweep_orphans``: delete TTL-less keys that belong to no job, found by a resumable SCAN.

RQ leaves these behind (docs/keyspace.md: "Leaks RQ leaves"; "Registry entries and side
keys", items 7 and 8; "Passes and the tasks that run them", items 4 and 6); each is
deleted only if it has no TTL (a key with one expires by itself) and, re-checked
atomically in Lua at write time (``scripts.DELETE_ORPHANS``), its owner job is gone:

* ``results``: ``rq:results:<id>`` streams whose job hash is missing, the failure-result
  leak (docs/keyspace.md, "Leaks RQ leaves", items 1 and 2). A stream whose job exists
  is ``expire_jobs``' business.
* ``dependents``: ``rq:job:<id>:dependents`` whose job is missing and whose listed
  children are all missing or terminal (at most ``MAX_CHILDREN_CHECKED`` are read).
* ``dependencies``: ``rq:job::<id>:dependencies`` (RQ's double colon) whose job is missing.
* ``executions`` / ``execution``: ``rq:executions:<id>`` and ``rq:execution:<id>:<exec>``
  whose job is missing (RQ gives both a TTL; only TTL-less leftovers are judged).
* ``ghost_job``: ``rq:job:<id>`` hashes without a ``data`` field (``HEXISTS``; payloads
  are never read) whose ``last_heartbeat`` is older than ``GHOST_MIN_AGE_S``, or which
  have neither a heartbeat nor a status (rq#1450; docs/keyspace.md, "Leaks RQ leaves",
  item 8, and "Deleting job hashes", rule 6).

Keys are classified by ``TYPE`` and by the templates of ``Keyspace``'s builders
(``keyspace.id_in``), never by splitting on ``:``: ids may contain it before RQ 2.1.
Only ``<prefix>:*`` is scanned, so other applications' keys are never even read.

The SCAN covers about ``KEYS_PER_RUN`` keyspace entries per run and resumes where the
previous run stopped: the cursor is janitor state (``Keyspace.orphan_scan_cursor``, TTL
``CURSOR_TTL_S``) written by a bookkeeping action last, so a dry run leaves it alone and a
run that dies early re-reads its slice next time.

The queue allowlist: a ghost hash with an ``origin`` is swept only if the allowlist
admits that queue. Every other orphan belongs to a job that no longer exists, so it has
no queue: it is judged on the evidence alone, whatever the allowlist (the same rule
``prune_workers`` applies to worker hashes that name no queue).

Event: ``orphan_deleted`` (``key``, ``kind``) per deleted key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import redis

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch, Skip
from janitor.jobs import (
    MAX_CHILDREN_CHECKED,
    TERMINAL_RAW,
    FieldError,
    parse_rq_time,
)
from janitor.keyspace import Keyspace, id_in, to_text
from janitor.scan import ResumableScan
from janitor.tasks.base import TaskContext

NAME = "sweep_orphans"
KEYS_PER_RUN = 10_000
"""Keyspace entries SCAN visits per run (the sum of its COUNT hints)."""
CURSOR_TTL_S = 7 * 86_400
"""A cursor unused for a week is dropped and the SCAN starts over (the default runs daily)."""
GHOST_MIN_AGE_S = 600
"""A data-less job hash with a younger heartbeat may still be in flight (docs/keyspace.md,
"Deleting job hashes", rule 6)."""
GHOST_FIELDS = ("status", "last_heartbeat", "origin")
"""The only job hash fields read from a ghost candidate."""


@dataclass(frozen=True, slots=True)
class DeleteOrphan(ScriptBatch):
    """UNLINK one key if it is still TTL-less and still ownerless; see ``scripts.DELETE_ORPHANS``."""

    key: bytes
    type_: bytes
    owner: bytes
    """The job hash that must still be missing (the key itself for a ghost)."""
    ghost: bool = False
    status: bytes = b""
    heartbeat: bytes = b""
    """For a ghost: the fields as read, ``+<value>``, or empty when absent."""
    children: tuple[bytes, ...] = ()
    """For a dependents set: exactly the child ids it held."""
    child_keys: tuple[bytes, ...] = ()
    """The children's job hashes, in the order of ``children``."""

    source: ClassVar[str] = scripts.DELETE_ORPHANS
    what: ClassVar[str] = "orphan deletes"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.DELETE_ORPHANS``."""
        keys, args = scripts.ORPHAN.encode(
            {"key": self.key, "owner": self.owner},
            {
                "kind": self.type_,
                "ghost": int(self.ghost),
                "status": self.status,
                "heartbeat": self.heartbeat,
                "nchildren": len(self.children),
            },
        )
        return [*keys, *self.child_keys], [*args, *self.children]


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A TTL-less key of a shape the sweep judges, and the job it belongs to."""

    key: bytes
    type_: bytes
    kind: str
    job_id: bytes


class SweepOrphans:
    """Deletes result streams, dependency sets, executions and ghost hashes of gone jobs."""

    name = NAME

    def __init__(self, keys_per_run: int = KEYS_PER_RUN) -> None:
        self.keys_per_run = keys_per_run

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield ``orphan_deleted`` actions for this run's slice of the SCAN, then the cursor."""
        scan = ResumableScan(
            ctx.client,
            ctx.keys.orphan_scan_cursor(),
            ctx.keys.glob("*"),
            budget=self.keys_per_run,
            count=ctx.page_size,
        )
        seen = set[bytes]()
        for page in scan.pages():
            fresh = [key for key in page if key not in seen]
            seen.update(fresh)  # SCAN may return a key twice
            yield from _plan_page(ctx, fresh)
        if state := scan.save(CURSOR_TTL_S):
            yield Action(NAME, None, {"cursor": scan.cursor}, state)


def _plan_page(ctx: TaskContext, page: Sequence[bytes]) -> Iterator[Action | Skip]:
    """Classify a SCAN page by TYPE and name, read what decides each, and plan the deletes."""
    pipe = ctx.client.pipeline(transaction=False)
    for key in page:
        pipe.type(key)
        pipe.pttl(key)
    replies = pipe.execute()
    candidates = []
    for index, key in enumerate(page):
        type_, pttl = replies[2 * index], replies[2 * index + 1]
        if pttl == -1:  # -2: gone meanwhile; >= 0: Redis expires it
            found = _classify(ctx.keys, key, cast("bytes", type_))
            if found is not None:
                candidates.append(found)
    if not candidates:
        return
    pipe = ctx.client.pipeline(transaction=False)
    spans = [_queue_reads(ctx, pipe, found) for found in candidates]
    replies = pipe.execute(raise_on_error=False)
    offset = 0
    for found, span in zip(candidates, spans, strict=True):
        yield from _judge(ctx, found, replies[offset : offset + span])
        offset += span


def _classify(keys: Keyspace, key: bytes, type_: bytes) -> _Candidate | None:
    """What kind of side key ``key`` is, from its TYPE and the builders' templates."""
    shapes = {
        b"stream": (("results", keys.results),),
        b"set": (("dependencies", keys.dependencies), ("dependents", keys.dependents)),
        b"zset": (("executions", keys.executions),),
        b"hash": (("ghost_job", keys.job),),
    }
    if type_ == b"hash":
        parsed = keys.parse_execution_key(key)
        if parsed is not None:
            return _Candidate(key, type_, "execution", parsed[0])
    for kind, build in shapes.get(type_, ()):
        job_id = id_in(build, key)
        if job_id is not None:
            return _Candidate(key, type_, kind, job_id)
    return None


def _queue_reads(
    ctx: TaskContext, pipe: redis.client.Pipeline, found: _Candidate
) -> int:
    """Queue the reads that decide a candidate; return how many replies they give."""
    if found.kind == "ghost_job":
        pipe.hexists(found.key, "data")
        pipe.hmget(found.key, GHOST_FIELDS)
        return 2
    pipe.exists(ctx.keys.job(found.job_id))
    if found.kind == "dependents":
        pipe.srandmember(found.key, MAX_CHILDREN_CHECKED + 1)
        return 2
    return 1


def _judge(
    ctx: TaskContext, found: _Candidate, replies: Sequence[object]
) -> Iterator[Action | Skip]:
    """Plan the delete of one candidate, given its replies from ``_queue_reads``."""
    if any(isinstance(reply, Exception) for reply in replies):
        return  # the key changed type since TYPE: judge it on a later pass
    if found.kind == "ghost_job":
        has_data, fields = replies
        yield from _judge_ghost(
            ctx, found, cast("int", has_data), cast("list[bytes | None]", fields)
        )
        return
    if replies[0]:
        return  # the job exists: not an orphan
    children: tuple[bytes, ...] = ()
    if found.kind == "dependents":
        children = tuple(cast("list[bytes]", replies[1]))
        if len(children) > MAX_CHILDREN_CHECKED:
            yield Skip(
                NAME, "too many dependents to check", {"key": to_text(found.key)}
            )
            return
        if _any_waiting(ctx, children):
            return
    write = DeleteOrphan(
        found.key,
        found.type_,
        ctx.keys.job(found.job_id),
        children=children,
        child_keys=tuple(ctx.keys.job(child) for child in children),
    )
    yield _deleted(found, write)


def _judge_ghost(
    ctx: TaskContext, found: _Candidate, has_data: int, fields: list[bytes | None]
) -> Iterator[Action | Skip]:
    """A job hash without ``data``, no TTL, and an old or no heartbeat (nor status)."""
    if has_data:
        return
    status, heartbeat, origin = fields
    where = {"key": to_text(found.key)}
    if origin and not ctx.allows_queue(to_text(origin)):
        return  # the queue is known and not ours to write
    try:
        beat = parse_rq_time(heartbeat)
    except FieldError as err:
        yield Skip(NAME, f"unreadable last_heartbeat: {err}", where)
        return
    if beat is None and status is not None:
        return  # a status without a heartbeat: no age to judge by
    if beat is not None and ctx.now - beat < GHOST_MIN_AGE_S:
        return  # a late heartbeat may still be in flight; the worker DELs it itself
    write = DeleteOrphan(
        found.key,
        found.type_,
        found.key,
        ghost=True,
        status=scripts.present(status),
        heartbeat=scripts.present(heartbeat),
    )
    yield _deleted(found, write)


def _any_waiting(ctx: TaskContext, children: Sequence[bytes]) -> bool:
    """Whether a listed child exists and is not terminal (it may still wait on its parent)."""
    pipe = ctx.client.pipeline(transaction=False)
    for child in children:
        pipe.hget(ctx.keys.job(child), "status")
    statuses = pipe.execute(raise_on_error=False)
    return any(
        isinstance(status, Exception)
        or (status is not None and status not in TERMINAL_RAW)
        for status in statuses
    )


def _deleted(found: _Candidate, write: DeleteOrphan) -> Action:
    return Action(
        NAME, "orphan_deleted", {"key": to_text(found.key), "kind": found.kind}, write
    )
