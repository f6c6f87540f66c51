"""A settable clock for tests: tasks and the engine take ``now`` as a callable."""

from __future__ import annotations


class Clock:
    """A settable clock: tasks and the engine take ``now`` as a callable."""

    def __init__(self, start: float) -> None:
        self.value = start

    def __call__(self) -> float:
        """The current time of this clock."""
        return self.value

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.value += seconds
