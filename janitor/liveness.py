"""Is a worker provably dead? The one rule that every task, ``report`` and ``explain`` ask.

A worker is provably dead only when every fact agrees (the strictest reading wins):

* its hash ``rq:worker:<w>`` is gone (``hash_expired``: kill -9, OOM kill, a lost node), or
  it is a hash without TTL whose ``last_heartbeat`` is missing or older than
  ``[workers] dead_after`` (``zombie``: left by an orphaned work horse, rq#1602). A hash
  with a TTL belongs to a live worker or expires on its own; an unreadable heartbeat is
  no evidence of death;
* nobody subscribes to its command channel ``rq:pubsub:<w>``: a work horse whose parent
  was SIGKILLed keeps the parent's connection, and with it the subscription, while it
  runs the job on;
* none of its RQ 3 executions (``rq:worker:<w>:executions``) is live: an execution hash
  lives as long as someone heartbeats it.

The write scripts re-check these facts atomically (``scripts.WORKER_STILL_DEAD``): the
same reason, the same heartbeat, still no subscriber, still no live execution.
See docs/keyspace.md, "Workers".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from janitor.batches import chunks
from janitor.jobs import FieldError, parse_rq_time
from janitor.keyspace import Keyspace

HASH_EXPIRED = "hash_expired"
"""Dead: the worker's hash is gone."""
ZOMBIE = "zombie"
"""Dead: a TTL-less worker hash without a heartbeat within ``dead_after``."""

MAX_EXECUTIONS_READ = 100
"""Members of a worker's executions set read; a busy RQ 3 worker has one."""
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """What Redis says about one worker, read in one pass (``read_workers``)."""

    name: bytes
    ttl: int
    """TTL of the worker hash: -2 gone, -1 none, else seconds left."""
    is_hash: bool
    """False when the worker key holds another type (never judged dead)."""
    heartbeat: bytes | None
    """The raw ``last_heartbeat`` (None when missing)."""
    queues: bytes | None
    """The raw ``queues`` field (None when missing)."""
    subscribers: int
    """Subscribers of the worker's command channel."""
    live_executions: int
    """Its RQ 3 executions whose hash still exists."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule's answer for one worker, with the reason."""

    dead: bool
    reason: str
    """``hash_expired`` or ``zombie`` when dead; otherwise why it is not provably dead."""
    held: bool = False
    """Its hash alone would call it dead (or cannot be read), but another fact keeps it:
    worth reporting, unlike a worker that is plainly alive."""


def judge(facts: WorkerFacts, now: float, dead_after: float) -> Verdict:
    """Decide whether the worker of ``facts`` is provably dead at ``now``.

    A heartbeat exactly ``dead_after`` old is not old enough: dead means older.
    """
    by_hash = _by_hash(facts, now, dead_after)
    if not by_hash.dead:
        return by_hash
    if facts.subscribers:
        return Verdict(
            dead=False, reason="its command channel has a subscriber", held=True
        )
    if facts.live_executions:
        return Verdict(dead=False, reason="an execution of it is still live", held=True)
    return by_hash


def _by_hash(facts: WorkerFacts, now: float, dead_after: float) -> Verdict:
    """What the worker hash alone says."""
    if not facts.is_hash:
        return Verdict(dead=False, reason="the worker key is not a hash", held=True)
    if facts.ttl == -2:  # noqa: PLR2004 - Redis's TTL reply for a missing key
        return Verdict(dead=True, reason=HASH_EXPIRED)
    if facts.ttl != -1:
        return Verdict(dead=False, reason="its hash has a TTL")
    try:
        beat = parse_rq_time(facts.heartbeat)
    except FieldError:
        return Verdict(dead=False, reason="unreadable last_heartbeat", held=True)
    if beat is not None and now - beat <= dead_after:
        return Verdict(dead=False, reason="a heartbeat within dead_after")
    return Verdict(dead=True, reason=ZOMBIE)


def read_workers(
    client: redis.Redis, keys: Keyspace, names: Iterable[bytes]
) -> dict[bytes, WorkerFacts]:
    """Read the facts ``judge`` needs for each named worker, a chunk per round trip or two."""
    facts: dict[bytes, WorkerFacts] = {}
    for chunk in chunks(list(dict.fromkeys(names)), _CHUNK):
        facts.update(_read_chunk(client, keys, chunk))
    return facts


def judge_worker_keys(
    client: redis.Redis,
    keys: Keyspace,
    worker_keys: Iterable[bytes],
    *,
    now: float,
    dead_after: float,
) -> dict[bytes, tuple[WorkerFacts, Verdict]]:
    """Read and judge workers named by their hash keys (what RQ's worker sets hold)."""
    names = {key: keys.worker_name_from_key(key) or key for key in worker_keys}
    facts = read_workers(client, keys, names.values())
    return {
        key: (facts[name], judge(facts[name], now, dead_after))
        for key, name in names.items()
    }


def _read_chunk(
    client: redis.Redis, keys: Keyspace, names: Sequence[bytes]
) -> Iterator[tuple[bytes, WorkerFacts]]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.ttl(keys.worker(name))
        pipe.hmget(keys.worker(name), ["last_heartbeat", "queues"])
        pipe.srandmember(keys.worker_executions(name), MAX_EXECUTIONS_READ)
    replies = pipe.execute(raise_on_error=False)
    channels = [keys.pubsub_channel(name) for name in names]
    subscribers = dict(cast("list[tuple[bytes, int]]", client.pubsub_numsub(*channels)))
    executions = _live_executions(client, keys, names, replies[2::3])
    for index, name in enumerate(names):
        ttl, fields = replies[3 * index], replies[3 * index + 1]
        is_hash = isinstance(ttl, int) and isinstance(fields, list)
        heartbeat, queues = (
            cast("list[bytes | None]", fields) if is_hash else [None, None]
        )
        yield (
            name,
            WorkerFacts(
                name=name,
                ttl=ttl if isinstance(ttl, int) else -1,
                is_hash=is_hash,
                heartbeat=heartbeat,
                queues=queues,
                subscribers=int(subscribers.get(channels[index], 0)),
                live_executions=executions.get(name, 0),
            ),
        )


def _live_executions(
    client: redis.Redis,
    keys: Keyspace,
    names: Sequence[bytes],
    members: Sequence[object],
) -> Mapping[bytes, int]:
    """Count, per worker, the members of its executions set whose execution hash exists.

    A set that is not a set (another type) counts as one live execution: not evidence
    of death.
    """
    pairs: list[tuple[bytes, bytes]] = []
    counts: dict[bytes, int] = {}
    for name, reply in zip(names, members, strict=True):
        if isinstance(reply, Exception):
            counts[name] = 1
        else:
            pairs += [(name, member) for member in cast("list[bytes]", reply)]
    if pairs:
        pipe = client.pipeline(transaction=False)
        for _, member in pairs:
            pipe.exists(keys.execution_of_member(member))
        for (name, _), exists in zip(pairs, pipe.execute(), strict=True):
            counts[name] = counts.get(name, 0) + int(bool(exists))
    return counts


@dataclass(frozen=True, slots=True)
class Recheck:
    """What a write script re-checks to find a worker still dead for the same reason."""

    reason: bytes
    heartbeat: bytes
    """The raw ``last_heartbeat`` judged (empty when missing)."""
    channel: bytes
    executions: bytes
    """The worker's executions set key."""
    execution_head: bytes
    """An execution key is this followed by a member of that set."""

    @classmethod
    def of(cls, facts: WorkerFacts, verdict: Verdict, keys: Keyspace) -> Recheck:
        """The recheck of a worker judged dead."""
        assert verdict.dead, verdict
        return cls(
            reason=verdict.reason.encode(),
            heartbeat=facts.heartbeat or b"",
            channel=keys.pubsub_channel(facts.name),
            executions=keys.worker_executions(facts.name),
            execution_head=keys.execution_of_member(b""),
        )
