"""Job functions for in-process RQ workers in the task tests (the marker strings stand for secrets)."""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker, get_current_job

SECRET = "SECRET-PAYLOAD-7f3a"  # noqa: S105 - a planted marker, to catch payload leaks


def ok(arg: str = SECRET) -> str:
    """Succeed, returning a result that contains the payload marker."""
    return f"done {arg}"


def boom(arg: str = SECRET) -> None:
    """Fail with an exception message that contains a password."""
    msg = f"failed with password=hunter2-SECRET for {arg}"
    raise RuntimeError(msg)


class QuietWorker(SimpleWorker):
    """A real in-process RQ worker without the pub/sub command channel (a channel, not a key).

    RQ 3 joins that channel's thread with a 1 s timeout when a burst ends; the Redis state
    the worker leaves is the same.
    """

    def subscribe(self) -> None:
        """Listen for no commands."""


def work(client: redis.Redis, *queues: Queue) -> None:
    """Run a real RQ worker (in this process) over the queues until they are empty."""
    QuietWorker(list(queues), connection=client).work(burst=True)


RAN_KEY = "app:ran"
"""An application's own key (not RQ's): the set of job ids whose function ran."""


def record(arg: str = SECRET) -> str:
    """Record that this job ran, in an app key the janitor must never touch, then succeed."""
    job = get_current_job()
    assert job is not None
    job.connection.sadd(RAN_KEY, job.id)
    return f"recorded {arg}"


def record_and_fail(arg: str = SECRET) -> None:
    """Record that this job ran, then fail."""
    record(arg)
    boom(arg)
