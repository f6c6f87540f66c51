"""``[limits] max_ops_per_s``: a run keeps its items per second within the limit."""

from __future__ import annotations

import time

import redis

from janitor.config import LimitsSettings, Settings
from janitor.tasks.base import MAX_BATCH, Pace, Throttle, pace_for
from tests.bulk import fill_finished
from tests.engine_run import run_tasks


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        """Start at 100 s."""
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        """The current fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Move the clock on."""
        self.slept.append(seconds)
        self.now += seconds


def test_throttle_waits_until_the_items_sent_fit_the_limit() -> None:
    """Each call waits until the items already sent average at most the limit per second."""
    fake = FakeTime()
    throttle = Throttle(100, clock=fake.clock, sleep=fake.sleep)
    for _ in range(4):
        throttle.wait()
        throttle.count(50)
    assert fake.slept == [0.5, 0.5, 0.5]
    assert fake.now == 101.5


def test_throttle_does_not_wait_when_calls_are_slower_than_the_limit() -> None:
    """Time spent elsewhere counts: a slow run is never made slower."""
    fake = FakeTime()
    throttle = Throttle(100, clock=fake.clock, sleep=fake.sleep)
    throttle.wait()
    throttle.count(50)
    fake.now += 2.0  # the call itself took two seconds
    throttle.wait()
    assert fake.slept == []


def test_no_limit_never_waits() -> None:
    """Without ``max_ops_per_s`` the throttle does nothing."""
    fake = FakeTime()
    throttle = Throttle(None, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        throttle.wait()
        throttle.count(10_000)
    assert fake.slept == []


def test_a_limit_makes_calls_smaller() -> None:
    """A call takes at most a tenth of a second's worth of items (and no fewer than 20)."""
    assert pace_for(None).maximum == MAX_BATCH
    assert pace_for(100_000).maximum == MAX_BATCH
    assert pace_for(1_000).maximum == 100
    assert pace_for(50).maximum == 2 * Pace.minimum


def test_a_run_keeps_within_the_limit(r: redis.Redis) -> None:
    """300 expired jobs at 500 jobs/s take over half a second, and all are deleted."""
    fill_finished(r, "limited", 300)
    settings = Settings(limits=LimitsSettings(max_ops_per_s=500))
    started = time.monotonic()
    report, lines = run_tasks(r, settings, only=["expire_jobs"])
    elapsed = time.monotonic() - started
    assert sum(1 for line in lines if line["event"] == "job_deleted") == 300
    assert report.failed_tasks == ()
    assert elapsed >= 0.5
