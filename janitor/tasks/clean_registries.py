"""Task ``clean_registries``: RQ's own registry hygiene for queues that no live worker serves.

A worker cleans the registries of the queues it serves (docs/keyspace.md, "Registry
cleaning by RQ" and "How workers use the marker"), so the registries of a queue nobody
serves any more leak (docs/keyspace.md, "Leaks RQ leaves", item 7). For each queue in
``rq:queues`` that the allowlist admits and that no live worker serves (no member of
``rq:workers:<q>`` whose hash exists), the task plans, each removal re-checked in Lua at
write time (``scripts.CLEAN_REGISTRY_ENTRIES``):

* ``expire``: ``ZREMRANGEBYSCORE <registry> 0 <now>`` on the finished and failed
  registries, exactly as RQ does; min 0 keeps the failed registry's -1 "forever" scores.
* ``gone``: entries whose job hash is gone from the finished, failed, canceled and
  deferred registries. From the scheduled registry only entries more than
  ``SCHEDULED_GRACE_S`` overdue that were already seen dangling, with the same score, at
  least ``SECOND_LOOK_S`` before: RQ ZADDs a scheduled id before it writes the job hash
  (docs/keyspace.md, "Registry entries and side keys", item 3). The first sighting is
  janitor state (``Keyspace.scheduled_sighting``, a day's TTL).
* ``wip``: only the two exceptions (docs/keyspace.md, "Registry entries and side
  keys", item 2), for started-registry members scored in [0, now]: no job hash under
  either reading of the member (1.x ``<id>``, 2.x ``<id>:<exec>``; no layout guess
  needed), or the job is terminal and, for 2.x, its execution hash is gone (rq#2424,
  what RQ 3.0 does). Abandoned started jobs are ``recover_abandoned``'s.

The marker (docs/keyspace.md, "Marker rules for the janitor"). Planning only reads.
Per queue with something to clean the plan yields: take ``rq:clean_registries:<q>``
(``SET <token> NX EX MARKER_TTL_S``, one random token per run), the hygiene writes, then
give it back (DEL only while it still holds the token). Every hygiene write refuses
unless the marker holds the token, so if a worker took the marker between plan and apply
nothing is written. The marker has its TTL from birth, so a crash leaves it for at most
``MARKER_TTL_S``. A queue whose marker is held at planning time is skipped, never waited
for: on RQ <= 1.15 workers never release it (899 s). A dry run applies nothing, the
marker included. A queue with nothing to clean is not touched.

Served queues (docs/keyspace.md, "Leaks RQ leaves", item 14): only the dangling ids of
the canceled and deferred registries, which RQ's maintenance never cleans, each re-checked
(``dangling``), without the marker, audited one by one as ``registry_entry_removed``.
Queue lists of unserved queues (item 15): ids whose job hash is gone leave ``rq:queue:<q>``
and ``rq:queue:<q>:intermediate`` (``lrem``, under the marker), audited as
``dead_id_removed``. Unlisted queues (``janitor.unlisted``) are walked like listed ones.
RQ 3's ready registry (``janitor.tasks.ready``) and, with ``[deferred] stuck = "cancel"``,
deferred jobs that can never run (``janitor.tasks.stuck``) follow per queue. Then the
global indexes, ``rq:groups`` and ``rq:cron_schedulers`` (``janitor.tasks.indexes``), and
RQ 3's rate limits (``janitor.tasks.ratelimits``).

Events: ``marker_refreshed`` (``queue``) when the janitor gave back the marker it took,
i.e. the queue's hygiene ran under it. Removed entries get no audit event of their own
(docs/contract.md names no event for a removed registry entry): they are the queue's
hygiene, audited by that one line; a line per id could be huge, and ``orphan_deleted``
means a deleted key. A real run reports their number on the
operational log as ``registry_entries_removed`` (queue, registry, count).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, cast

import redis

from janitor import scripts
from janitor.actions import (
    Action,
    Arg,
    ScriptBatch,
    SetJanitorState,
    Skip,
    Write,
    run_fenced,
)
from janitor.audit import get_logger
from janitor.jobs import TERMINAL_RAW
from janitor.keyspace import Layout, to_text
from janitor.leader import Fence
from janitor.tasks.base import TaskContext, first_seen
from janitor.tasks.indexes import plan_indexes
from janitor.tasks.ratelimits import plan_limits
from janitor.tasks.ready import plan_ready
from janitor.tasks.stuck import plan_stuck
from janitor.unlisted import every_queue, find_unlisted

NAME = "clean_registries"
MARKER_TTL_S = 60
"""How long the marker may outlive a janitor that died holding it (workers use 899 s)."""
SCHEDULED_GRACE_S = 300
"""A dangling scheduled id must be overdue by this much (docs/keyspace.md, "Registry
entries and side keys", item 3)."""
SECOND_LOOK_S = 60
"""...and have been seen dangling at least this long before, on an earlier pass."""
SIGHTING_TTL_S = 86_400
"""A first sighting not confirmed within a day is forgotten."""
MAX_ENTRIES_PER_QUEUE = 10_000
"""Removals planned per queue and run; more wait for the next run (bounds memory)."""
EXPIRING = ("finished", "failed")
"""Registries whose expired scores RQ's own cleanup removes."""
DANGLING = ("finished", "failed", "canceled", "deferred")
"""Registries whose entries without a job hash go at once."""
SERVED_DANGLING = ("canceled", "deferred")
"""The registries of a served queue whose dangling ids go too: its worker never cleans them."""
LIST_READ_CAP = 100_000
"""Ids read per list (queue or intermediate) and run; a longer list is read that far."""
STEP_EVENTS = {b"dangling": "registry_entry_removed", b"lrem": "dead_id_removed"}
"""The audit event of a step that removes a job id outside the marker's hygiene line."""

log = get_logger(__name__)

Page = list[tuple[bytes, bytes]]
"""(member, raw score) pairs from ZSCAN."""


@dataclass(frozen=True, slots=True)
class MarkerWrite(ScriptBatch):
    """Take (``SET NX EX``) or give back (compare-and-delete) a queue's maintenance marker."""

    op: bytes
    """``take`` or ``give``."""
    marker: bytes
    token: bytes

    source: ClassVar[str] = scripts.CLEANING_MARKER
    what: ClassVar[str] = "marker writes"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.MARKER_WRITE``."""
        return scripts.MARKER_WRITE.encode(
            {"marker": self.marker},
            {"op": self.op, "marker_token": self.token, "ttl": MARKER_TTL_S},
        )


@dataclass(frozen=True, slots=True)
class CleanEntries:
    """One hygiene step on one registry; see ``scripts.CLEAN_REGISTRY_ENTRIES``."""

    op: bytes
    """``expire``, ``gone``, ``dangling``, ``wip`` or ``lrem`` (see the script)."""
    queue: bytes
    registry_name: str
    marker: bytes
    token: bytes
    registry: bytes
    """The registry, or for ``lrem`` the list."""
    member: bytes
    score: bytes
    """The raw score the plan read (``gone``) or the cutoff (``expire``, ``wip``)."""
    job_keys: tuple[bytes, bytes, bytes]
    """Job hash, job hash of the member's ``<id>`` part, execution hash (``wip``)."""

    source: ClassVar[str] = scripts.CLEAN_REGISTRY_ENTRIES

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,  # noqa: ARG003 - the protocol's signature
    ) -> list[bool]:
        """Apply the steps in one script call and log how many entries went, per registry."""
        steps = [cast("CleanEntries", write) for write in writes]
        items: list[tuple[list[bytes], list[Arg]]] = []
        for step in steps:
            job, prefix_job, execution = step.job_keys
            item = scripts.CLEAN_ENTRY.encode(
                {
                    "marker": step.marker,
                    "registry": step.registry,
                    "job": job,
                    "prefix_job": prefix_job,
                    "execution": execution,
                },
                {
                    "op": step.op,
                    "marker_token": step.token,
                    "member": step.member,
                    "score": step.score,
                    "colon": int(b":" in step.member),
                },
            )
            items.append(item)
        removed = run_fenced(client, cls.source, fence, items)
        counts: Counter[tuple[str, str]] = Counter()
        for step, count in zip(steps, removed, strict=True):
            counts[to_text(step.queue), step.registry_name] += count
        for (queue, registry), count in counts.items():
            if count:
                log.info(
                    "registry_entries_removed",
                    task=NAME,
                    queue=queue,
                    registry=registry,
                    count=count,
                )
        return [count > 0 for count in removed]


class CleanRegistries:
    """Does RQ's registry hygiene for queues no live worker serves, under their marker."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield per queue: take the marker, the hygiene steps, give it back (``marker_refreshed``).

        A served queue gets only its two registries RQ never cleans, without the marker.
        """
        token = secrets.token_hex(16).encode()
        unlisted = find_unlisted(ctx.client, ctx.keys, ctx.now, task=NAME)
        for queue in every_queue(ctx.client, ctx.keys, unlisted):
            name = to_text(queue)
            if not ctx.allows_queue(name):
                continue
            served = _served(ctx, queue)
            if served:
                # the worker cleans the rest itself (docs/keyspace.md, "Leaks RQ leaves", item 14)
                yield from _QueuePlan(ctx, queue, token, served=True).plan()
            elif ctx.client.exists(ctx.keys.cleaning_marker(queue)):
                yield Skip(
                    NAME, "the queue's maintenance marker is held", {"queue": name}
                )
            else:
                yield from _QueuePlan(ctx, queue, token).plan()
            yield from plan_ready(ctx, NAME, queue, served=served)
            yield from plan_stuck(ctx, NAME, queue)
        yield from plan_indexes(ctx, NAME)
        yield from plan_limits(ctx, NAME)
        yield from unlisted.bookkeeping


def _served(ctx: TaskContext, queue: bytes) -> bool:
    """Whether a member of ``rq:workers:<q>`` still has its hash (RQ's liveness rule)."""
    try:
        members = list(ctx.client.sscan_iter(ctx.keys.workers(queue), count=1000))
    except redis.ResponseError:
        return True  # not a set: garbage under an RQ name, so keep out
    pipe = ctx.client.pipeline(transaction=False)
    for member in members:
        pipe.exists(cast("bytes", member))
    return any(pipe.execute())


def _score(raw: bytes) -> float:
    """A raw score as Redis writes it (decimal, ``inf`` or ``-inf``)."""
    return float(raw)


@dataclass(slots=True)
class _QueuePlan:
    """Reads one queue's registries and collects its hygiene steps (at most MAX_ENTRIES_PER_QUEUE)."""

    ctx: TaskContext
    queue: bytes
    token: bytes
    served: bool = False
    """Only the dangling ids of ``SERVED_DANGLING``, without the marker."""
    steps: list[CleanEntries] = field(default_factory=list)
    sightings: list[Action] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)

    def plan(self) -> Iterator[Action | Skip]:
        """Read everything, then yield take, steps and give, then the sighting bookkeeping."""
        self._read()
        yield from self.skips
        if self.served:
            yield from (self._action(step) for step in self.steps)
            return
        yield from self.skips
        name = to_text(self.queue)
        if self.steps:
            # The engine applies writes in plan order, consecutive writes of one kind in
            # one call (engine._apply): the marker is taken before the cleaning and given
            # back after it, never reordered around it.
            marker = self.ctx.keys.cleaning_marker(self.queue)
            take = MarkerWrite(b"take", marker, self.token)
            yield Action(NAME, None, {"queue": name}, take)
            yield from (self._action(step) for step in self.steps)
            give = MarkerWrite(b"give", marker, self.token)
            yield Action(NAME, "marker_refreshed", {"queue": name}, give)
        yield from self.sightings

    def _read(self) -> None:
        """Read the queue's registries and lists and collect the steps, skips and sightings."""
        zsets = self._zset_registries()
        if self.served:
            for kind in SERVED_DANGLING:
                if kind in zsets:
                    self._dangling(kind, zsets[kind])
            return
        for kind in EXPIRING:
            if kind in zsets:
                self._expire(kind, zsets[kind])
        for kind in DANGLING:
            if kind in zsets:
                self._dangling(kind, zsets[kind])
        if "scheduled" in zsets:
            self._scheduled(zsets["scheduled"])
        if "started" in zsets:
            self._started(zsets["started"])
        self._lists()

    def _action(self, step: CleanEntries) -> Action:
        """A step's action: audited per id where it removes a job id (``STEP_EVENTS``)."""
        name = to_text(self.queue)
        event = STEP_EVENTS.get(step.op)
        if event is None:
            return Action(NAME, None, {"queue": name}, step)
        fields = {"queue": name, "job_id": to_text(step.member)}
        fields["list" if step.op == b"lrem" else "registry"] = step.registry_name
        return Action(NAME, event, fields, step)

    @property
    def full(self) -> bool:
        """Whether the queue's share of this run is planned."""
        return len(self.steps) + len(self.sightings) >= MAX_ENTRIES_PER_QUEUE

    def _zset_registries(self) -> dict[str, bytes]:
        """The queue's registries that are sorted sets (missing ones are skipped too)."""
        names = (*DANGLING, "scheduled", "started")
        keys = {
            name: cast("bytes", getattr(self.ctx.keys, name)(self.queue))
            for name in names
        }
        pipe = self.ctx.client.pipeline(transaction=False)
        for key in keys.values():
            pipe.type(key)
        found: dict[str, bytes] = {}
        for (name, key), kind in zip(keys.items(), pipe.execute(), strict=True):
            if kind == b"zset":
                found[name] = key
            elif kind != b"none":
                where = {"queue": to_text(self.queue), "key": to_text(key)}
                self.skips.append(
                    Skip(NAME, "a registry key holds another type", where)
                )
        return found

    def _step(
        self, op: bytes, kind: str, registry: bytes, member: bytes, score: bytes
    ) -> None:
        keys = self.ctx.keys
        job_id, execution = keys.parse_started_member(member, Layout.RQ2)
        job_keys = (
            keys.job(member),
            keys.job(job_id),
            keys.execution(job_id, execution) if execution is not None else registry,
        )
        marker = keys.cleaning_marker(self.queue)
        where = (self.queue, kind, marker, self.token, registry)
        self.steps.append(CleanEntries(op, *where, member, score, job_keys))

    def _pages(self, key: bytes) -> Iterator[Page]:
        """ZSCAN pages of a registry, until the queue's budget is used up."""
        cursor = 0
        while not self.full:
            cursor, page = self.ctx.client.zscan(
                key, cursor, count=self.ctx.page_size, score_cast_func=bytes
            )
            yield cast("Page", page)
            if cursor == 0:
                return

    def _missing(self, page: Page) -> Page:
        """The entries of ``page`` whose job hash does not exist (ZSCAN may repeat some)."""
        unique = list(dict(page).items())
        pipe = self.ctx.client.pipeline(transaction=False)
        for member, _ in unique:
            pipe.exists(self.ctx.keys.job(member))
        return [
            entry for entry, n in zip(unique, pipe.execute(), strict=True) if n == 0
        ]

    def _lists(self) -> None:
        """Dead ids (job hash gone) in the queue's list and intermediate list, for ``lrem`` steps.

        See docs/keyspace.md, "Leaks RQ leaves", item 15. ``rq:queue:<q>:intermediate`` is
        left alone while it is a listed queue's own list (item 13).
        """
        keys, client = self.ctx.keys, self.ctx.client
        lists = {"queue": keys.queue(self.queue)}
        own = client.sismember(
            keys.queues(), cast("str", keys.intermediate(self.queue))
        )
        if not own:
            lists["intermediate"] = keys.intermediate(self.queue)
        for kind, key in lists.items():
            if client.type(key) != b"list":
                continue
            seen: set[bytes] = set()
            start = 0
            while start < LIST_READ_CAP and not self.full:
                ids = cast(
                    "list[bytes]",
                    client.lrange(key, start, start + self.ctx.page_size - 1),
                )
                if not ids:
                    break
                start += len(ids)
                page = [(job_id, b"") for job_id in ids if job_id not in seen]
                for job_id, _ in self._missing(page):
                    if job_id not in seen and not self.full:
                        seen.add(job_id)
                        self._step(b"lrem", kind, key, job_id, b"")

    def _expire(self, kind: str, key: bytes) -> None:
        if self.ctx.client.zcount(key, 0, self.ctx.now):
            self._step(b"expire", kind, key, b"", repr(self.ctx.now).encode())

    def _dangling(self, kind: str, key: bytes) -> None:
        op = b"dangling" if self.served else b"gone"
        cutoff = self.ctx.now
        seen: set[bytes] = set()
        for page in self._pages(key):
            # entries scored in [0, now] go with the expire step, as in RQ
            alive = [
                e
                for e in page
                if not (kind in EXPIRING and 0 <= _score(e[1]) <= cutoff)
            ]
            for member, score in self._missing(alive):
                if member not in seen and not self.full:
                    seen.add(member)
                    self._step(op, kind, key, member, score)

    def _scheduled(self, key: bytes) -> None:
        """Dangling, long overdue scheduled ids: record a first sighting, or remove on the second."""
        overdue = self.ctx.now - SCHEDULED_GRACE_S
        done: set[bytes] = set()
        for page in self._pages(key):
            late = [e for e in page if _score(e[1]) <= overdue and e[0] not in done]
            missing = self._missing(late)
            pipe = self.ctx.client.pipeline(transaction=False)
            for member, _ in missing:
                pipe.get(self.ctx.keys.scheduled_sighting(member))
            for (member, score), seen in zip(missing, pipe.execute(), strict=True):
                done.add(member)
                self._sighting(key, member, score, cast("bytes | None", seen))

    def _sighting(
        self, key: bytes, member: bytes, score: bytes, seen: bytes | None
    ) -> None:
        first = first_seen(seen, score)
        if first is not None and self.ctx.now - first >= SECOND_LOOK_S:
            self._step(b"gone", "scheduled", key, member, score)
        elif first is None and not self.full:
            value = repr(self.ctx.now).encode() + b" " + score
            record = SetJanitorState(
                self.ctx.keys.scheduled_sighting(member), value, SIGHTING_TTL_S
            )
            self.sightings.append(
                Action(NAME, None, {"queue": to_text(self.queue)}, record)
            )

    def _started(self, key: bytes) -> None:
        """Expired started members under the two exceptions (hash gone, or terminal and no execution).

        See docs/keyspace.md, "Registry entries and side keys", item 2.
        """
        for page in self._pages(key):
            expired = list(dict(e for e in page if 0 <= _score(e[1]) <= self.ctx.now))
            pipe = self.ctx.client.pipeline(transaction=False)
            for member in expired:
                job_id, execution = self.ctx.keys.parse_started_member(
                    member, Layout.RQ2
                )
                for job in (member, job_id):
                    pipe.exists(self.ctx.keys.job(job))
                    pipe.hget(self.ctx.keys.job(job), "status")
                pipe.exists(self.ctx.keys.execution(job_id, execution or b""))
            replies = pipe.execute(raise_on_error=False)
            for index, member in enumerate(expired):
                if (
                    _stale_started(member, replies[5 * index : 5 * index + 5])
                    and not self.full
                ):
                    self._step(
                        b"wip", "started", key, member, repr(self.ctx.now).encode()
                    )


def _stale_started(member: bytes, replies: Sequence[object]) -> bool:
    """The plan's side of the Lua ``wip`` re-check, from EXISTS/HGET replies."""
    if any(isinstance(reply, Exception) for reply in replies):
        return False  # a key of the wrong type: not ours to judge
    exists, status, prefix_exists, prefix_status, execution_exists = replies
    if exists:
        return status in TERMINAL_RAW
    if b":" not in member or not prefix_exists:
        return True
    return prefix_status in TERMINAL_RAW and not execution_exists
