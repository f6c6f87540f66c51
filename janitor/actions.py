"""What tasks plan and the engine applies: actions with their audit event, and skips to report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast

import redis
from redis.commands.core import Script

from janitor import scripts
from janitor.errors import LeadershipLost


@dataclass(frozen=True, slots=True)
class Fence:
    """The leader lease a write must still hold: checked inside each write script."""

    key: bytes
    token: bytes


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
    """Run a Lua script by its SHA (EVALSHA), loading it again where the server lost it."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = client.register_script(source)
    return script(keys=keys, args=args, client=client)


def _fence_args(fence: Fence | None) -> tuple[bytes, bytes]:
    if fence is None:
        return b"janitor:no-lease", b""
    return fence.key, fence.token


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """Delete a terminal job and everything that belongs to it, if it is unchanged.

    The re-check compares what the plan read (status among ``statuses``, origin,
    ``ended_at``, the registry score, the number of dependents) with the job at write
    time, and refuses when a started-registry member of the job is still live or one
    of its execution hashes still exists.
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

    source: ClassVar[str] = scripts.DELETE_TERMINAL_JOBS

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,
    ) -> list[bool]:
        """Delete the jobs in one script call; see ``scripts.DELETE_TERMINAL_JOBS``."""
        fence_key, token = _fence_args(fence)
        keys: list[bytes] = [fence_key]
        args: list[bytes | str | int | float] = [token, repr(now), len(writes)]
        for write in writes:
            job = cast("DeleteJob", write)
            keys += [
                job.job_key,
                job.registry,
                job.started,
                job.dependents,
                job.group or job.job_key,
            ]
            keys += [*job.side_keys, *job.execution_keys]
            args += [
                len(job.side_keys),
                len(job.execution_keys),
                len(job.started_members),
            ]
            args += [job.job_id, b"|" + b"|".join(job.statuses) + b"|", job.origin]
            args += [
                job.ended_at,
                job.score,
                job.dependents_count,
                1 if job.group else 0,
            ]
            args += list(job.started_members)
        return _flags(run_script(client, cls.source, keys, args), "deletes")


@dataclass(frozen=True, slots=True)
class RecoverJob:
    """Move an abandoned job on (fail, enqueue or schedule it) if all the evidence still holds.

    ``keys`` and ``args`` follow ``scripts.RECOVER_ABANDONED_JOBS``, 14 of each per job.
    """

    keys: tuple[bytes, ...]
    args: tuple[bytes, ...]

    source: ClassVar[str] = scripts.RECOVER_ABANDONED_JOBS

    @classmethod
    def apply_batch(
        cls,
        client: redis.Redis,
        writes: Sequence[Write],
        fence: Fence | None,
        now: float,
    ) -> list[bool]:
        """Recover the jobs in one script call."""
        fence_key, token = _fence_args(fence)
        keys: list[bytes] = [fence_key]
        args: list[bytes | str | int | float] = [token, repr(now), len(writes)]
        for write in writes:
            job = cast("RecoverJob", write)
            keys += job.keys
            args += job.args
        return _flags(run_script(client, cls.source, keys, args), "recoveries")


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
            pairs = [part for pair in record.members for part in pair]
            reply = run_script(
                client,
                cls.source,
                [fence_key, record.key],
                [token, record.ttl_s, *pairs],
            )
            done += _flags([reply], "suspects")
        return done


def _flags(reply: object, what: str) -> list[bool]:
    """Turn a script's per-item replies into booleans; -1 means the lease was lost."""
    if reply in (scripts.FENCED_OUT, [scripts.FENCED_OUT]):
        msg = f"the leader lease was lost before a batch of {what}; nothing was written"
        raise LeadershipLost(msg)
    return [bool(flag) for flag in cast("list[int]", reply)]
