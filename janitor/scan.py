"""A SCAN of the keyspace in slices that resume across runs, from a cursor kept in janitor state.

``sweep_orphans``, ``prune_workers`` and the unlisted-queue search (``janitor.unlisted``)
each visit a bounded share of the keyspace per run and go on from there the next run, so
a keyspace of any size is covered over several runs at a bounded cost per run. The cursor
is read here; its update is a write the task plans (``ResumableScan.save``), so a dry run
reads the same slice and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import redis

from janitor.actions import SetJanitorState


class ResumableScan:
    """One run's slice: SCAN ``match`` from the stored cursor for about ``budget`` keys."""

    def __init__(
        self,
        client: redis.Redis,
        cursor_key: bytes,
        match: bytes,
        *,
        budget: int,
        count: int,
    ) -> None:
        """Read the cursor the previous run left at ``cursor_key`` (0 when none or unreadable)."""
        self.client = client
        self.cursor_key = cursor_key
        self.match = match
        self.budget = budget
        """Keys the slice visits at most, the sum of its COUNT hints (0: no SCAN)."""
        self.count = count
        """The COUNT hint of one SCAN call."""
        raw = cast("bytes | None", client.get(cursor_key))
        self.start = int(raw) if raw is not None and raw.isdigit() else 0
        """Where this run's slice starts."""
        self.cursor = self.start
        """Where the slice has got to; 0 once the SCAN has gone round the keyspace."""

    def pages(self) -> Iterator[list[bytes]]:
        """The keys of each SCAN call (a key may come twice), until the budget or the keyspace ends."""
        budget = self.budget
        while budget > 0:
            count = min(self.count, budget)
            self.cursor, page = self.client.scan(
                self.cursor, match=self.match, count=count
            )
            budget -= count
            yield cast("list[bytes]", page)
            if self.cursor == 0:
                break

    def save(self, ttl_s: int) -> SetJanitorState | None:
        """The write that stores where the next run starts (deleted at 0); None if the slice did not move."""
        if self.cursor == self.start:
            return None
        value = str(self.cursor).encode() if self.cursor else None
        return SetJanitorState(self.cursor_key, value, ttl_s)
