"""RQ 3's rate limits as the janitor reads them: which limits exist, their concurrency, who holds a slot.

``clean_registries`` (``tasks.ratelimits``) and the report (``report.ratelimits``) both ask
here, so a slot the report counts as stale is one the task would release (its Lua
re-checks the status and also the job's live executions before it writes).
"""

from __future__ import annotations

from typing import cast

import redis

from janitor.jobs import FieldError, parse_int
from janitor.keyspace import Keyspace

HOLDING = frozenset({b"queued", b"started"})
"""The statuses that legitimately hold a slot (RQ's ``_release_stale_allowed_jobs``)."""


def holds_slot(status: object) -> bool:
    """Whether a job of this raw status holds its slot; any other holds a stale one."""
    return status in HOLDING


def limit_names(client: redis.Redis, keys: Keyspace, most: int) -> list[bytes]:
    """The first ``most`` members of ``rq:rl-keys`` SSCAN finds, sorted; none if it is not a set."""
    if client.type(keys.rate_limit_keys()) != b"set":
        return []
    found = client.sscan_iter(keys.rate_limit_keys(), count=1000)
    return sorted(
        cast("bytes", name) for _, name in zip(range(most), found, strict=False)
    )


def concurrency(raw: object) -> int | None:
    """A limit's ``concurrency`` field as read (a reply of HGET); None when missing or not an integer."""
    try:
        return parse_int(raw) if isinstance(raw, bytes) else None
    except FieldError:
        return None
