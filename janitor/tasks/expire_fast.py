"""The fast path of ``expire_jobs``: one script per page scans, judges and deletes the plain cases.

``scripts.EXPIRE_TERMINAL_JOBS`` walks registries itself, judges each entry by the
retention in the same atomic step as its delete, and answers back anything that is not
plainly past or short of its age rule; those go to ``expire_jobs``' ordinary planner
(``DELETE_TERMINAL_JOBS`` with its re-checks). The next page is sent as soon as the
previous one's answer arrives, before that answer is audited, so Redis runs one page while
the janitor audits the one before; ``tests/test_expire_fast_path.py`` proves both paths
end in the same state with the same audit lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.connection import Connection

from janitor import scripts
from janitor.actions import Action, Fence, Skip
from janitor.audit import EventRows
from janitor.connection import checkout
from janitor.errors import LeadershipLost
from janitor.jobs import rq_epoch
from janitor.keyspace import Keyspace, to_text
from janitor.tasks.base import DECISIONS_IN_FLIGHT, Decided, TaskContext
from janitor.wire import Call, resp

CapBoundary = tuple[float, bytes]
"""The (score, member) of the newest entry *beyond* a keep_last cap is at or below this."""

if TYPE_CHECKING:
    from janitor.tasks.expire_jobs import _Registry

    SlowPlanner = Callable[
        [
            TaskContext,
            _Registry,
            Mapping[str, CapBoundary],
            Sequence[tuple[bytes, bytes]],
        ],
        Iterator[Action | Skip],
    ]
    """Plans entries the script answered back the ordinary way."""
    RegistryPlanner = Callable[[TaskContext, _Registry], Iterator[Action | Skip]]
    """Plans a whole registry the ordinary way (the script could not scan it)."""

# -- the fast path: EXPIRE_TERMINAL_JOBS judges and deletes the plain cases ------------------
_FIRST_STATE = ord("a")
_ENDED_AT_LEN = 27
"""``len("2026-10-20T06:48:14.418003Z")``: the only ended_at the script deletes by."""


def key_templates(keys: Keyspace) -> list[bytes]:
    """The script's ARGV 4 to 13: the text before and after the job id in each per-job key.

    Job hash, dependents, dependencies, results, executions (the script's order), read
    off ``keys`` itself, so the key names still come from one module.
    """
    builders = (
        keys.job,
        keys.dependents,
        keys.dependencies,
        keys.results,
        keys.executions,
    )
    templates: list[bytes] = []
    for build in builders:
        head, _, tail = build(b"\x00").partition(b"\x00")
        templates += (head, tail)
    return templates


_EPOCH = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose: only formatted, as UTC
_ALWAYS = 9_000_000_000_000_000
"""Microseconds past every ended_at the script accepts (it accepts years up to 2200)."""


def _rq_text(micros: int) -> bytes:
    """``micros`` since the epoch in RQ's time format (exact: integer arithmetic)."""
    moment = _EPOCH + dt.timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def cutoffs(now: float, max_age_s: int) -> tuple[bytes, bytes]:
    """The latest ended_at past ``max_age_s``, and the first one plainly not, in RQ's format.

    The first is two microseconds on the safe side of the planner's own float
    arithmetic, so the script never deletes a job ``plan`` would keep; between the two
    the script asks the planner. "0s" deletes whatever the age.
    """
    if max_age_s <= 0:
        cutoff = _ALWAYS
    else:  # never before 1970: the strings compare as times only with four-digit years
        cutoff = max(-1, math.floor((now - max_age_s) * 1_000_000) - 2)
    return _rq_text(cutoff), _rq_text(cutoff + 5)


@dataclass(frozen=True, slots=True)
class Judge:
    """One registry as the script sees it: its keys and, per status, cutoff and cap flag."""

    reg: _Registry
    caps: Mapping[str, CapBoundary]
    started: bytes
    statuses: tuple[str, ...]
    spec: tuple[bytes, ...]
    """ARGV after the registry's origin and cursor: status count, then per status the
    status, its two cutoffs (see ``cutoffs``) and whether a cap applies."""
    rules: tuple[str, ...]
    """The age rule of each status, in ``statuses``' order (for the audit lines)."""

    @classmethod
    def of(
        cls, ctx: TaskContext, reg: _Registry, caps: Mapping[str, CapBoundary]
    ) -> Judge:
        """The cutoffs of ``reg``; ``caps`` are its keep_last boundaries, if any."""
        statuses = tuple(reg.retentions)
        spec = [str(len(statuses)).encode()]
        for status in statuses:
            past, young = cutoffs(ctx.now, reg.retentions[status].max_age_s)
            spec += [status.encode(), past, young, b"1" if status in caps else b"0"]
        started = ctx.keys.started(reg.queue)
        rules = tuple(reg.retentions[status].age_rule for status in statuses)
        return cls(reg, caps, started, statuses, tuple(spec), rules)


_SOURCES = {
    True: scripts.memoized(scripts.EXPIRE_TERMINAL_JOBS),
    False: scripts.EXPIRE_TERMINAL_JOBS,
}
"""The script to write with (its reply memoized, as ``run_script`` does) and to only judge with."""
_SHAS = {
    write: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()
    for write, source in _SOURCES.items()
}


@dataclass
class Memos:
    """A run's own keys: the memo keys of answered pages, and the hash of its cursors.

    The next page's script deletes the memos of answered pages (``Cleanup`` the last
    ones, and the hash). Deleting each memo right after its answer would be a round trip that waits behind
    the page Redis is running meanwhile.
    """

    stale: list[bytes] = field(default_factory=list)
    walk: bytes = b""
    """The hash of the run's cursors, which ``Cleanup`` deletes too."""
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    made: int = 0

    def next_key(self) -> bytes:
        """A memo key no other call uses: the run's own, numbered."""
        self.made += 1
        return Keyspace.memo(self.run, str(self.made))

    def take(self) -> list[bytes]:
        """The memo keys to delete now (and forget)."""
        stale, self.stale = self.stale, []
        return stale


@dataclass
class Cleanup:
    """The plan's last decision: it judges nothing and deletes the run's keys left over."""

    memos: Memos
    release: Callable[[], None] = lambda: None
    """Gives the pages' connections back to the pool (every answer has been read)."""

    def __len__(self) -> int:
        """Nothing to judge."""
        return 0

    def send(
        self,
        client: redis.Redis,
        fence: Fence | None,  # noqa: ARG002 - the protocol's signature
        *,
        dry_run: bool,  # noqa: ARG002 - as above
    ) -> Callable[[], Decided]:
        """Return what deletes them once every page before has been answered."""

        def receive() -> Decided:
            self.release()
            left = self.memos.take()
            if self.memos.walk:
                left.append(self.memos.walk)
            if left:
                client.unlink(*left)
            return Decided((), ())

        return receive


_DELETED_FIELDS = ("queue", "job_id", "status", "age_s", "rule")
"""The fields of a ``job_deleted`` audit event, in the planner's order."""
REGISTRIES_PER_CALL = 64
"""At most this many registries go into one script call (many small per_job queues)."""
SIZES_PER_READ = 256
"""How many registries' sizes one pipeline reads: empty ones never go into a script."""


@dataclass(slots=True, eq=False)
class Walk:
    """A registry the script is walking: its judge, its cursor, and its size."""

    judge: Judge
    cursor: bytes
    size: int
    """``ZCARD`` when the walk began: only a hint, for how many registries share a call."""
    held: dict[bytes, bytes] = field(default_factory=dict)
    """The entry (id -> score) the walk's cursor anchors on, when it is one left to the
    planner: planned only once the walk has moved on, so that its delete cannot pull the
    anchor away from under the walk (which would then pass over entries)."""


class Sweep:
    """The registries of one fast-path run, and where each one's walk stands.

    The script walks each registry itself. When it deletes, it keeps the cursors in a
    hash of the run's own, so pages go out back to back, each over the front of the
    registries not yet known to be finished, and whichever runs first takes the next
    entries. A dry run writes nothing, so there each page carries the cursors the
    answer of the page before gave: ``ScanPage.send`` reads that answer first (kept for
    the engine, which audits it afterwards). Either way Redis runs one page while the
    janitor audits the one before.
    """

    def __init__(
        self,
        ctx: TaskContext,
        registries: Iterator[_Registry],
        judge_of: Callable[[_Registry], Judge],
        planners: tuple[SlowPlanner, RegistryPlanner],
    ) -> None:
        """Walk ``registries``; ``planners`` plan entries and whole registries the ordinary way."""
        self.ctx, self.registries, self.judge_of = ctx, registries, judge_of
        self.plan_slow, self.plan_registry = planners
        self.chained = ctx.dry_run
        self.memos = Memos()
        if not self.chained:
            self.memos.walk = Keyspace.expire_walk(self.memos.run)
        self.walks: deque[Walk] = deque()
        """Registries not yet known to be finished, in order."""
        self.exhausted = False
        self.last: ScanPage | None = None
        """The latest page sent: in a dry run, its answer holds the next page's cursors."""
        self.templates = key_templates(ctx.keys)
        self.conns: list[Connection] = []
        """The pages' own connections, one per page in flight: taking one from the pool
        for every page costs two system calls (redis-py checks it for unread data)."""
        self.sent = 0
        self.last_on: dict[int, ScanPage] = {}

    def connection(self, page: ScanPage) -> Connection:
        """The connection for ``page``: the one whose page before was answered first."""
        index = self.sent % DECISIONS_IN_FLIGHT
        self.sent += 1
        if index == len(self.conns):
            self.conns.append(checkout(self.ctx.client))
        self.last_on[index] = page
        return self.conns[index]

    def close(self) -> None:
        """Give the connections back; one whose answer was left unread is closed first."""
        pool = self.ctx.client.connection_pool
        for index, conn in enumerate(self.conns):
            page = self.last_on.get(index)
            if page is not None and (not page.settled or page.error is not None):
                conn.disconnect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            pool.release(conn)
        self.conns, self.last_on = [], {}

    def more(self) -> bool:
        """Whether another page may find work (an answer still unread may leave some)."""
        if self.chained and self.last is not None and not self.last.settled:
            return True
        self._refill()
        return bool(self.walks)

    def _refill(self) -> None:
        """Read the sizes of the next registries; the empty ones are left out."""
        while len(self.walks) < REGISTRIES_PER_CALL and not self.exhausted:
            chunk = list(islice(self.registries, SIZES_PER_READ))
            if not chunk:
                self.exhausted = True
                return
            pipe = self.ctx.client.pipeline(transaction=False)
            for reg in chunk:
                pipe.zcard(reg.key)
            for reg, size in zip(
                chunk, pipe.execute(raise_on_error=False), strict=True
            ):
                if isinstance(size, Exception):  # the script answers 'x' for it
                    self.walks.append(Walk(self.judge_of(reg), b"0", 1))
                elif size:
                    self.walks.append(Walk(self.judge_of(reg), b"0", int(size)))

    def take(self, budget: int) -> list[Walk]:
        """The registries of the next call: enough, by their sizes, for its ``budget``.

        Back to back, the page before may not have answered yet: enough then for it too.
        """
        if self.chained and self.last is not None:
            self.last.settle()
        self._refill()
        wanted = budget if self.chained else DECISIONS_IN_FLIGHT * budget
        taken: list[Walk] = []
        total = 0
        for walk in self.walks:
            if total >= wanted or len(taken) >= REGISTRIES_PER_CALL:
                break
            taken.append(walk)
            total += walk.size
        return taken

    def answered(
        self, walks: Sequence[Walk], cursors: Sequence[bytes], slow: Sequence[object]
    ) -> tuple[list[tuple[Judge, dict[bytes, bytes]]], list[Judge]]:
        """Take in a page's answer: its entries for the planner, and the broken registries.

        Finished registries leave the sweep. An entry left to the planner that is now a
        walk's anchor is held back until the walk has moved past it.
        """
        left: dict[int, dict[bytes, bytes]] = {}
        for i in range(0, len(slow), 3):
            index, job_id, score = cast("tuple[int, bytes, bytes]", slow[i : i + 3])
            left.setdefault(index - 1, {})[job_id] = score
        planned: list[tuple[Judge, dict[bytes, bytes]]] = []
        broken: list[Judge] = []
        for index, (walk, cursor) in enumerate(zip(walks, cursors, strict=True)):
            entries = left.get(index, {})
            if cursor == b"-":  # not reached
                continue
            if cursor in (b"0", b"x"):
                if walk in self.walks:  # a page after it may have finished it first
                    self.walks.remove(walk)
                if cursor == b"x":
                    broken.append(walk.judge)
                anchor = None
            else:
                walk.cursor = cursor
                anchor = cursor.partition(b" ")[2] or None
            if anchor not in walk.held:  # the walk moved on: plan what it held
                entries = {**walk.held, **entries}
                walk.held = {}
            if anchor is not None and anchor in entries:
                walk.held = {anchor: entries.pop(anchor)}
            if entries:
                planned.append((walk.judge, entries))
        return planned, broken


def _no_decision() -> Decided:
    return Decided((), ())


class ScanPage:
    """One ``EXPIRE_TERMINAL_JOBS`` call over the front of a sweep's registries (a ``Decision``)."""

    def __init__(self, sweep: Sweep) -> None:
        """A page of ``sweep``: what it covers is settled when it is sent."""
        self.sweep = sweep
        self.sent = self.settled = False
        self.budget = 0
        self.walks: list[Walk] = []
        self.call: Call | None = None
        self.memo = b""
        self.found: list[bytes] = []
        """Per registry, what the script deleted (see ``EXPIRE_TERMINAL_JOBS``)."""
        self.planned: list[tuple[Judge, dict[bytes, bytes]]] = []
        self.broken: list[Judge] = []
        self.error: Exception | None = None

    def __len__(self) -> int:
        """How many entries the script may scan (the engine paces calls by it)."""
        return self.budget

    def send(
        self, client: redis.Redis, fence: Fence | None, *, dry_run: bool
    ) -> Callable[[], Decided]:
        """Send the script call (judge only when ``dry_run``); return its reader."""
        self.sent = True
        sweep = self.sweep
        if dry_run and not sweep.chained:
            msg = "a dry run's pages must come from a dry run's context (ctx.dry_run)"
            raise ValueError(msg)
        budget = sweep.ctx.pace.decision_size
        self.walks = sweep.take(budget)  # in a dry run, reads the previous answer first
        if not self.walks:
            self.settled = True
            return _no_decision
        self.budget = budget
        write = not dry_run
        self.memo = sweep.memos.next_key() if write else b""
        keys = [
            fence.key if fence else b"janitor:no-lease",
            sweep.memos.walk or b"janitor:no-walk",
        ]
        args = [
            fence.token if fence else b"",
            b"1" if write else b"0",
            b"%d" % budget,
            *sweep.templates,
            b"%d" % len(self.walks),
        ]
        for walk in self.walks:
            keys += (walk.judge.reg.key, walk.judge.started)
            args += (walk.judge.reg.queue, walk.cursor, *walk.judge.spec)
        if write:  # the script deletes the memos of answered pages: no retry needs them
            keys += (*sweep.memos.take(), self.memo)
        command = resp([b"EVALSHA", _SHAS[write], b"%d" % len(keys), *keys, *args])
        conn = sweep.connection(self)
        self.call = Call(client, command, _SOURCES[write], conn)
        sweep.last = self
        return self.receive

    def settle(self) -> None:
        """Read the answer (once) and move the sweep's cursors on; raises what the call raised."""
        if self.settled:
            if self.error is not None:
                raise self.error
            return
        self.settled = True
        try:
            reply = cast("Call", self.call).receive()
        except Exception as err:
            self.error = err
            raise
        if reply in (scripts.FENCED_OUT, [scripts.FENCED_OUT]):
            msg = "the leader lease was lost before a page of deletes; nothing was written"
            self.error = LeadershipLost(msg)
            raise self.error
        cursors, found, slow = cast("list[list[Any]]", reply)
        if self.memo:
            self.sweep.memos.stale.append(self.memo)
        self.found = found
        self.planned, self.broken = self.sweep.answered(self.walks, cursors, slow)

    def receive(self) -> Decided:
        """The audit events of what the script deleted, and the rest planned the ordinary way."""
        self.settle()
        now = self.sweep.ctx.now
        rows: list[tuple[object, ...]] = []
        for walk, text in zip(self.walks, self.found, strict=True):
            judge, pos, end = walk.judge, 0, len(text)
            name, statuses, rules = judge.reg.name, judge.statuses, judge.rules
            while pos < end:
                state = text[pos] - _FIRST_STATE
                stamp_end = pos + 1 + _ENDED_AT_LEN
                colon = text.index(b":", stamp_end)
                id_end = colon + 1 + int(text[stamp_end:colon])
                ended = rq_epoch(text[pos + 1 : stamp_end])
                rows.append(
                    (
                        name,
                        to_text(text[colon + 1 : id_end]),
                        statuses[state],
                        int(max(0.0, now - ended)),
                        rules[state],
                    )
                )
                pos = id_end
        return Decided(EventRows("job_deleted", _DELETED_FIELDS, rows), self._rest())

    def _rest(self) -> Iterator[Action | Skip]:
        sweep = self.sweep
        for judge, entries in self.planned:
            yield from sweep.plan_slow(
                sweep.ctx, judge.reg, judge.caps, list(entries.items())
            )
        for judge in self.broken:
            yield from sweep.plan_registry(sweep.ctx, judge.reg)
