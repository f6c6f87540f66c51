"""``clean_registries``' global part: entries of RQ's indexes whose thing is gone.

Two indexes only a running worker (or an explicit call) cleans: ``rq:groups`` (RQ 2.0+)
and ``rq:cron_schedulers`` (RQ 2.6+). Which entries are dead is ``janitor.index_entries``'
rule (docs/keyspace.md, "Leaks RQ leaves", item 17); ``report`` asks it too.

Each removal is re-checked in Lua at write time (``scripts.CLEAN_INDEX_ENTRIES``) and
audited as ``index_entry_removed`` (``index``, ``name``). Groups and cron schedulers
belong to no one queue, so, as ``sweep_orphans`` does for keys of gone jobs, the entries
are judged on the evidence alone, whatever the allowlist. At most
``MAX_ENTRIES_PER_INDEX`` removals per index and run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from janitor import scripts
from janitor.actions import Action, Arg, ScriptBatch
from janitor.index_entries import dead_cron_schedulers, dead_groups
from janitor.keyspace import to_text
from janitor.tasks.base import TaskContext

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
    keys = ctx.keys
    for name in dead_groups(ctx.client, keys, MAX_ENTRIES_PER_INDEX):
        write = RemoveIndexEntry(b"group", keys.groups(), keys.group(name), name, b"")
        yield _action(task, "groups", write)
    for name, score in dead_cron_schedulers(
        ctx.client, keys, ctx.now, MAX_ENTRIES_PER_INDEX
    ):
        owner = keys.cron_scheduler(name)
        write = RemoveIndexEntry(b"cron", keys.cron_schedulers(), owner, name, score)
        yield _action(task, "cron_schedulers", write)


def _action(task: str, index: str, write: RemoveIndexEntry) -> Action:
    fields = {"index": index, "name": to_text(write.member)}
    return Action(task, EVENT, fields, write)
