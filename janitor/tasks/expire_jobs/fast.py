"""The fast path of ``expire_jobs``: one script per page scans, judges and deletes the plain cases.

``scripts.EXPIRE_TERMINAL_JOBS`` walks registries itself, judges each entry by the
retention in the same atomic step as its delete (the cutoff of ``expiry``, in RQ's time
format), and answers back anything that is not plainly past or short of its age rule;
those go to ``expire_jobs``' ordinary planner (``DELETE_TERMINAL_JOBS`` with its
re-checks). Each page starts where the answer of the one before left off, in a real and a
dry run alike; it is sent as soon as that answer arrives, before the answer is audited,
so Redis runs one page while the janitor audits the one before.
``tests/test_expire_fast_path.py`` proves both paths end in the same state with the same
audit lines.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast

import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError

from janitor import scripts
from janitor.actions import Action, Skip
from janitor.audit import EventRows
from janitor.connection import checkout
from janitor.errors import LeadershipLost
from janitor.expiry import cutoff, cutoff_text
from janitor.jobs import rq_epoch
from janitor.keyspace import Keyspace, to_text
from janitor.leader import Fence
from janitor.tasks.base import Decided, TaskContext
from janitor.tasks.expire_jobs.registry import CapBoundary, Registry

SlowPlanner = Callable[
    [
        TaskContext,
        Registry,
        Mapping[str, CapBoundary],
        Sequence[tuple[bytes, bytes]],
    ],
    Iterator[Action | Skip],
]
"""Plans entries the script answered back the ordinary way."""
RegistryPlanner = Callable[[TaskContext, Registry], Iterator[Action | Skip]]
"""Plans a whole registry the ordinary way (the script could not scan it)."""

# -- the fast path: EXPIRE_TERMINAL_JOBS judges and deletes the plain cases ------------------
_FIRST_STATE = ord("a")
_ENDED_AT_LEN = 27
"""``len("2026-10-20T06:48:14.418003Z")``: the only ended_at the script deletes by."""


def key_templates(keys: Keyspace) -> list[bytes]:
    """The values of ``scripts.TEMPLATE_NAMES``: the text before and after the job id in each per-job key.

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


@dataclass(frozen=True, slots=True)
class Judge:
    """One registry as the script sees it: its keys and, per status, cutoff and cap flag."""

    reg: Registry
    caps: Mapping[str, CapBoundary]
    started: bytes
    statuses: tuple[str, ...]
    spec: tuple[scripts.Arg, ...]
    """ARGV after the registry's ``scripts.EXPIRE_REGISTRY`` slots: per status its
    ``scripts.EXPIRE_STATUS`` (the status, its cutoff, whether a cap applies)."""
    rules: tuple[str, ...]
    """The age rule of each status, in ``statuses``' order (for the audit lines)."""

    @classmethod
    def of(
        cls, ctx: TaskContext, reg: Registry, caps: Mapping[str, CapBoundary]
    ) -> Judge:
        """The cutoffs of ``reg``; ``caps`` are its keep_last boundaries, if any."""
        statuses = tuple(reg.retentions)
        spec: list[scripts.Arg] = []
        for status in statuses:
            limit = cutoff_text(cutoff(ctx.now, reg.retentions[status].max_age_s))
            _, status_args = scripts.EXPIRE_STATUS.encode(
                {},
                {
                    "status": status.encode(),
                    "cutoff": limit,
                    "capped": b"1" if status in caps else b"0",
                },
            )
            spec += status_args
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
    """A run's own keys: the memo keys of answered pages.

    The next page's script deletes the memos of answered pages (``Cleanup`` the last
    ones). Deleting each memo right after its answer would be a round trip of its own.
    """

    stale: list[bytes] = field(default_factory=list)
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

    The script walks each registry itself, and a page carries, for each registry it
    walks, the cursor the answer of the last page over that registry gave. So a page
    goes out while another one is in flight only over registries that one does not
    walk (the finished and failed registries of a queue, other queues): Redis then runs
    one page right after the other. When every registry left is in a page in flight,
    ``ScanPage.send`` first reads the oldest answer (kept for the engine, which audits
    it afterwards). Real and dry runs go the same way. Each page in flight has a
    connection of its own, owned by the run (taking one from redis-py's pool per page
    costs two system calls), and given back by ``close``.
    """

    def __init__(
        self,
        ctx: TaskContext,
        registries: Iterator[Registry],
        judge_of: Callable[[Registry], Judge],
        planners: tuple[SlowPlanner, RegistryPlanner],
        protected: Sequence[bytes] = (),
    ) -> None:
        """Walk ``registries``; ``planners`` plan entries and whole registries the ordinary way.

        ``protected``: parents a live job depends on; the script leaves them to the planners.
        """
        self.ctx, self.registries, self.judge_of = ctx, registries, judge_of
        self.protected = list(protected)
        self.plan_slow, self.plan_registry = planners
        self.memos = Memos()
        self.walks: deque[Walk] = deque()
        """Registries not yet known to be finished, in order."""
        self.exhausted = False
        self.pending: deque[ScanPage] = deque()
        """Pages sent whose answers are not read yet, oldest first."""
        self.templates = key_templates(ctx.keys)
        self.free: list[Connection] = []
        """The run's connections no unread answer is waiting on."""
        self.closing: list[Connection] = []
        """The run's connections an error left in an unknown state."""

    def connection(self) -> Connection:
        """A connection of the run's own with no answer waiting on it."""
        return self.free.pop() if self.free else checkout(self.ctx.client)

    def done_with(self, page: ScanPage) -> None:
        """``page``'s answer is read (or failed): its connection is free again."""
        if page.conn is None:
            return
        (self.free if page.error is None else self.closing).append(page.conn)
        page.conn = None

    def close(self) -> None:
        """Give the connections back, closing first those an answer was left unread on."""
        pool = self.ctx.client.connection_pool
        for page in self.pending:
            if page.conn is not None:
                self.closing.append(page.conn)
                page.conn = None
        for conn in self.closing:
            disconnect(conn)
        for conn in self.free + self.closing:
            pool.release(conn)
        self.free, self.closing = [], []

    def more(self) -> bool:
        """Whether another page may find work (an answer still unread may leave some)."""
        if self.pending:
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

        Only registries no page in flight walks, so that each starts from the cursor
        its last answer gave; when there is none, the oldest answer is read first.
        """
        self._refill()
        while self.pending and not self._free_walks():
            self.pending[0].settle()
            self._refill()
        taken: list[Walk] = []
        total = 0
        for walk in self._free_walks():
            if total >= budget or len(taken) >= REGISTRIES_PER_CALL:
                break
            taken.append(walk)
            total += walk.size
        return taken

    def _free_walks(self) -> list[Walk]:
        """The registries left to walk that no page in flight walks."""
        busy = {id(walk) for page in self.pending for walk in page.walks}
        return [walk for walk in self.walks if id(walk) not in busy]

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


def disconnect(conn: Connection) -> None:
    """Close ``conn`` (through a Callable: redis-py may type the method in some releases only)."""
    close: Callable[[], None] = conn.disconnect
    close()


class PageCall:
    """One script call on the run's connection: sent now, its reply read later, once.

    redis-py packs the command and parses the reply (``send_command`` and
    ``read_response``). A connection error is retried as redis-py retries a command
    (a write page's memo key makes the retry return the first run's reply), and the
    script is loaded again when the server lost it (NOSCRIPT: nothing ran).
    """

    def __init__(
        self,
        client: redis.Redis,
        conn: Connection,
        command: Sequence[scripts.Arg],
        source: str,
    ) -> None:
        """Send ``command`` on ``conn``; ``source`` is the script it calls by its SHA."""
        self.client, self.conn, self.command, self.source = (
            client,
            conn,
            command,
            source,
        )
        self.failed: Exception | None = None
        try:
            self._send()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self.failed = err

    def _send(self) -> None:
        # Through a Callable: redis-py leaves send_command untyped (in some releases).
        send: Callable[..., None] = self.conn.send_command
        send(*self.command)

    def _again(self) -> object:
        self._send()
        return self.conn.read_response()

    def _fail(self, _: Exception) -> None:
        disconnect(self.conn)

    def receive(self) -> object:
        """The reply, after retries as redis-py would."""
        if self.failed is None:
            try:
                return self.conn.read_response()
            except NoScriptError:
                self.client.script_load(self.source)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                self._fail(err)
            except redis.ResponseError:
                raise  # a whole reply: nothing is left unread
            except Exception as err:  # part of a reply may be left unread: start afresh
                self._fail(err)
                raise
        return self.conn.retry.call_with_retry(self._again, self._fail)


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
        self.call: PageCall | None = None
        self.conn: Connection | None = None
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
        budget = sweep.ctx.pace.decision_size
        self.walks = sweep.take(budget)  # may read an answer before
        if not self.walks:
            self.settled = True
            return _no_decision
        self.budget = budget
        write = not dry_run
        self.memo = sweep.memos.next_key() if write else b""
        keys, args = scripts.EXPIRE_HEAD.encode(
            {"lease": fence.key if fence else b"janitor:no-lease"},
            {
                "token": fence.token if fence else b"",
                "apply": b"1" if write else b"0",
                "budget": b"%d" % budget,
                **dict(zip(scripts.TEMPLATE_NAMES, sweep.templates, strict=True)),
                "nreg": b"%d" % len(self.walks),
                "nprot": b"%d" % len(sweep.protected),
            },
        )
        args += sweep.protected
        for walk in self.walks:
            judge = walk.judge
            more_keys, more_args = scripts.EXPIRE_REGISTRY.encode(
                {"registry": judge.reg.key, "started": judge.started},
                {
                    "origin": judge.reg.queue,
                    "cursor": walk.cursor,
                    "nstates": b"%d" % len(judge.statuses),
                },
            )
            keys += more_keys
            args += [*more_args, *judge.spec]
        if write:  # the script deletes the memos of answered pages: no retry needs them
            keys += (*sweep.memos.take(), self.memo)
        command = [b"EVALSHA", _SHAS[write], b"%d" % len(keys), *keys, *args]
        self.conn = sweep.connection()
        self.call = PageCall(client, self.conn, command, _SOURCES[write])
        sweep.pending.append(self)
        return self.receive

    def settle(self) -> None:
        """Read the answer (once, after those of the pages before) and move the sweep's cursors on.

        Raises what the call raised.
        """
        if self.settled:
            if self.error is not None:
                raise self.error
            return
        pending = self.sweep.pending
        while pending and pending[0] is not self:
            pending[0].settle()
        self.settled = True
        if pending and pending[0] is self:
            pending.popleft()
        try:
            reply = cast("PageCall", self.call).receive()
        except Exception as err:
            self.error = err
            raise
        finally:
            self.sweep.done_with(self)
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
