"""What tasks plan and the engine applies: actions with their audit event, and skips to report."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast

import redis
from redis.commands.core import Script

from janitor import scripts
from janitor.errors import LeadershipLost
from janitor.keyspace import JANITOR_PREFIX, Keyspace
from janitor.leader import Fence
from janitor.liveness import Recheck


class Write(Protocol):
    """A planned write; writes of one type are applied together in one atomic script call."""

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,
    ) -> list[bool]:
        """Apply ``writes``; return per write whether its re-check passed and it was done.

        Raises:
            LeadershipLost: the lease token no longer matched; nothing was written.
        """
        ...


@dataclass(frozen=True, slots=True)
class Action:
    """One planned change and the audit event it produces once applied (or in a dry run).

    Bookkeeping actions (``event`` None) keep the janitor's own state under ``janitor:``;
    they are neither audited nor counted, and a dry run skips them like every write.
    """

    task: str
    event: str | None
    """The audit event; None for the janitor's own bookkeeping (suspects, cursors)."""
    fields: Mapping[str, object]
    write: Write | None
    """None for actions that only report."""


@dataclass(frozen=True, slots=True)
class Skip:
    """Something a task saw but must not touch, reported on the operational log."""

    task: str
    reason: str
    fields: Mapping[str, object]


_scripts: dict[str, Script] = {}


def run_script(
    client: redis.Redis,
    source: str,
    keys: Sequence[bytes],
    args: Sequence[bytes | str | int | float],
) -> object:
    """Run a write script by its SHA (EVALSHA), loading it again where the server lost it.

    Each call gets a fresh memo key (see ``scripts.memoized``): when redis-py retries the
    call after a lost reply, the retry returns the reply of the run that happened.
    """
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = client.register_script(scripts.memoized(source))
    memo_key = Keyspace.memo(uuid.uuid4().hex)
    reply = script(keys=[*keys, memo_key], args=args, client=client)
    client.unlink(memo_key)  # the reply arrived: no retry can need the memo any more
    return reply


def _fence_args(fence: Fence | None) -> tuple[bytes, bytes]:
    if fence is None:
        return b"janitor:no-lease", b""
    return fence.key, fence.token


Arg = scripts.Arg
"""One argument of a script call."""


class ScriptBatch:
    """A write applied together with others of its class in one call of their script.

    The call starts with ``head`` (the lease, its token, for scripts that take it the
    time, the number of writes: ``scripts.BATCH_HEAD`` or ``BATCH_HEAD_NOW``); each write
    adds its own keys and arguments (``encode``, by its script's ``Slots``).
    """

    __slots__ = ()

    source: ClassVar[str]
    what: ClassVar[str]
    """What the writes are, for the message when the lease was lost."""
    head: ClassVar[scripts.Slots] = scripts.BATCH_HEAD

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """This write's keys and arguments, in its script's per-write layout."""
        raise NotImplementedError

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,
    ) -> list[bool]:
        """Apply ``writes`` in one script call; per write, whether its re-check passed."""
        fence_key, token = _fence_args(fence)
        values: dict[str, Arg] = {"token": token, "count": len(writes)}
        if "now" in cls.head.args:
            values["now"] = repr(now)
        keys, args = cls.head.encode({"lease": fence_key}, values)
        for write in writes:
            more_keys, more_args = cast("ScriptBatch", write).encode()
            keys += more_keys
            args += more_args
        return _flags(run_script(client, cls.source, keys, args), cls.what)


@dataclass(frozen=True, slots=True)
class DeleteJob(ScriptBatch):
    """Delete a terminal job and everything that belongs to it, if it is unchanged.

    The re-check compares what the plan read (status among ``statuses``, origin,
    ``ended_at``, the registry score, the number of dependents) with the job at write
    time, and refuses when a started-registry member of the job is still live or one
    of its execution hashes still exists, or (``check_children``) a member of its
    dependents set is a job that is not terminal.
    """

    job_id: bytes
    job_key: bytes
    registry: bytes
    started: bytes
    dependents: bytes
    statuses: tuple[bytes, ...]
    origin: bytes
    ended_at: bytes
    score: bytes
    dependents_count: int
    group: bytes | None
    side_keys: tuple[bytes, ...]
    """Deleted with the job: dependencies set, result stream, execution registry."""
    execution_keys: tuple[bytes, ...]
    """Execution hashes: their existence means a live execution, so the job is kept."""
    started_members: tuple[bytes, ...]
    """Started-registry members of this job, removed when stale, fatal to the delete when live."""
    check_children: bool = True
    """Refuse while a dependent waits (False: the plan let the parent go past the bound)."""

    source: ClassVar[str] = scripts.DELETE_TERMINAL_JOBS
    what: ClassVar[str] = "deletes"
    head: ClassVar[scripts.Slots] = scripts.BATCH_HEAD_NOW

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.DELETE_JOB``, then the variable tails."""
        keys, args = scripts.DELETE_JOB.encode(
            {
                "job": self.job_key,
                "registry": self.registry,
                "started": self.started,
                "dependents": self.dependents,
                "group": self.group or self.job_key,
            },
            {
                "nside": len(self.side_keys),
                "nexec": len(self.execution_keys),
                "nmembers": len(self.started_members),
                "id": self.job_id,
                "statuses": b"|" + b"|".join(self.statuses) + b"|",
                "origin": self.origin,
                "ended_at": self.ended_at,
                "score": self.score,
                "ndeps": self.dependents_count,
                "has_group": 1 if self.group else 0,
                "check_children": 1 if self.check_children else 0,
            },
        )
        return [*keys, *self.side_keys, *self.execution_keys], [
            *args,
            *self.started_members,
        ]


@dataclass(frozen=True, slots=True)
class RecoverJob(ScriptBatch):
    """Move an abandoned job on (fail, enqueue or schedule it) if all the evidence still holds.

    ``keys`` and ``args`` hold the values of ``scripts.RECOVER_JOB``'s slots, by name.
    """

    keys: Mapping[str, bytes]
    args: Mapping[str, bytes]

    source: ClassVar[str] = scripts.RECOVER_ABANDONED_JOBS
    what: ClassVar[str] = "recoveries"
    head: ClassVar[scripts.Slots] = scripts.BATCH_HEAD_NOW

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.RECOVER_JOB``."""
        return scripts.RECOVER_JOB.encode(self.keys, self.args)


@dataclass(frozen=True, slots=True)
class RecordSuspects:
    """Remember started-registry members seen abandoned once (janitor bookkeeping)."""

    key: bytes
    members: tuple[tuple[bytes, bytes], ...]
    """(member, fingerprint of the evidence) pairs."""
    ttl_s: int

    source: ClassVar[str] = scripts.RECORD_SUSPECTS

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,  # noqa: ARG003 - the protocol's signature
    ) -> list[bool]:
        """Record each queue's suspects, one script call per queue."""
        fence_key, token = _fence_args(fence)
        done = []
        for write in writes:
            record = cast("RecordSuspects", write)
            keys, args = scripts.SUSPECTS_HEAD.encode(
                {"lease": fence_key, "suspects": record.key},
                {"token": token, "ttl": record.ttl_s},
            )
            pairs = [part for pair in record.members for part in pair]
            reply = run_script(client, cls.source, keys, [*args, *pairs])
            done += _flags([reply], "suspects")
        return done


def _flags(reply: object, what: str) -> list[bool]:
    """Turn a script's per-item replies into booleans; -1 means the lease was lost."""
    if reply in (scripts.FENCED_OUT, [scripts.FENCED_OUT]):
        msg = f"the leader lease was lost before a batch of {what}; nothing was written"
        raise LeadershipLost(msg)
    return [bool(flag) for flag in cast("list[int]", reply)]


def run_fenced(
    client: redis.Redis,
    source: str,
    fence: Fence | None,
    items: Sequence[tuple[list[bytes], list[Arg]]],
) -> list[int]:
    """Run a batch write script: ``scripts.BATCH_HEAD``, then each item's keys and arguments."""
    fence_key, token = _fence_args(fence)
    keys, args = scripts.BATCH_HEAD.encode(
        {"lease": fence_key}, {"token": token, "count": len(items)}
    )
    for more_keys, more_args in items:
        keys += more_keys
        args += more_args
    reply = run_script(client, source, keys, args)
    _flags(reply, "writes")  # raises LeadershipLost when the script was fenced out
    return cast("list[int]", reply)


@dataclass(frozen=True, slots=True)
class PruneDeadWorker(ScriptBatch):
    """Remove a dead worker from worker sets (and delete its hash if a zombie), if still dead.

    The set member is the worker's hash key. Re-checked at write time by
    ``scripts.WORKER_STILL_DEAD``: the same reason (hash still gone, or the same TTL-less
    hash with the same ``last_heartbeat``), no subscriber on the command channel, no live
    execution (``liveness.Recheck`` holds what it compares).
    """

    worker_key: bytes
    sets: tuple[bytes, ...]
    recheck: Recheck

    source: ClassVar[str] = scripts.PRUNE_WORKER_MEMBERSHIPS
    what: ClassVar[str] = "worker prunes"

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.PRUNE_WORKER``, then the worker's sets."""
        check = self.recheck
        keys, args = scripts.PRUNE_WORKER.encode(
            {"worker": self.worker_key, "executions": check.executions},
            {
                "nsets": len(self.sets),
                "reason": check.reason,
                "heartbeat": check.heartbeat,
                "channel": check.channel,
                "execution_head": check.execution_head,
            },
        )
        return [*keys, *self.sets], args


@dataclass(frozen=True, slots=True)
class PruneQueue:
    """Remove a queue from ``rq:queues`` if it is still empty everywhere and still recorded.

    ``empty_keys`` are the queue's list, intermediate list, registries and worker set:
    none may exist at write time. ``empty_since`` is the janitor record the plan read.
    """

    queues_key: bytes
    member: bytes
    state_key: bytes
    empty_since: bytes
    empty_keys: tuple[bytes, ...]

    source: ClassVar[str] = scripts.PRUNE_EMPTY_QUEUES

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,  # noqa: ARG003 - the protocol's signature
    ) -> list[bool]:
        """Prune the queues in one script call per ``rq:queues`` set (normally one)."""
        fence_key, token = _fence_args(fence)
        by_set: dict[bytes, list[int]] = {}
        for index, write in enumerate(writes):
            by_set.setdefault(cast("PruneQueue", write).queues_key, []).append(index)
        done = [False] * len(writes)
        for queues_key, indexes in by_set.items():
            keys, args = scripts.QUEUES_HEAD.encode(
                {"lease": fence_key, "queues": queues_key},
                {"token": token, "count": len(indexes)},
            )
            for index in indexes:
                prune = cast("PruneQueue", writes[index])
                more_keys, more_args = scripts.PRUNE_QUEUE.encode(
                    {"state": prune.state_key},
                    {
                        "member": prune.member,
                        "since": prune.empty_since,
                        "nkeys": len(prune.empty_keys),
                    },
                )
                keys += [*more_keys, *prune.empty_keys]
                args += more_args
            flags = _flags(run_script(client, cls.source, keys, args), "queue prunes")
            for index, flag in zip(indexes, flags, strict=True):
                done[index] = flag
        return done


@dataclass(frozen=True, slots=True)
class SetJanitorState(ScriptBatch):
    """Set (with a TTL), set if absent, or delete (``value`` None) a key of the janitor's own state.

    Refuses at construction any key outside ``janitor:``, so bookkeeping can never
    write RQ's data.
    """

    key: bytes
    value: bytes | None
    ttl_s: int
    only_if_absent: bool = False

    source: ClassVar[str] = scripts.SET_JANITOR_STATE
    what: ClassVar[str] = "state writes"

    def __post_init__(self) -> None:
        """Check that the key is the janitor's own."""
        _check_state_key(self.key)

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.SET_JANITOR_STATE``."""
        mode = "del" if self.value is None else "nx" if self.only_if_absent else "set"
        return scripts.STATE_WRITE.encode(
            {"key": self.key},
            {"mode": mode, "value": self.value or b"", "ttl": self.ttl_s, "score": 0},
        )


@dataclass(frozen=True, slots=True)
class SetJanitorMember(ScriptBatch):
    """Add (``score`` given; the set's TTL renewed) or remove one member of a janitor-state sorted set.

    Refuses at construction any key outside ``janitor:``, as ``SetJanitorState`` does.
    """

    key: bytes
    member: bytes
    score: float | None
    ttl_s: int

    source: ClassVar[str] = scripts.SET_JANITOR_STATE
    what: ClassVar[str] = "state writes"

    def __post_init__(self) -> None:
        """Check that the key is the janitor's own."""
        _check_state_key(self.key)

    def encode(self) -> tuple[list[bytes], list[Arg]]:
        """Keys and arguments per ``scripts.SET_JANITOR_STATE``."""
        mode = "zrem" if self.score is None else "zadd"
        return scripts.STATE_WRITE.encode(
            {"key": self.key},
            {
                "mode": mode,
                "value": self.member,
                "ttl": self.ttl_s,
                "score": repr(self.score or 0.0),
            },
        )


def _check_state_key(key: bytes) -> None:
    """Refuse a key outside ``janitor:``, so bookkeeping can never write RQ's data."""
    if not key.startswith(JANITOR_PREFIX.encode() + b":"):
        msg = f"janitor state must live under janitor:, not {key!r}"
        raise ValueError(msg)
