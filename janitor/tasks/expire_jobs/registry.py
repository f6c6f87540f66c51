"""One terminal registry of one queue as ``expire_jobs`` walks it: its planner and fast path share it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from janitor.policy import Retention

CapBoundary = tuple[float, bytes]
"""The (score, member) of the newest entry *beyond* a keep_last cap is at or below this."""


@dataclass(frozen=True, slots=True)
class Registry:
    """One terminal registry of one queue, with the retention of each state in it."""

    queue: bytes
    name: str
    kind: str
    key: bytes
    retentions: Mapping[str, Retention]
