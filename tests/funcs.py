"""Job functions for in-process RQ workers in the task tests (the marker strings stand for secrets)."""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker

SECRET = "SECRET-PAYLOAD-7f3a"  # noqa: S105 - a planted marker, to catch payload leaks


def ok(arg: str = SECRET) -> str:
    """Succeed, returning a result that contains the payload marker."""
    return f"done {arg}"


def boom(arg: str = SECRET) -> None:
    """Fail with an exception message that contains a password."""
    msg = f"failed with password=hunter2-SECRET for {arg}"
    raise RuntimeError(msg)


def work(client: redis.Redis, *queues: Queue) -> None:
    """Run a real RQ worker (in this process) over the queues until they are empty."""
    SimpleWorker(list(queues), connection=client).work(burst=True)
