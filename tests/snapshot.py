"""Byte-for-byte snapshots of a whole Redis database, to prove that something wrote nothing."""

from __future__ import annotations

from typing import cast

import redis

TTL_SLACK_MS = 5_000


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Return every key's DUMP and PTTL (-1 = no TTL)."""
    result: dict[bytes, tuple[bytes, int]] = {}
    for key in client.scan_iter(count=1000):
        raw_key = cast("bytes", key)
        dumped = client.dump(raw_key)
        if dumped is not None:
            result[raw_key] = (dumped, client.pttl(raw_key))
    return result


def assert_unchanged(
    before: dict[bytes, tuple[bytes, int]], after: dict[bytes, tuple[bytes, int]]
) -> None:
    """Assert two snapshots hold the same keys with the same bytes and TTL state."""
    assert sorted(before) == sorted(after), set(before) ^ set(after)
    for key, (value, ttl) in before.items():
        value_after, ttl_after = after[key]
        assert value == value_after, key
        assert (ttl < 0) == (ttl_after < 0), key
        assert abs(ttl - ttl_after) <= TTL_SLACK_MS or ttl < 0, key


def restore(client: redis.Redis, snap: dict[bytes, tuple[bytes, int]]) -> None:
    """Empty the database and put back every key of ``snap`` with its value and TTL."""
    client.flushdb()
    for key, (value, pttl) in snap.items():
        client.restore(key, max(pttl, 0), value)
