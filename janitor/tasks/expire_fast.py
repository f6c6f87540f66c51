"""The fast path of ``expire_jobs``: one script per page judges entries and deletes the plain cases.

``scripts.EXPIRE_TERMINAL_JOBS`` judges each registry entry by the retention in the same
atomic step as its delete, and answers '?' for anything that is not plainly past its age
rule; those go back to ``expire_jobs``' ordinary planner (``DELETE_TERMINAL_JOBS`` with its
re-checks). Pages are packed here into single buffers and kept two in flight, so Redis runs
one while the janitor audits the one before; ``tests/test_expire_fast_path.py`` proves both
paths end in the same state with the same audit lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, cast

import redis
from redis.exceptions import NoScriptError

from janitor import scripts
from janitor.actions import Action, Fence, Skip
from janitor.errors import LeadershipLost
from janitor.keyspace import Keyspace, to_text
from janitor.tasks.base import Decided, TaskContext

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
    """Plans entries the script left ('?') the ordinary way."""

ALWAYS = b"9000000000000000"
"""A cutoff past every ended_at the script reads (it reads years up to 2200): age 0s."""


def scan_registry(
    ctx: TaskContext, key: bytes, first: object
) -> Iterator[tuple[bytes, bytes]]:
    """The (member, raw score) pairs of a registry: ``first`` is its pipelined first ZSCAN.

    Each next ZSCAN is sent before the entries of the current one are handed out, so
    Redis answers it before the script call those entries go into, and the reply is
    already waiting when the janitor parses it, while Redis runs that script.
    """
    if isinstance(first, Exception):
        raise first  # as plan's own ZSCAN would: a broken registry fails the task
    cursor, entries = cast("tuple[int, list[tuple[bytes, bytes]]]", first)
    while True:
        if cursor == 0:
            yield from entries
            return
        command = _resp(
            [b"ZSCAN", key, b"%d" % cursor, b"COUNT", b"%d" % ctx.page_size]
        )
        receive = _Call(ctx.client, [command], None).receive
        try:
            yield from entries
        finally:
            reply = cast("list[object]", receive())
        items = cast("list[bytes]", reply[1])
        cursor, entries = (
            int(cast("bytes", reply[0])),
            list(zip(items[::2], items[1::2], strict=True)),
        )


# -- the fast path: EXPIRE_TERMINAL_JOBS judges and deletes the plain cases ------------------
_KEEP, _PLAN, _FIRST_STATE = ord("-"), ord("?"), ord("a")
_ENDED_AT_LEN = 27
"""``len("2026-10-20T06:48:14.418003Z")``: the only ended_at the script deletes by."""


def _shape(build: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    head, _, tail = build(b"\x00").partition(b"\x00")
    return head, tail


@dataclass(frozen=True, slots=True)
class KeyShapes:
    """(head, tail) around the job id of each per-job key the script needs, read off Keyspace."""

    shapes: tuple[tuple[bytes, bytes], ...]
    """Job hash, dependents, dependencies, results, executions: the script's order."""

    @classmethod
    def of(cls, keys: Keyspace) -> KeyShapes:
        """The shapes of ``keys``' templates."""
        builders = (
            keys.job,
            keys.dependents,
            keys.dependencies,
            keys.results,
            keys.executions,
        )
        return cls(tuple(_shape(build) for build in builders))

    def keys_of(self, job_ids: Iterable[bytes]) -> list[bytes]:
        """The script's five keys of each job, in its order."""
        (jh, jt), (dh, dt_), (ph, pt), (rh, rt), (eh, et) = self.shapes
        keys: list[bytes] = []
        for i in job_ids:
            keys += (jh + i + jt, dh + i + dt_, ph + i + pt, rh + i + rt, eh + i + et)
        return keys


def _cutoff(now: float, max_age_s: int) -> bytes:
    """The latest ended_at (microseconds since the epoch) that is past ``max_age_s``.

    Two microseconds on the safe side of the planner's own float arithmetic, so the
    script never deletes a job ``plan`` would keep; "0s" deletes whatever the age.
    """
    if max_age_s <= 0:
        return ALWAYS
    return str(math.floor((now - max_age_s) * 1_000_000) - 2).encode()


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_days_since_epoch: dict[bytes, int] = {}
_MAX_DAYS_CACHED = 100_000


def _rq_epoch(ended_at: bytes) -> float:
    """Epoch seconds of an ended_at the script validated: exactly ``parse_rq_time``'s value.

    ``datetime.timestamp()`` of an aware datetime divides its whole microseconds by a
    million; so does this, with the days of each date looked up once.
    """
    day = ended_at[:10]
    days = _days_since_epoch.get(day)
    if days is None:
        if len(_days_since_epoch) > _MAX_DAYS_CACHED:
            _days_since_epoch.clear()
        date = dt.date(int(day[:4]), int(day[5:7]), int(day[8:10]))
        days = _days_since_epoch[day] = date.toordinal() - _EPOCH_ORDINAL
    seconds = (
        days * 86_400
        + int(ended_at[11:13]) * 3600
        + int(ended_at[14:16]) * 60
        + int(ended_at[17:19])
    )
    return (seconds * 1_000_000 + int(ended_at[20:26])) / 1_000_000


@dataclass(frozen=True, slots=True)
class Judge:
    """One registry as the script sees it: its keys and, per status, cutoff and cap flag."""

    reg: _Registry
    caps: Mapping[str, CapBoundary]
    started: bytes
    statuses: tuple[str, ...]
    spec: tuple[bytes, ...]
    """ARGV after the registry's origin and job count: status count, then per status
    the status, its cutoff and whether a cap applies."""

    @classmethod
    def of(
        cls, ctx: TaskContext, reg: _Registry, caps: Mapping[str, CapBoundary]
    ) -> Judge:
        """The cutoffs of ``reg``; ``caps`` are its keep_last boundaries, if any."""
        statuses = tuple(reg.retentions)
        spec = [str(len(statuses)).encode()]
        for status in statuses:
            cutoff = _cutoff(ctx.now, reg.retentions[status].max_age_s)
            spec += [status.encode(), cutoff, b"1" if status in caps else b"0"]
        started = ctx.keys.started(reg.queue)
        return cls(reg, caps, started, statuses, tuple(spec))


class Candidate(NamedTuple):
    """A registry entry waiting for the script's judgement (a tuple: one per entry)."""

    judge: Judge
    job_id: bytes
    raw_score: bytes


_SOURCES = {
    True: scripts.memoized(scripts.EXPIRE_TERMINAL_JOBS),
    False: scripts.EXPIRE_TERMINAL_JOBS,
}
"""The script to write with (its reply memoized, as ``run_script`` does) and to only judge with."""
_SHAS = {
    write: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()
    for write, source in _SOURCES.items()
}


def _bulks(parts: Iterable[bytes]) -> bytes:
    """Bulk strings of the Redis protocol, as one buffer."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])


def _bulk(part: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(part), part)


def _resp(parts: Sequence[bytes]) -> bytes:
    """A command in the Redis protocol, as one buffer."""
    return b"*%d\r\n" % len(parts) + _bulks(parts)


_SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="janitor-send")
_SEND_IN_BACKGROUND = 16_384
"""Bytes above which a command is sent by ``_SENDER``: Redis takes a page of several
hundred kB in pieces, and the janitor prepares the next page meanwhile."""


class _Call:
    """One packed command on a pooled connection: sent now, its reply read later, once.

    A page is thousands of arguments: redis-py packs each through several calls and
    sends them in 6 kB pieces, three times the cost of one buffer packed here. The rest
    is redis-py's: a pooled connection, its retries when the connection fails (a write
    script's memo key makes a retry return the first run's reply), and SCRIPT LOAD of
    ``script`` when the server lost it. Sending and reading apart lets the janitor
    work while Redis does; a large command is sent by ``_SENDER`` for the same reason.
    """

    def __init__(
        self, client: redis.Redis, commands: Sequence[bytes], script: str | None
    ) -> None:
        self.client, self.script = client, script
        self.command, self.replies = b"".join(commands), len(commands)
        """All commands go in one buffer; the reply of the last one is the answer."""
        self.conn = client.connection_pool.get_connection()
        self.failed: Exception | None = None
        self.sent: Future[Exception | None] | None = None
        if len(self.command) > _SEND_IN_BACKGROUND:
            self.sent = _SENDER.submit(self._send_now)
        else:
            self.failed = self._send_now()

    def _send(self) -> None:
        self.conn.send_packed_command([self.command])  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def _send_now(self) -> Exception | None:
        try:
            self._send()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            return err
        return None

    def _again(self) -> object:
        self._send()
        return self._read_all()

    def _read_all(self) -> object:
        reply: object = None
        try:
            for _ in range(self.replies):
                reply = self.conn.read_response()
        except NoScriptError:
            raise  # the last reply: nothing is left unread
        except Exception as err:  # replies may be left unread: start afresh
            self._fail(err)
            raise
        return reply

    def _fail(self, _: Exception) -> None:
        self.conn.disconnect()  # type: ignore[no-untyped-call]  # as above

    def receive(self) -> object:
        """The reply (after retries, as redis-py would); the connection goes back to its pool."""
        try:
            if self.sent is not None:
                self.failed = self.sent.result()
            if self.failed is not None:
                return self.conn.retry.call_with_retry(self._again, self._fail)
            return self._read()
        finally:
            self.client.connection_pool.release(self.conn)

    def _read(self) -> object:
        try:
            return self._read_all()
        except (redis.ConnectionError, redis.TimeoutError):
            return self.conn.retry.call_with_retry(self._again, self._fail)
        except NoScriptError:
            if self.script is None:
                raise
            self.client.script_load(self.script)
            return self.conn.retry.call_with_retry(self._again, self._fail)


@dataclass
class Memos:
    """Memo keys of answered pages: the next page's call deletes them, the last ones ``Cleanup``.

    Deleting each right after its answer would be a round trip that waits behind the
    page Redis is running meanwhile.
    """

    stale: list[bytes] = field(default_factory=list)

    def take(self) -> list[bytes]:
        """The memo keys to delete now (and forget)."""
        stale, self.stale = self.stale, []
        return stale


@dataclass
class Cleanup:
    """The plan's last decision: it judges nothing and deletes the memo keys left over."""

    memos: Memos

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
            if stale := self.memos.take():
                client.unlink(*stale)
            return Decided((), ())

        return receive


@dataclass(slots=True)
class Page:
    """A page of registry entries for one ``EXPIRE_TERMINAL_JOBS`` call (a ``Decision``).

    The bulk of the command (every key but the lease, every argument but the token and
    the mode) is packed when the page is made, while Redis still runs the previous one.
    """

    ctx: TaskContext
    groups: list[list[Candidate]]
    plan_slow: SlowPlanner
    memos: Memos
    count: int
    keys: bytes
    """The packed registry and job keys."""
    nkeys: int
    args: bytes
    """The packed arguments after the token and the mode."""
    nargs: int

    @classmethod
    def of(
        cls,
        ctx: TaskContext,
        shapes: KeyShapes,
        entries: Sequence[Candidate],
        plan_slow: SlowPlanner,
        memos: Memos,
    ) -> Page:
        """Group ``entries`` by registry (the script's order) and pack the command's bulk."""
        by_judge: dict[int, list[Candidate]] = {}
        for entry in entries:
            by_judge.setdefault(id(entry.judge), []).append(entry)
        groups = list(by_judge.values())
        job_head, job_tail = shapes.shapes[0]
        keys: list[bytes] = []
        args: list[bytes] = [b"%d" % len(groups), job_head, job_tail]
        for group in groups:
            judge = group[0].judge
            keys += (judge.reg.key, judge.started)
            args += (judge.reg.queue, b"%d" % len(group), *judge.spec)
        for group in groups:
            keys += shapes.keys_of(entry.job_id for entry in group)
        return cls(
            ctx,
            groups,
            plan_slow,
            memos,
            len(entries),
            _bulks(keys),
            len(keys),
            _bulks(args),
            len(args),
        )

    def __len__(self) -> int:
        """How many entries the script judges."""
        return self.count

    def send(
        self, client: redis.Redis, fence: Fence | None, *, dry_run: bool
    ) -> Callable[[], Decided]:
        """Send the script call (judge only when ``dry_run``); return its reader."""
        write = not dry_run
        memo = Keyspace.janitor_key("memo", uuid.uuid4().hex) if write else b""
        nkeys = 1 + self.nkeys + (1 if write else 0)
        command = b"".join(
            [
                b"*%d\r\n" % (3 + nkeys + 2 + self.nargs),
                _bulk(b"EVALSHA"),
                _bulk(_SHAS[write]),
                _bulk(b"%d" % nkeys),
                _bulk(fence.key if fence else b"janitor:no-lease"),
                self.keys,
                _bulk(memo) if write else b"",
                _bulk(fence.token if fence else b""),
                _bulk(b"1" if write else b"0"),
                self.args,
            ]
        )
        stale = self.memos.take()  # of answered pages: no retry can need them
        commands = [_resp([b"UNLINK", *stale])] if stale else []
        receive = _Call(client, [*commands, command], _SOURCES[write]).receive
        return lambda: self._answer(receive(), memo)

    def _answer(self, reply: object, memo: bytes) -> Decided:
        if memo:
            self.memos.stale.append(memo)
        if reply in (scripts.FENCED_OUT, [scripts.FENCED_OUT]):
            msg = "the leader lease was lost before a page of deletes; nothing was written"
            raise LeadershipLost(msg)
        return self._decode(cast("list[bytes]", reply)[0])

    def _decode(self, codes: bytes) -> Decided:
        events: list[tuple[str, Mapping[str, object]]] = []
        left: list[tuple[Judge, list[tuple[bytes, bytes]]]] = []
        now, pos = self.ctx.now, 0
        for group in self.groups:
            judge = group[0].judge
            reg, slow = judge.reg, []
            for entry in group:
                code = codes[pos]
                if code == _KEEP:
                    pos += 1
                elif code == _PLAN:
                    pos += 1
                    slow.append((entry.job_id, entry.raw_score))
                else:
                    status = judge.statuses[code - _FIRST_STATE]
                    ended_at = codes[pos + 1 : pos + 1 + _ENDED_AT_LEN]
                    pos += 1 + _ENDED_AT_LEN
                    fields = {
                        "queue": reg.name,
                        "job_id": to_text(entry.job_id),
                        "status": status,
                        "age_s": int(max(0.0, now - _rq_epoch(ended_at))),
                        "rule": reg.retentions[status].age_rule,
                    }
                    events.append(("job_deleted", fields))
            if slow:
                left.append((judge, slow))
        if pos != len(codes):
            msg = f"EXPIRE_TERMINAL_JOBS answered {len(codes)} bytes for {self.count} entries"
            raise RuntimeError(msg)
        return Decided(events, self._rest(left))

    def _rest(
        self, left: Sequence[tuple[Judge, Sequence[tuple[bytes, bytes]]]]
    ) -> Iterator[Action | Skip]:
        for judge, entries in left:
            yield from self.plan_slow(self.ctx, judge.reg, judge.caps, entries)
