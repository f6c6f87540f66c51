"""The memory budget: how much Redis may hold (``[memory] budget``), and whether it holds more.

Decided here alone for ``expire_jobs`` (which deletes terminal jobs beyond their age rules
while the server is over the budget), the daemon's ``INFO memory`` check and its gauges,
``report`` and ``explain``. The budget is a share of the server's ``maxmemory`` or a size;
a share of a server without ``maxmemory`` is a configuration error (``ConfigError``: exit
78 at start). Deleting for memory goes on until ``used_memory`` is ``MARGIN`` of the budget
below it, so one enqueue does not start the next round at once. Reading only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from janitor.config import MemorySettings
from janitor.errors import ConfigError

MARGIN = 0.05
"""Deleting for memory stops this share of the budget below it."""
RULE = "memory.budget"
"""The ``rule`` of a ``job_deleted`` line for a job deleted for memory."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What ``INFO memory`` says, in bytes (``maxmemory`` 0: none)."""

    used: int
    maxmemory: int
    policy: str


def read_usage(client: redis.Redis) -> Usage:
    """``used_memory``, ``maxmemory`` and ``maxmemory_policy`` from ``INFO memory``."""
    info = cast("dict[str, object]", client.info("memory"))
    return Usage(
        used=int(cast("int", info.get("used_memory", 0))),
        maxmemory=int(cast("int", info.get("maxmemory", 0))),
        policy=str(info.get("maxmemory_policy", "unknown")),
    )


def budget_bytes(settings: MemorySettings, maxmemory: int) -> int | None:
    """The budget in bytes on a server with this ``maxmemory``; None when no budget is set.

    Raises:
        ConfigError: the budget is a share of ``maxmemory`` and the server has none.
    """
    if settings.budget is None:
        return None
    kind, amount = settings.budget
    if kind == "bytes":
        return int(amount)
    if maxmemory <= 0:
        msg = (
            f'[memory] budget: "{amount:g}%" is a share of maxmemory, but the server '
            "has no maxmemory; set one (with maxmemory-policy noeviction) or give the "
            'budget as a size, like "2GB"'
        )
        raise ConfigError(msg)
    return int(maxmemory * amount / 100)


def target(budget: int) -> int:
    """Where deleting for memory stops: ``MARGIN`` below the budget."""
    return int(budget * (1 - MARGIN))
