"""What every task gets to plan with, and the shape a task has."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import redis

from janitor.actions import Action, Skip
from janitor.config import Settings
from janitor.keyspace import Keyspace

PAGE_SIZE = 500
"""How many registry entries or keys a task reads per round trip."""


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The read side of a run: the client, key names, settings, clock and queue filter."""

    client: redis.Redis
    keys: Keyspace
    settings: Settings
    now: float
    allows_queue: Callable[[str], bool]
    page_size: int = PAGE_SIZE
    dry_run: bool = False
    """Tasks plan the same either way; a task may use this to explain, never to write."""


class Task(Protocol):
    """A maintenance task: reads Redis and plans actions, never writes."""

    name: str

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield the actions this task wants applied, and the things it had to skip."""
        ...
