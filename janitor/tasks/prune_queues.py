"""Task ``prune_queues``: remove queues that stayed empty everywhere from ``rq:queues``.

RQ adds a queue to ``rq:queues`` on every enqueue and removes it only in
``Queue.delete()``, so every queue ever used stays listed (docs/keyspace.md, "Leaks RQ
leaves", item 7). actinia's per_job queues (``job_queue_resource_id-<uuid>``), one per
job, pile up there.

A queue is empty when none of its keys exists: the list, the intermediate list, every
registry (started, finished, failed, deferred, scheduled, canceled, RQ 3's ready) and the
worker set ``rq:workers:<q>``; Redis deletes empty lists, sets and sorted sets, so EXISTS
is the whole check. The first pass that sees a queue empty records when, in
``Keyspace.queue_empty_since`` (janitor state, one key per queue, with a TTL); a pass at
least ``[queues] prune_after`` later (``"0s"``: the next pass) that finds it still empty
SREMs the member and drops
the record, in one Lua step that re-checks all of it. A queue found busy again loses its
record, so the grace starts over. Nothing else is written: an empty queue has no other
key, and an enqueue re-adds the member (in the same transaction as its RPUSH or ZADD).
Queues outside the allowlist are neither read nor written.
"""

from __future__ import annotations

from collections.abc import Iterator

from janitor.actions import Action, PruneQueue, SetJanitorState, Skip
from janitor.batches import chunks
from janitor.keyspace import QUEUE_REGISTRIES, iter_queue_names, to_text
from janitor.tasks.base import TaskContext

NAME = "prune_queues"

STATE_TTL_MARGIN_S = 86_400
"""An empty-since record lives twice ``prune_after`` plus this: long enough for the pass
after the grace, even a day late, and gone afterwards if nothing ever reads it again."""


def state_ttl(prune_after: int) -> int:
    """The TTL of an empty-since record under ``[queues] prune_after``."""
    return 2 * prune_after + STATE_TTL_MARGIN_S


class PruneQueues:
    """Removes queues that have been empty everywhere for longer than the grace period."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield ``queue_pruned`` actions and the empty-since bookkeeping, per allowed queue."""
        names = [
            name
            for name in iter_queue_names(ctx.client, ctx.keys)
            if ctx.allows_queue(to_text(name))
        ]
        for chunk in chunks(names, ctx.page_size):
            pipe = ctx.client.pipeline(transaction=False)
            for name in chunk:
                pipe.exists(*queue_keys(ctx, name))
                pipe.get(ctx.keys.queue_empty_since(name))
            replies = pipe.execute()
            for index, name in enumerate(chunk):
                busy, since = replies[2 * index : 2 * index + 2]
                action = _decide(ctx, name, busy=bool(busy), since=since)
                if action is not None:
                    yield action


def queue_keys(ctx: TaskContext, name: bytes) -> tuple[bytes, ...]:
    """Every key whose existence means the queue is in use."""
    keys = ctx.keys
    registries = tuple(getattr(keys, registry)(name) for registry in QUEUE_REGISTRIES)
    return (keys.queue(name), keys.intermediate(name), *registries, keys.workers(name))


def _decide(
    ctx: TaskContext, name: bytes, *, busy: bool, since: bytes | None
) -> Action | None:
    """Record, forget or act on a queue's empty-since time."""
    state_key = ctx.keys.queue_empty_since(name)
    ttl = state_ttl(ctx.settings.queues.prune_after)
    if busy:
        if since is None:
            return None
        return Action(NAME, None, {}, SetJanitorState(state_key, None, ttl))
    try:
        seen_empty = None if since is None else float(since)
    except ValueError:
        seen_empty = None  # not a time the janitor wrote: start the grace over
    if seen_empty is None:
        now = repr(ctx.now).encode()
        record = SetJanitorState(state_key, now, ttl, only_if_absent=since is None)
        return Action(NAME, None, {}, record)
    if ctx.now - seen_empty < ctx.settings.queues.prune_after:
        return None
    write = PruneQueue(
        queues_key=ctx.keys.queues(),
        member=ctx.keys.queue(name),
        state_key=state_key,
        empty_since=since or b"",
        empty_keys=queue_keys(ctx, name),
    )
    return Action(NAME, "queue_pruned", {"queue": to_text(name)}, write)
