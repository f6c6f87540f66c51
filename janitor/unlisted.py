"""Queues missing from ``rq:queues`` that still hold RQ data, found by a bounded, resumable SCAN.

RQ's ``Queue.delete()`` (every version, 3.0 included) removes the queue's list and its
``rq:queues`` member only; its registries stay, with their jobs (docs/keyspace.md, "Leaks
RQ leaves", item 13). Nothing lists such a queue, so this module finds them:

* ``queue_of``: whether a key has the shape of a per-queue registry (a sorted set) or an
  intermediate list (a list), and of which queue; read off ``Keyspace``'s templates, so
  a queue name with ``:`` in it stays whole.
* ``confirm``: which candidate names are unlisted: ``rq:queue:<q>`` is not a member of
  ``rq:queues`` and a registry or intermediate list of the queue exists with RQ's type.
  ``rq:queue:<x>:intermediate`` is also the list of a queue named ``<x>:intermediate``:
  while that queue is listed the key is read as its list, never as ``<x>``'s.
* ``find_unlisted``: what a task walks. Each call reads the janitor's record of unlisted
  queues found before (``Keyspace.unlisted_record``), SCANs about ``KEYS_PER_RUN`` keys
  from where the previous call stopped (``Keyspace.unlisted_scan_cursor``; ``expire_jobs``
  and ``clean_registries`` share it, so each advances it), and confirms every name, old
  and new (``recover_abandoned``, every minute, passes ``keys_per_run=0``: the record
  only). The record's update (names found, names listed again or empty) and the cursor
  are bookkeeping actions that the task yields last: a dry run finds the same queues
  and writes nothing, and a keyspace within one slice is covered on every call.

Reading only; what is written (the record, the cursor) is planned, never done here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from janitor.actions import Action, SetJanitorMember
from janitor.batches import chunks
from janitor.keyspace import QUEUE_REGISTRIES, Keyspace, iter_queue_names
from janitor.scan import ResumableScan

KEYS_PER_RUN = 10_000
"""Keyspace entries the SCAN visits per call (the sum of its COUNT hints)."""
SCAN_COUNT = 1000
"""The COUNT hint of one SCAN call."""
RECORD_TTL_S = 7 * 86_400
"""The record and the cursor outlive a week without a run, no more."""
REFRESH_S = 86_400
"""A name confirmed again this long after it was recorded is recorded anew (its time and the TTL)."""
PIPELINE = 500
"""Names confirmed per round trip."""


def queue_of(keys: Keyspace, key: bytes) -> bytes | None:
    """The queue name in a key shaped like one of its registries or its intermediate list, else None."""
    found = keys.registry_of_key(key)
    return None if found is None else found[1]


def confirm(client: redis.Redis, keys: Keyspace, names: Iterable[bytes]) -> list[bytes]:
    """The names among ``names`` that are unlisted queues still holding data, sorted.

    Listed queues (most names a SCAN sees) cost one SISMEMBER each; only the others get
    their keys' types read.
    """
    unique = sorted(set(names))
    width = len(QUEUE_REGISTRIES) + 2
    found: list[bytes] = []
    for chunk in chunks(unique, PIPELINE):
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            # redis-py types a member as str but sends bytes as they are
            pipe.sismember(keys.queues(), cast("str", keys.queue(name)))
        unlisted = [
            n for n, listed in zip(chunk, pipe.execute(), strict=True) if not listed
        ]
        pipe = client.pipeline(transaction=False)
        for name in unlisted:
            pipe.sismember(keys.queues(), cast("str", keys.intermediate(name)))
            pipe.type(keys.intermediate(name))
            for kind in QUEUE_REGISTRIES:
                pipe.type(getattr(keys, kind)(name))
        replies = pipe.execute()
        for index, name in enumerate(unlisted):
            own_list, intermediate, *registries = replies[
                width * index : width * (index + 1)
            ]
            if any(kind == b"zset" for kind in registries) or (
                intermediate == b"list" and not own_list
            ):
                found.append(name)
    return found


@dataclass(frozen=True, slots=True)
class Unlisted:
    """What one call found: the unlisted queues, and the bookkeeping that records them."""

    names: tuple[bytes, ...]
    """Sorted; every unlisted queue known to the janitor, whatever the allowlist."""
    bookkeeping: tuple[Action, ...]
    """Record and cursor updates (``event`` None), for the task to yield after its work."""


def find_unlisted(
    client: redis.Redis,
    keys: Keyspace,
    now: float,
    *,
    task: str,
    keys_per_run: int = KEYS_PER_RUN,
) -> Unlisted:
    """The unlisted queues known before or found in this call's slice of the SCAN (see the module)."""
    record_key = keys.unlisted_record()
    cursor_key = keys.unlisted_scan_cursor()
    scores = dict(
        cast(
            "list[tuple[bytes, float]]",
            client.zrange(record_key, 0, -1, withscores=True),
        )
    )
    recorded = set(scores)
    scan = ResumableScan(
        client, cursor_key, keys.glob("*"), budget=keys_per_run, count=SCAN_COUNT
    )
    seen = {
        name
        for page in scan.pages()
        for key in page
        if (name := queue_of(keys, key)) is not None
    }
    names = confirm(client, keys, recorded | seen)
    actions: list[Action] = []
    # names recorded more than a day ago are recorded again, so the record's TTL lasts
    stale = {name for name, score in scores.items() if now - score > REFRESH_S}
    for name in sorted(set(names) - (recorded - stale)):
        write = SetJanitorMember(record_key, name, now, RECORD_TTL_S)
        actions.append(Action(task, None, {}, write))
    actions.extend(
        Action(task, None, {}, SetJanitorMember(record_key, name, None, 0))
        for name in sorted(recorded - set(names))
    )
    if state := scan.save(RECORD_TTL_S):
        actions.append(Action(task, None, {"cursor": scan.cursor}, state))
    return Unlisted(tuple(names), tuple(actions))


def every_queue(
    client: redis.Redis, keys: Keyspace, unlisted: Unlisted
) -> Iterator[bytes]:
    """The queues of ``rq:queues``, then the unlisted ones (each name once, also if listed meanwhile)."""
    rest = set(unlisted.names)
    for name in iter_queue_names(client, keys):
        rest.discard(name)
        yield name
    yield from sorted(rest)
