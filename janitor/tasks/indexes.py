"""``clean_registries``' global part: entries of RQ's indexes whose thing is gone.

Two indexes only a running worker (or an explicit call) cleans (docs/keyspace.md, "Leaks
RQ leaves", item 17):

* ``rq:groups`` (RQ 2.0+): a member whose group set ``rq:group:<name>`` is gone. RQ's
  ``Group.clean_registries`` SREMs exactly these, in a worker's maintenance.
* ``rq:cron_schedulers`` (RQ 2.6+): a member whose hash ``rq:cron_scheduler:<name>`` is
  gone and whose score (its last heartbeat) is more than ``CRON_GRACE_S`` old. RQ's
  ``cron_scheduler_registry.cleanup`` drops every entry older than 120 s, hash or not;
  the janitor also wants the hash gone (it expires 120 s after the last heartbeat).

Each removal is re-checked in Lua at write time (``scripts.CLEAN_INDEX_ENTRIES``) and
audited as ``index_entry_removed`` (``index``, ``name``). Groups and cron schedulers
belong to no one queue, so, as ``sweep_orphans`` does for keys of gone jobs, the entries
are judged on the evidence alone, whatever the allowlist. At most
``MAX_ENTRIES_PER_INDEX`` removals per index and run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar, cast

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext

CRON_GRACE_S = 600
"""A cron scheduler's entry must be older than this (RQ's own cleanup: 120 s)."""
MAX_ENTRIES_PER_INDEX = 10_000
"""Removals planned per index and run; more wait for the next run."""
EVENT = "index_entry_removed"


@dataclass(frozen=True, slots=True)
class RemoveIndexEntry(ScriptBatch):
    """Remove one index entry if its owner key is still missing; see ``scripts.CLEAN_INDEX_ENTRIES``."""

    op: bytes
    """``group`` or ``cron``."""
    index: bytes
    owner: bytes
    member: bytes
    score: bytes
    """The raw score the plan read (``cron``), else empty."""

    source: ClassVar[str] = scripts.CLEAN_INDEX_ENTRIES
    what: ClassVar[str] = "index entry removals"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.INDEX_ENTRY``."""
        return scripts.INDEX_ENTRY.encode(
            {"index": self.index, "owner": self.owner},
            {"op": self.op, "member": self.member, "score": self.score},
        )


def plan_indexes(ctx: TaskContext, task: str) -> Iterator[Action]:
    """Yield the removals of dead ``rq:groups`` and ``rq:cron_schedulers`` entries."""
    yield from _groups(ctx, task)
    yield from _cron_schedulers(ctx, task)


def _missing(ctx: TaskContext, owners: Sequence[bytes]) -> list[bool]:
    """Per owner key, whether it does not exist."""
    pipe = ctx.client.pipeline(transaction=False)
    for owner in owners:
        pipe.exists(owner)
    return [n == 0 for n in pipe.execute()]


def _action(task: str, index: str, write: RemoveIndexEntry) -> Action:
    fields = {"index": index, "name": to_text(write.member)}
    return Action(task, EVENT, fields, write)


def _groups(ctx: TaskContext, task: str) -> Iterator[Action]:
    keys = ctx.keys
    if ctx.client.type(keys.groups()) != b"set":
        return
    members = cast(
        "Iterator[bytes]", ctx.client.sscan_iter(keys.groups(), count=ctx.page_size)
    )
    budget = MAX_ENTRIES_PER_INDEX
    while budget > 0:
        page = list(islice(members, ctx.page_size))
        if not page:
            return
        found = list(islice(_group_page(ctx, task, page), budget))
        budget -= len(found)
        yield from found


def _group_page(ctx: TaskContext, task: str, page: Sequence[bytes]) -> Iterator[Action]:
    owners = [ctx.keys.group(name) for name in page]
    for name, owner, gone in zip(page, owners, _missing(ctx, owners), strict=True):
        if gone:
            write = RemoveIndexEntry(b"group", ctx.keys.groups(), owner, name, b"")
            yield _action(task, "groups", write)


def _cron_schedulers(ctx: TaskContext, task: str) -> Iterator[Action]:
    keys = ctx.keys
    if ctx.client.type(keys.cron_schedulers()) != b"zset":
        return
    stale = cast(
        "list[tuple[bytes, bytes]]",
        ctx.client.zrangebyscore(
            keys.cron_schedulers(),
            "-inf",
            ctx.now - CRON_GRACE_S,
            start=0,
            num=MAX_ENTRIES_PER_INDEX,
            withscores=True,
            score_cast_func=bytes,
        ),
    )
    owners = [keys.cron_scheduler(name) for name, _ in stale]
    for (name, score), owner, gone in zip(
        stale, owners, _missing(ctx, owners), strict=True
    ):
        if gone:
            write = RemoveIndexEntry(
                b"cron", keys.cron_schedulers(), owner, name, score
            )
            yield _action(task, "cron_schedulers", write)
