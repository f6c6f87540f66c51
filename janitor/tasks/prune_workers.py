"""Task ``prune_workers``: drop dead workers from RQ's worker sets and delete zombie worker hashes.

Whether a worker is dead is ``liveness.judge``'s answer alone; it names two kinds
(docs/keyspace.md, "Workers"):

* ``hash_expired``: a member of ``rq:workers`` or ``rq:workers:<q>`` whose hash is gone
  (kill -9, OOM kill, a lost node). RQ drops such members only from the sets of queues a
  live worker serves, so the sets of unserved queues leak. The member is removed from
  every set it is in, re-checked in Lua: a worker restarting under the same name
  re-creates its hash first.
* ``zombie``: a ``rq:worker:<w>`` hash without TTL whose ``last_heartbeat`` is missing or
  older than ``[workers] dead_after``, as an orphaned work horse leaves it (rq#1602). It
  never expires and blocks a restart under the same name, so it is deleted with its
  memberships. A hash with a TTL is never deleted: Redis expires it.

Either only while nobody subscribes to the worker's command channel and none of its
executions is live; a worker the rule holds back is reported as a skip.

Where the task looks: the global set, the per-queue set of every queue in ``rq:queues``,
and the per-queue sets and worker hashes found by a SCAN of ``<prefix>:worker*``; SCAN
matters because queues nobody serves are exactly where sets leak, and an orphaned horse
can re-create a hash that is in no set. The SCAN is bounded per pass and resumes where
the previous pass stopped (``Keyspace.worker_scan_cursor``, janitor state with a TTL).

The queue allowlist: per-queue sets of queues outside it are never read or written. The
global set and worker hashes belong to no single queue. A member whose hash is gone is
always dropped from the global set (RQ's own ``Worker.find_by_key`` does that on every
``Worker.all()``); a zombie is deleted unless every queue it is known to serve (its
per-queue sets and its ``queues`` field) is outside the allowlist. A zombie known to
serve no queue, as most orphaned-horse hashes, is judged on the evidence alone.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from janitor.actions import Action, PruneDeadWorker, Skip
from janitor.batches import chunks
from janitor.keyspace import iter_queue_names, to_text
from janitor.liveness import HASH_EXPIRED, ZOMBIE, Recheck, judge_worker_keys
from janitor.scan import ResumableScan
from janitor.tasks.base import TaskContext

NAME = "prune_workers"

SCAN_COUNT = 1000
"""Keys SCAN visits per call."""
SCAN_CALLS_PER_PASS = 100
"""SCAN calls per pass (about 100k keys); a larger keyspace is covered over several passes."""
CURSOR_TTL_S = 86_400
"""After a day without a pass, the SCAN starts over; the cursor is worthless by then."""


@dataclass(frozen=True, slots=True)
class _ScanSlice:
    """What one pass's share of the keyspace SCAN found, and the SCAN (where it stopped)."""

    scan: ResumableScan
    sets: tuple[bytes, ...]
    """Per-queue worker sets (type set)."""
    hashes: tuple[bytes, ...]
    """Worker hashes (type hash), live or not."""


class PruneWorkers:
    """Removes dead workers: stale set members and zombie worker hashes."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield one ``worker_pruned`` action per dead worker, then the SCAN bookkeeping."""
        found = _scan_slice(ctx)
        sets = yield from _worker_sets(ctx, found.sets)
        sets_of = yield from _memberships(ctx, sets)
        candidates = [*sets_of, *(h for h in found.hashes if h not in sets_of)]
        for chunk in chunks(candidates, ctx.page_size):
            yield from _judge(ctx, sets_of, chunk)
        if state := found.scan.save(CURSOR_TTL_S):
            yield Action(NAME, None, {}, state)


def _event(
    ctx: TaskContext, worker: bytes, sets: Iterable[bytes], reason: str
) -> dict[str, object]:
    """The contract's ``worker_pruned`` fields; the global set is not a queue."""
    names = (ctx.keys.queue_name_from_workers_key(key) for key in sets)
    return {
        "worker": to_text(ctx.keys.worker_name_from_key(worker) or worker),
        "queues": sorted(to_text(name) for name in names if name is not None),
        "reason": reason,
    }


def _scan_slice(ctx: TaskContext) -> _ScanSlice:
    """SCAN ``<prefix>:worker*`` from the stored cursor, for at most SCAN_CALLS_PER_PASS calls.

    One pattern covers both ``rq:workers:<q>`` and ``rq:worker:<w>``; TYPE tells a
    worker hash from RQ 3's ``rq:worker:<w>:executions`` set (never the name).
    """
    scan = ResumableScan(
        ctx.client,
        ctx.keys.worker_scan_cursor(),
        ctx.keys.glob("worker*"),
        budget=SCAN_CALLS_PER_PASS * SCAN_COUNT,
        count=SCAN_COUNT,
    )
    hits = [key for page in scan.pages() for key in page]
    sets: list[bytes] = []
    hashes: list[bytes] = []
    for chunk in chunks(hits, SCAN_COUNT):
        pipe = ctx.client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        for key, kind in zip(chunk, pipe.execute(), strict=True):
            if kind == b"set" and ctx.keys.queue_name_from_workers_key(key):
                sets.append(key)
            elif kind == b"hash" and ctx.keys.worker_name_from_key(key):
                hashes.append(key)
    return _ScanSlice(scan, tuple(sets), tuple(hashes))


def _worker_sets(
    ctx: TaskContext, scanned: Iterable[bytes]
) -> Generator[Skip, None, list[bytes]]:
    """The global set and each allowed queue's set that exists, each once.

    A set key that holds another type is reported and left alone.
    """
    candidates = [ctx.keys.workers()]
    candidates += (
        ctx.keys.workers(name)
        for name in iter_queue_names(ctx.client, ctx.keys)
        if ctx.allows_queue(to_text(name))
    )
    for key in scanned:
        queue = ctx.keys.queue_name_from_workers_key(key)
        if queue is not None and ctx.allows_queue(to_text(queue)):
            candidates.append(key)
    unique = list(dict.fromkeys(candidates))
    sets: list[bytes] = []
    for chunk in chunks(unique, ctx.page_size):
        pipe = ctx.client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        for key, kind in zip(chunk, pipe.execute(), strict=True):
            if kind == b"set":
                sets.append(key)
            elif kind != b"none":
                where = {"key": to_text(key), "type": to_text(kind)}
                yield Skip(NAME, "a worker set key holds another type", where)
    return sets


def _members(ctx: TaskContext, sets: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Yield (set, member) pairs; the first SSCAN page of many sets goes in one round trip.

    Per-queue sets hold a handful of members each, and actinia has a queue per job.
    """
    for chunk in chunks(sets, ctx.page_size):
        pipe = ctx.client.pipeline(transaction=False)
        for key in chunk:
            pipe.sscan(key, 0, count=ctx.page_size)
        for key, reply in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                continue  # the key changed type since TYPE said set: not ours to judge now
            cursor, page = reply
            yield from ((key, member) for member in page)
            while cursor != 0:
                cursor, page = ctx.client.sscan(key, cursor, count=ctx.page_size)
                yield from ((key, cast("bytes", member)) for member in page)


def _memberships(
    ctx: TaskContext, sets: Sequence[bytes]
) -> Generator[Skip, None, dict[bytes, list[bytes]]]:
    """Read every member of ``sets``: each worker key with the sets it is in."""
    sets_of: dict[bytes, list[bytes]] = {}
    for set_key, member in _members(ctx, sets):
        if ctx.keys.worker_name_from_key(member) is None:
            where = {"key": to_text(set_key), "member": to_text(member)}
            yield Skip(NAME, "a worker set holds a member that is no worker key", where)
            continue
        sets_of.setdefault(member, []).append(set_key)
    return sets_of


def _judge(
    ctx: TaskContext, sets_of: Mapping[bytes, list[bytes]], workers: Sequence[bytes]
) -> Iterator[Action | Skip]:
    """Prune each worker the liveness rule finds dead; report the ones it holds back."""
    judged = judge_worker_keys(
        ctx.client,
        ctx.keys,
        workers,
        now=ctx.now,
        dead_after=ctx.settings.workers.dead_after,
    )
    for key, (worker, verdict) in judged.items():
        where = {"key": to_text(key)}
        sets = tuple(sets_of.get(key, ()))
        if verdict.held:
            yield Skip(NAME, f"a worker not provably dead: {verdict.reason}", where)
        elif not verdict.dead or (verdict.reason == HASH_EXPIRED and not sets):
            continue  # alive; or a scanned hash that expired since, in no set we read
        elif verdict.reason == ZOMBIE and not _allowed(ctx, sets, worker.queues):
            yield Skip(NAME, "a zombie worker of queues outside the allowlist", where)
        else:
            write = PruneDeadWorker(key, sets, Recheck.of(worker, verdict, ctx.keys))
            event = _event(ctx, key, sets, verdict.reason)
            yield Action(NAME, "worker_pruned", event, write)


def _allowed(ctx: TaskContext, sets: Sequence[bytes], raw_queues: bytes | None) -> bool:
    """Whether a zombie may go: some known queue is allowed, or it serves no known queue.

    Only allowed queues' sets were read, so membership in a per-queue set settles it.
    """
    if any(ctx.keys.queue_name_from_workers_key(key) is not None for key in sets):
        return True
    queues = [q for q in (raw_queues or b"").split(b",") if q]
    return not queues or any(ctx.allows_queue(to_text(q)) for q in queues)
