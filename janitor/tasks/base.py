"""What every task gets to plan with, and the shape a task has."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import redis

from janitor.actions import Action, Skip
from janitor.config import Settings
from janitor.keyspace import Keyspace
from janitor.leader import Fence

PAGE_SIZE = 500
"""How many registry entries or keys a task reads per round trip."""

MAX_BATCH = 500
"""The most items (actions, or entries a script judges) one atomic script call takes."""

DECISIONS_IN_FLIGHT = 2
"""Decision pages sent before the oldest one's answer is read: Redis runs one while the
janitor audits the one before. Each page holds at most ``MAX_BATCH`` divided by this, so
at most ``MAX_BATCH`` jobs are ever deleted without their audit lines yet written."""

TARGET_CALL_S = 0.002
"""How long one script call should take Redis, as the janitor measures it.

Redis runs a script atomically, so every other client waits while it runs: the batch size
adapts to keep each call near this, whatever the server's speed. Decision pages go out
back to back, so another client's command may wait behind two of them."""


@dataclass
class Pace:
    """How many items the next script call takes.

    After each call the engine reports how many items it took and how long Redis took;
    the next size aims at ``target_s`` per call, between ``minimum`` and ``maximum``
    items, and at most doubles from one call to the next.
    """

    maximum: int = MAX_BATCH
    minimum: int = 10
    target_s: float = TARGET_CALL_S
    size: int = field(init=False)

    def __post_init__(self) -> None:
        """Start at the largest batch."""
        self.size = self.maximum

    def restart(self) -> None:
        """Start again at the largest batch (a new task measures for itself)."""
        self.size = self.maximum

    @property
    def decision_size(self) -> int:
        """How many entries the next decision page takes (see ``DECISIONS_IN_FLIGHT``)."""
        return max(self.minimum, min(self.size, self.maximum // DECISIONS_IN_FLIGHT))

    def record(self, items: int, elapsed_s: float) -> None:
        """Take the measured time of a call of ``items`` items into the next size."""
        if items <= 0 or elapsed_s <= 0:
            return
        fit = int(self.target_s * items / elapsed_s)
        self.size = max(self.minimum, min(self.maximum, fit, 2 * self.size))


@dataclass
class Throttle:
    """Keeps a task's items per second at or below ``[limits] max_ops_per_s``, if set.

    Before each script call the engine waits until the items already sent fit the
    limit since the task began; the clock and the sleep are passed in.
    """

    per_s: int | None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float | None = None
    sent: int = 0

    def wait(self) -> None:
        """Sleep until the next call keeps the average within the limit."""
        if not self.per_s:
            return
        now = self.clock()
        if self.started is None:
            self.started = now
        due = self.started + self.sent / self.per_s
        if due > now:
            self.sleep(due - now)

    def count(self, items: int) -> None:
        """Add the items a call just took."""
        self.sent += items


def pace_for(max_ops_per_s: int | None) -> Pace:
    """The batch sizes for a limit: calls of at most a tenth of a second's worth each."""
    if not max_ops_per_s:
        return Pace()
    return Pace(maximum=max(2 * Pace.minimum, min(MAX_BATCH, max_ops_per_s // 10)))


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
    pace: Pace = field(default_factory=Pace)
    """The engine's batch size, adapted to measured script times; read, never set, by tasks."""


class Task(Protocol):
    """A maintenance task: reads Redis and plans actions, never writes."""

    name: str

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """Yield the actions this task wants applied, and the things it had to skip."""
        ...


@dataclass(frozen=True, slots=True)
class Decided:
    """What a :class:`Decision` did: its audited actions, and what it left to ordinary planning."""

    events: Sequence[tuple[str, Mapping[str, object]]]
    """Audit events (event, fields) of what was applied (in a dry run: would be)."""
    rest: Iterable[Action | Skip]
    """Planned the ordinary way, lazily: the engine applies these in re-checked batches."""


class Decision(Protocol):
    """Entries a task leaves to one atomic script that judges them by its policy and applies it.

    Judging and writing happen in the same atomic step, so there is nothing to re-check.
    Whatever the script is not sure about it leaves untouched, and ``Decided.rest``
    plans it the ordinary way. In a dry run the same script only judges.

    The call is split in two so the janitor can prepare the next page while Redis runs
    this one: ``send`` sends the script call, and the function it returns waits for the
    answer, which the engine always reads (and audits) before it sends anything else.
    """

    def __len__(self) -> int:
        """How many entries the script judges (the engine paces calls by it)."""
        ...

    def send(
        self, client: redis.Redis, fence: Fence | None, *, dry_run: bool
    ) -> Callable[[], Decided]:
        """Send the script call; the returned function reads its answer.

        That function raises LeadershipLost when the lease token no longer matched.
        """
        ...


@runtime_checkable
class DecidingTask(Task, Protocol):
    """A task with a faster plan that leaves the plain cases to :class:`Decision` scripts.

    The engine runs ``decide`` instead of ``plan``; both must lead to the same actions,
    audit events and skips. ``plan`` stays the reference (and what tests may apply by hand).
    """

    def decide(self, ctx: TaskContext) -> Iterator[Action | Skip | Decision]:
        """Yield actions and skips as ``plan`` does, and decisions for the plain cases."""
        ...


def first_seen(recorded: bytes | None, mark: bytes) -> float | None:
    """When a janitor sighting (``b"<time> <mark>"``, janitor state) first saw these very facts.

    ``mark`` is what the sighting must have been taken on (a score, a fingerprint); None
    when there is no sighting, it was of other facts, or it is not what the janitor
    writes (so the sighting starts over).
    """
    if recorded is None:
        return None
    when, _, seen_mark = recorded.partition(b" ")
    try:
        return float(when) if seen_mark == mark else None
    except ValueError:
        return None
