"""Splitting a list of work into the slices that go to Redis one round trip at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
