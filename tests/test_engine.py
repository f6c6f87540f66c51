"""The engine's own rules: which error a failed task reports when pages were still in flight."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from janitor.audit import AuditLog
from janitor.config import RqSettings, Settings
from janitor.engine import _Runner
from janitor.keyspace import Keyspace
from janitor.leader import Fence
from janitor.policy import QueueFilter
from janitor.tasks.base import Decided, Decision, TaskContext


class FailingPage:
    """A decision page whose answer cannot be read."""

    def __len__(self) -> int:
        return 1

    def send(
        self, client: redis.Redis, fence: Fence | None, *, dry_run: bool
    ) -> Callable[[], Decided]:
        """Send nothing; reading the answer fails."""

        def receive() -> Decided:
            msg = "the page's answer was lost"
            raise ConnectionError(msg)

        return receive


def test_a_failing_drain_does_not_hide_the_plans_own_error(r: redis.Redis) -> None:
    """When the plan fails with a page in flight whose answer fails too, the plan's error is raised, the drain's noted."""

    def plan() -> Iterator[Decision]:
        yield FailingPage()
        msg = "the plan broke"
        raise ValueError(msg)

    context = TaskContext(
        r, Keyspace(), Settings(), time.time(), QueueFilter.build(RqSettings())
    )
    runner = _Runner(
        context, AuditLog(io.StringIO()), dry_run=True, lease=None, now=time.time
    )
    with pytest.raises(ValueError, match="the plan broke") as raised:
        runner.run(plan())
    assert any("the page's answer was lost" in note for note in raised.value.__notes__)
