"""Job functions that the RQ workers started by ``produce.py`` run.

Workers import this file as the top-level module ``jobs`` (``produce.py`` puts this folder on their
``PYTHONPATH``), under any RQ version, so it imports nothing from rq, janitor or tests.
Every job receives the secret marker as its first argument; results echo it and failures carry the secret
password, so tests can check that neither ever reaches the janitor's output.
"""

from __future__ import annotations

import time

#: The exception message of every failing job contains this.
SECRET_ERROR = "password=hunter2-SECRET"  # noqa: S105 - a fake secret, planted to catch leaks


def ok(marker: str, *args: object) -> str:
    """Succeed at once, returning a result that contains the marker."""
    return f"ok {marker} {len(args)}"


def boom(marker: str, *args: object) -> None:
    """Fail at once with a message that contains a secret."""
    msg = f"connecting with {SECRET_ERROR} failed for {marker} ({len(args)} extra args)"
    raise RuntimeError(msg)


def sleep_for(marker: str, seconds: float) -> str:
    """Sleep for ``seconds`` (in short steps, so a stop or kill takes effect at once), then succeed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return f"slept {seconds} s {marker}"
