"""When an entry of RQ's global indexes is dead: one rule for ``clean_registries`` and ``report``.

``rq:groups`` (RQ 2.0+) lists group names; an entry is dead once its set ``rq:group:<name>``
is gone (RQ's ``Group.clean_registries`` SREMs exactly these). ``rq:cron_schedulers`` (RQ
2.6+) scores each cron scheduler by its last heartbeat; an entry is dead once its hash
``rq:cron_scheduler:<name>`` is gone (it expires 120 s after the last heartbeat) and the
score is over ``CRON_GRACE_S`` old (docs/keyspace.md, "Leaks RQ leaves", item 17). The
write script re-checks the same (``scripts.CLEAN_INDEX_ENTRIES``). Reading only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import cast

import redis

from janitor.keyspace import Keyspace

CRON_GRACE_S = 600
"""A cron scheduler's entry must be older than this (RQ's own cleanup: 120 s)."""
PAGE = 500
"""Index members checked per round trip."""


def _missing(client: redis.Redis, owners: Sequence[bytes]) -> list[bool]:
    """Per owner key, whether it does not exist."""
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        pipe.exists(owner)
    return [n == 0 for n in pipe.execute()]


def dead_groups(client: redis.Redis, keys: Keyspace, limit: int) -> list[bytes]:
    """Up to ``limit`` members of ``rq:groups`` whose group set is gone (the rule, for task and report)."""
    if client.type(keys.groups()) != b"set":
        return []
    members = cast("Iterator[bytes]", client.sscan_iter(keys.groups(), count=PAGE))
    found: list[bytes] = []
    while len(found) < limit:
        page = list(islice(members, PAGE))
        if not page:
            break
        owners = [keys.group(name) for name in page]
        found += [
            n for n, gone in zip(page, _missing(client, owners), strict=True) if gone
        ]
    return found[:limit]


def dead_cron_schedulers(
    client: redis.Redis, keys: Keyspace, now: float, limit: int
) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` (name, raw score) of ``rq:cron_schedulers`` entries of dead schedulers.

    Dead: the hash is gone and the last heartbeat (the score) is over ``CRON_GRACE_S`` old.
    """
    if client.type(keys.cron_schedulers()) != b"zset":
        return []
    stale = cast(
        "list[tuple[bytes, bytes]]",
        client.zrangebyscore(
            keys.cron_schedulers(),
            "-inf",
            now - CRON_GRACE_S,
            start=0,
            num=limit,
            withscores=True,
            score_cast_func=bytes,
        ),
    )
    owners = [keys.cron_scheduler(name) for name, _ in stale]
    return [e for e, gone in zip(stale, _missing(client, owners), strict=True) if gone]
