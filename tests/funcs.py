"""Job functions for in-process RQ workers in the task tests (the marker strings stand for secrets)."""

from __future__ import annotations

SECRET = "SECRET-PAYLOAD-7f3a"


def ok(arg: str = SECRET) -> str:
    """Succeed, returning a result that contains the payload marker."""
    return f"done {arg}"


def boom(arg: str = SECRET) -> None:
    """Fail with an exception message that contains a password."""
    msg = f"failed with password=hunter2-SECRET for {arg}"
    raise RuntimeError(msg)
