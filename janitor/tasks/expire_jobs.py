"""Task ``expire_jobs``: plan the complete deletion of terminal jobs past their retention."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple, cast

import redis
from redis.exceptions import NoScriptError

from janitor import scripts
from janitor.actions import Action, DeleteJob, Fence, Skip
from janitor.errors import LeadershipLost
from janitor.jobs import (
    JOB_FIELDS,
    FieldError,
    JobFields,
    entered_failed_registry,
)
from janitor.keyspace import Keyspace, iter_queue_names, to_text
from janitor.policy import Retention, retention_for
from janitor.tasks.base import Decided, Decision, TaskContext

NAME = "expire_jobs"

REGISTRIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("finished", ("finished",)),
    ("failed", ("failed", "stopped")),
    ("canceled", ("canceled",)),
)
"""Each terminal registry and the job statuses RQ keeps in it."""

MAX_CHILDREN_CHECKED = 100
"""A parent with more dependents than this is kept rather than read child by child."""

CapBoundary = tuple[float, bytes]
"""The (score, member) of the newest entry *beyond* a keep_last cap is at or below this."""

REGISTRIES_PER_READ = 64
"""How many registries the fast path starts scanning in one pipeline (many small queues)."""

ALWAYS = b"9000000000000000"
"""A cutoff past every ended_at the script reads (it reads years up to 2200): age 0s."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """One registry entry and what the read pipeline returned for its job."""

    job_id: bytes
    raw_score: bytes
    fields: object
    dependents: object
    executions: object


@dataclass(frozen=True, slots=True)
class _Registry:
    """One terminal registry of one queue, with the retention of each state in it."""

    queue: bytes
    name: str
    kind: str
    key: bytes
    retentions: Mapping[str, Retention]


class ExpireJobs:
    """Deletes finished, failed, stopped and canceled jobs older than their retention."""

    name = NAME

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield a ``job_deleted`` action per terminal job past its age rule or cap."""
        for reg in _registries(ctx):
            yield from self._plan_registry(ctx, reg)

    def decide(self, ctx: TaskContext) -> Iterator[Action | Skip | Decision]:
        """Like ``plan``, but hand each page of entries to ``EXPIRE_TERMINAL_JOBS`` first.

        The script deletes the plain cases itself, judging them by the same rules in the
        same atomic step; only what it leaves ('?') is read and planned here, the ordinary
        way. Small registries (many per_job queues) start their scans in one pipeline,
        and a page may hold entries of several registries.
        """
        shapes, memos = _KeyShapes.of(ctx.keys), _Memos()
        page: list[_Candidate] = []
        seen: set[tuple[bytes, bytes]] = set()  # ZSCAN may return an entry twice
        size = ctx.pace.decision_size
        registries = _registries(ctx)
        while chunk := list(islice(registries, REGISTRIES_PER_READ)):
            judges = [_Judge.of(ctx, reg) for reg in chunk]
            pipe = ctx.client.pipeline(transaction=False)
            for judge in judges:
                pipe.zscan(judge.reg.key, 0, count=ctx.page_size, score_cast_func=bytes)
            firsts = pipe.execute(raise_on_error=False)
            for judge, first in zip(judges, firsts, strict=True):
                for job_id, score in _scan(ctx, judge.reg.key, first):
                    if (judge.reg.key, job_id) in seen:
                        continue
                    seen.add((judge.reg.key, job_id))
                    page.append(_Candidate(judge, job_id, score))
                    if len(page) >= size:
                        yield _Page.of(ctx, shapes, page, self._plan_page, memos)
                        page, seen, size = [], set(), ctx.pace.decision_size
        if page:
            yield _Page.of(ctx, shapes, page, self._plan_page, memos)
        yield _Cleanup(memos)

    def _plan_registry(
        self, ctx: TaskContext, reg: _Registry
    ) -> Iterator[Action | Skip]:
        caps = _cap_boundaries(ctx, reg)
        cursor = 0
        while True:
            cursor, page = ctx.client.zscan(
                reg.key, cursor, count=ctx.page_size, score_cast_func=bytes
            )
            if page:
                yield from self._plan_page(
                    ctx, reg, caps, cast("list[tuple[bytes, bytes]]", page)
                )
            if cursor == 0:
                return

    def _plan_page(
        self,
        ctx: TaskContext,
        reg: _Registry,
        caps: Mapping[str, CapBoundary],
        page: Sequence[tuple[bytes, bytes]],
    ) -> Iterator[Action | Skip]:
        pipe = ctx.client.pipeline(transaction=False)
        for job_id, _ in page:
            pipe.hmget(ctx.keys.job(job_id), JOB_FIELDS)
            pipe.scard(ctx.keys.dependents(job_id))
            pipe.zrange(ctx.keys.executions(job_id), 0, -1)
        replies = pipe.execute(raise_on_error=False)
        for index, (job_id, raw_score) in enumerate(page):
            fields, dependents, executions = replies[3 * index : 3 * index + 3]
            yield from self._plan_job(
                ctx,
                reg,
                caps,
                _Entry(job_id, raw_score, fields, dependents, executions),
            )

    def _plan_job(  # noqa: PLR0911 - one early return per reason to leave a job alone
        self,
        ctx: TaskContext,
        reg: _Registry,
        caps: Mapping[str, CapBoundary],
        entry: _Entry,
    ) -> Iterator[Action | Skip]:
        job_id, raw_score = entry.job_id, entry.raw_score
        where = {"queue": reg.name, "job_id": to_text(job_id), "registry": reg.kind}
        if any(
            isinstance(r, Exception)
            for r in (entry.fields, entry.dependents, entry.executions)
        ):
            yield Skip(NAME, "a key of the job has the wrong type", where)
            return
        job = JobFields.from_reply(job_id, cast("list[bytes | None]", entry.fields))
        if not job.exists:
            return  # a dangling registry entry: clean_registries' business, not a job to delete
        try:
            status = job.status
            age = _age(ctx.now, reg.kind, float(raw_score), job)
        except FieldError as err:
            yield Skip(NAME, f"unreadable job field: {err}", where)
            return
        if status is None:
            yield Skip(NAME, "job hash has no status", where)
            return
        if status not in reg.retentions:
            return  # re-enqueued or repeating: the job lives on elsewhere
        if job.raw_origin != reg.queue:
            yield Skip(NAME, "job origin differs from its registry's queue", where)
            return
        if age is None:
            yield Skip(NAME, "no end time to measure the job's age from", where)
            return
        retention = reg.retentions[status]
        over_age = age >= retention.max_age_s
        cap = caps.get(status)
        if not over_age and not (cap is not None and (float(raw_score), job_id) < cap):
            return
        dependents = int(cast("int", entry.dependents))
        if dependents and status != "finished" and _has_waiting_children(ctx, job_id):
            yield Skip(NAME, "dependents still wait on this job", where)
            return
        rule = retention.age_rule if over_age else cast("str", retention.cap_rule)
        event = {
            "queue": reg.name,
            "job_id": to_text(job_id),
            "status": status,
            "age_s": int(age),
            "rule": rule,
        }
        write = _delete_write(ctx, reg, job, entry)
        yield Action(NAME, "job_deleted", event, write)


def _age(now: float, kind: str, score: float, job: JobFields) -> float | None:
    """The job's age from ``ended_at``, else from when RQ put it into its registry."""
    ended = job.ended_at
    if ended is None and kind == "canceled" and score >= 0 and not math.isinf(score):
        ended = score  # the canceled registry is scored by the time of cancellation
    if ended is None and kind == "failed":
        ended = entered_failed_registry(score, job.failure_ttl) or job.last_heartbeat
    return None if ended is None else max(0.0, now - ended)


def _delete_write(
    ctx: TaskContext, reg: _Registry, job: JobFields, entry: _Entry
) -> DeleteJob:
    keys, job_id = ctx.keys, job.job_id
    executions = cast("list[bytes]", entry.executions)
    statuses = tuple(state.encode() for state in reg.retentions)
    return DeleteJob(
        job_id=job_id,
        job_key=keys.job(job_id),
        registry=reg.key,
        started=keys.started(reg.queue),
        dependents=keys.dependents(job_id),
        statuses=statuses,
        origin=reg.queue,
        ended_at=job.raw_ended_at or b"",
        score=entry.raw_score,
        dependents_count=int(cast("int", entry.dependents)),
        group=keys.group(job.group_id) if job.group_id else None,
        side_keys=(
            keys.dependencies(job_id),
            keys.results(job_id),
            keys.executions(job_id),
        ),
        execution_keys=tuple(keys.execution(job_id, e) for e in executions),
        started_members=(job_id, *(keys.started_member(job_id, e) for e in executions)),
    )


def _has_waiting_children(ctx: TaskContext, job_id: bytes) -> bool:
    """Whether a job that did not finish still has a dependent that waits on it.

    Such a child can only ever run if the parent is requeued, so deleting the parent
    would strand it. More children than ``MAX_CHILDREN_CHECKED`` count as waiting.
    """
    children = cast(
        "list[bytes]",
        ctx.client.srandmember(ctx.keys.dependents(job_id), MAX_CHILDREN_CHECKED + 1),
    )
    if len(children) > MAX_CHILDREN_CHECKED:
        return True
    pipe = ctx.client.pipeline(transaction=False)
    for child in children:
        pipe.hget(ctx.keys.job(child), "status")
    statuses = pipe.execute(raise_on_error=False)
    return any(
        status is not None
        and status not in {b"finished", b"failed", b"stopped", b"canceled"}
        for status in statuses
    )


def _cap_boundaries(ctx: TaskContext, reg: _Registry) -> dict[str, CapBoundary]:
    """Find, per capped state, the newest registry entry beyond its ``keep_last`` newest.

    Reads the registry newest first (by RQ's score) and only the ``status`` of each job,
    so memory stays bounded; an entry re-read because the registry shifted is ignored.
    """
    wanted = {
        s: r.keep_last for s, r in reg.retentions.items() if r.keep_last is not None
    }
    found: dict[str, CapBoundary] = {}
    if not wanted:
        return found
    counts = dict.fromkeys(wanted, 0)
    previous: CapBoundary | None = None
    start = 0
    while len(found) < len(wanted):
        page = cast(
            "list[tuple[bytes, float]]",
            ctx.client.zrevrange(
                reg.key, start, start + ctx.page_size - 1, withscores=True
            ),
        )
        if not page:
            break
        start += len(page)
        pipe = ctx.client.pipeline(transaction=False)
        for member, _ in page:
            pipe.hget(ctx.keys.job(member), "status")
        for (member, score), raw in zip(
            page, pipe.execute(raise_on_error=False), strict=True
        ):
            entry = (score, member)
            if previous is not None and entry >= previous:
                continue
            previous = entry
            state = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
            if state in counts and state not in found:
                counts[state] += 1
                if counts[state] == wanted[state]:
                    found[state] = entry
    return found


def _registries(ctx: TaskContext) -> Iterator[_Registry]:
    """Every terminal registry of every queue the run may write, in contract order."""
    for queue in iter_queue_names(ctx.client, ctx.keys):
        name = to_text(queue)
        if not ctx.allows_queue(name):
            continue
        for kind, statuses in REGISTRIES:
            key = cast("bytes", getattr(ctx.keys, kind)(queue))
            retentions = {
                s: retention_for(ctx.settings.retention, name, s) for s in statuses
            }
            yield _Registry(queue, name, kind, key, retentions)


def _scan(ctx: TaskContext, key: bytes, first: object) -> Iterator[tuple[bytes, bytes]]:
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

SlowPlanner = Callable[
    [TaskContext, _Registry, Mapping[str, CapBoundary], Sequence[tuple[bytes, bytes]]],
    Iterator[Action | Skip],
]


def _shape(build: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    head, _, tail = build(b"\x00").partition(b"\x00")
    return head, tail


@dataclass(frozen=True, slots=True)
class _KeyShapes:
    """(head, tail) around the job id of each per-job key the script needs, read off Keyspace."""

    shapes: tuple[tuple[bytes, bytes], ...]
    """Job hash, dependents, dependencies, results, executions: the script's order."""

    @classmethod
    def of(cls, keys: Keyspace) -> _KeyShapes:
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
class _Judge:
    """One registry as the script sees it: its keys and, per status, cutoff and cap flag."""

    reg: _Registry
    caps: Mapping[str, CapBoundary]
    started: bytes
    statuses: tuple[str, ...]
    spec: tuple[bytes, ...]
    """ARGV after the registry's origin and job count: status count, then per status
    the status, its cutoff and whether a cap applies."""

    @classmethod
    def of(cls, ctx: TaskContext, reg: _Registry) -> _Judge:
        """Compute the caps (when keep_last is set) and the cutoffs of ``reg``."""
        caps = _cap_boundaries(ctx, reg)
        statuses = tuple(reg.retentions)
        spec = [str(len(statuses)).encode()]
        for status in statuses:
            cutoff = _cutoff(ctx.now, reg.retentions[status].max_age_s)
            spec += [status.encode(), cutoff, b"1" if status in caps else b"0"]
        started = ctx.keys.started(reg.queue)
        return cls(reg, caps, started, statuses, tuple(spec))


class _Candidate(NamedTuple):
    """A registry entry waiting for the script's judgement (a tuple: one per entry)."""

    judge: _Judge
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
class _Memos:
    """Memo keys of answered pages: the next page's call deletes them, the last ones ``_Cleanup``.

    Deleting each right after its answer would be a round trip that waits behind the
    page Redis is running meanwhile.
    """

    stale: list[bytes] = field(default_factory=list)

    def take(self) -> list[bytes]:
        """The memo keys to delete now (and forget)."""
        stale, self.stale = self.stale, []
        return stale


@dataclass
class _Cleanup:
    """The plan's last decision: it judges nothing and deletes the memo keys left over."""

    memos: _Memos

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
class _Page:
    """A page of registry entries for one ``EXPIRE_TERMINAL_JOBS`` call (a ``Decision``).

    The bulk of the command (every key but the lease, every argument but the token and
    the mode) is packed when the page is made, while Redis still runs the previous one.
    """

    ctx: TaskContext
    groups: list[list[_Candidate]]
    plan_slow: SlowPlanner
    memos: _Memos
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
        shapes: _KeyShapes,
        entries: Sequence[_Candidate],
        plan_slow: SlowPlanner,
        memos: _Memos,
    ) -> _Page:
        """Group ``entries`` by registry (the script's order) and pack the command's bulk."""
        by_judge: dict[int, list[_Candidate]] = {}
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
        left: list[tuple[_Judge, list[tuple[bytes, bytes]]]] = []
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
        self, left: Sequence[tuple[_Judge, Sequence[tuple[bytes, bytes]]]]
    ) -> Iterator[Action | Skip]:
        for judge, entries in left:
            yield from self.plan_slow(self.ctx, judge.reg, judge.caps, entries)
