"""Task ``prune_workers``: drop dead workers from RQ's worker sets and delete zombie worker hashes.

Two kinds of dead worker (rq-keyspace.md §5, §9.2):

* ``hash_expired``: a member of ``rq:workers`` or ``rq:workers:<q>`` whose hash is gone
  (kill -9, OOM kill, a lost node). RQ drops such members only from the sets of queues a
  live worker serves, so the sets of unserved queues leak (§4.5 item 7). The member is
  removed from every set it is in, with the hash re-checked in Lua: a worker restarting
  under the same name re-creates its hash first.
* ``zombie``: a ``rq:worker:<w>`` hash without TTL whose ``last_heartbeat`` is missing or
  older than ``[workers] dead_after`` and whose command channel has no subscriber, as an
  orphaned work horse leaves it (#1602, §4.5 item 9). It never expires and blocks a
  restart under the same name, so it is deleted with its memberships. A hash with a TTL
  is never deleted: Redis expires it.

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

from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from janitor.actions import (
    Action,
    DeleteZombieWorker,
    PruneWorkerSets,
    SetJanitorState,
    Skip,
)
from janitor.jobs import FieldError, parse_rq_time
from janitor.keyspace import iter_queue_names, to_text
from janitor.tasks.base import TaskContext

NAME = "prune_workers"
HASH_EXPIRED = "hash_expired"
ZOMBIE = "zombie"

SCAN_COUNT = 1000
"""Keys SCAN visits per call."""
SCAN_CALLS_PER_PASS = 100
"""SCAN calls per pass (about 100k keys); a larger keyspace is covered over several passes."""
CURSOR_TTL_S = 86_400
"""After a day without a pass, the SCAN starts over; the cursor is worthless by then."""
WORKER_FIELDS = ("last_heartbeat", "queues")
"""The only worker hash fields the task reads."""

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class _ScanSlice:
    """What one pass's share of the keyspace SCAN found, and where it started and stopped."""

    start: int
    end: int
    sets: tuple[bytes, ...]
    """Per-queue worker sets (type set)."""
    hashes: tuple[bytes, ...]
    """Worker hashes (type hash), live or not."""


@dataclass(slots=True)
class _Census:
    """The members of the sets read: the sets each is in, and whether its hash existed."""

    sets_of: dict[bytes, list[bytes]] = field(default_factory=dict)
    exists: dict[bytes, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Suspect:
    """A worker hash without TTL and without a recent heartbeat."""

    key: bytes
    heartbeat: bytes
    """The raw ``last_heartbeat`` (empty when missing), re-checked at write time."""
    queues: tuple[bytes, ...]
    """The queue names in its ``queues`` field."""


class PruneWorkers:
    """Removes dead workers: stale set members and zombie worker hashes."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield one ``worker_pruned`` action per dead worker, then the SCAN bookkeeping."""
        found = _scan_slice(ctx)
        sets = yield from _worker_sets(ctx, found.sets)
        census = yield from _take_census(ctx, sets)
        for worker, exists in census.exists.items():
            if not exists:
                worker_sets = tuple(census.sets_of[worker])
                yield Action(
                    NAME,
                    "worker_pruned",
                    _event(ctx, worker, worker_sets, HASH_EXPIRED),
                    PruneWorkerSets(worker, worker_sets),
                )
        candidates = [w for w, exists in census.exists.items() if exists]
        candidates += [h for h in found.hashes if h not in census.exists]
        yield from _zombies(ctx, census, candidates)
        if found.end != found.start:
            value = str(found.end).encode() if found.end else None
            state = SetJanitorState(ctx.keys.worker_scan_cursor(), value, CURSOR_TTL_S)
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
    raw = cast("bytes | None", ctx.client.get(ctx.keys.worker_scan_cursor()))
    start = int(raw) if raw is not None and raw.isdigit() else 0
    cursor, hits = start, []
    for _ in range(SCAN_CALLS_PER_PASS):
        cursor, page = ctx.client.scan(
            cursor=cursor, match=ctx.keys.glob("worker*"), count=SCAN_COUNT
        )
        hits += cast("list[bytes]", page)
        if cursor == 0:
            break
    sets: list[bytes] = []
    hashes: list[bytes] = []
    for chunk in _chunks(hits, SCAN_COUNT):
        pipe = ctx.client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        for key, kind in zip(chunk, pipe.execute(), strict=True):
            if kind == b"set" and ctx.keys.queue_name_from_workers_key(key):
                sets.append(key)
            elif kind == b"hash" and ctx.keys.worker_name_from_key(key):
                hashes.append(key)
    return _ScanSlice(start, int(cursor), tuple(sets), tuple(hashes))


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
    for chunk in _chunks(unique, ctx.page_size):
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
    for chunk in _chunks(sets, ctx.page_size):
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


def _take_census(
    ctx: TaskContext, sets: Sequence[bytes]
) -> Generator[Skip, None, _Census]:
    """Read every member of ``sets`` and whether its hash exists (pipelined EXISTS)."""
    census = _Census()
    pairs: list[tuple[bytes, bytes]] = []
    for set_key, member in _members(ctx, sets):
        if ctx.keys.worker_name_from_key(member) is None:
            where = {"key": to_text(set_key), "member": to_text(member)}
            yield Skip(NAME, "a worker set holds a member that is no worker key", where)
            continue
        pairs.append((set_key, member))
    for chunk in _chunks(pairs, ctx.page_size):
        pipe = ctx.client.pipeline(transaction=False)
        for _, member in chunk:
            pipe.exists(member)
        for (set_key, member), exists in zip(chunk, pipe.execute(), strict=True):
            census.sets_of.setdefault(member, []).append(set_key)
            # Seen alive once is alive: it may have re-registered while the pass ran.
            census.exists[member] = census.exists.get(member, False) or bool(exists)
    return census


def _zombies(
    ctx: TaskContext, census: _Census, candidates: Sequence[bytes]
) -> Iterator[Action | Skip]:
    """Judge existing worker hashes: TTL and heartbeat first, then the pubsub channel."""
    for chunk in _chunks(candidates, ctx.page_size):
        pipe = ctx.client.pipeline(transaction=False)
        for key in chunk:
            pipe.ttl(key)
            pipe.hmget(key, WORKER_FIELDS)
        replies = pipe.execute(raise_on_error=False)
        suspects: list[_Suspect] = []
        for index, key in enumerate(chunk):
            ttl, fields = replies[2 * index : 2 * index + 2]
            judged = _suspect(ctx, key, ttl, fields)
            if isinstance(judged, Skip):
                yield judged
            elif judged is not None:
                suspects.append(judged)
        yield from _confirm(ctx, census, suspects)


def _suspect(
    ctx: TaskContext, key: bytes, ttl: object, fields: object
) -> _Suspect | Skip | None:
    """A suspect when the hash has no TTL and no heartbeat within ``dead_after``."""
    if isinstance(ttl, Exception) or isinstance(fields, Exception):
        return Skip(NAME, "a worker key is not a hash", {"key": to_text(key)})
    if ttl != -1:
        return None  # expiring (or just gone): Redis, not the janitor, deletes it
    raw_heartbeat, raw_queues = cast("list[bytes | None]", fields)
    try:
        heartbeat = parse_rq_time(raw_heartbeat)
    except FieldError as err:
        where = {"key": to_text(key), "error": str(err)}
        return Skip(NAME, "unreadable worker last_heartbeat", where)
    if heartbeat is not None and ctx.now - heartbeat < ctx.settings.workers.dead_after:
        return None
    queues = tuple(q for q in (raw_queues or b"").split(b",") if q)
    return _Suspect(key, raw_heartbeat or b"", queues)


def _confirm(
    ctx: TaskContext, census: _Census, suspects: Sequence[_Suspect]
) -> Iterator[Action | Skip]:
    """Delete suspects nobody listens for, unless they serve only queues outside the allowlist."""
    if not suspects:
        return
    channels = {
        s.key: ctx.keys.pubsub_channel(ctx.keys.worker_name_from_key(s.key) or b"")
        for s in suspects
    }
    subscribers = dict(
        cast("list[tuple[bytes, int]]", ctx.client.pubsub_numsub(*channels.values()))
    )
    for suspect in suspects:
        where = {"key": to_text(suspect.key)}
        sets = tuple(census.sets_of.get(suspect.key, ()))
        if subscribers.get(channels[suspect.key], 0):
            yield Skip(NAME, "a worker without TTL or heartbeat still listens", where)
        elif not _allowed(ctx, sets, suspect.queues):
            yield Skip(NAME, "a zombie worker of queues outside the allowlist", where)
        else:
            write = DeleteZombieWorker(
                suspect.key, suspect.heartbeat, channels[suspect.key], sets
            )
            event = _event(ctx, suspect.key, sets, ZOMBIE)
            yield Action(NAME, "worker_pruned", event, write)


def _allowed(ctx: TaskContext, sets: Sequence[bytes], queues: Sequence[bytes]) -> bool:
    """Whether a zombie may go: some known queue is allowed, or it serves no known queue.

    Only allowed queues' sets were read, so membership in a per-queue set settles it.
    """
    if any(ctx.keys.queue_name_from_workers_key(key) is not None for key in sets):
        return True
    return not queues or any(ctx.allows_queue(to_text(q)) for q in queues)
