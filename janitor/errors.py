"""The janitor's exception hierarchy and the exit code each error maps to."""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_NO_SUCH_JOB = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = os.EX_UNAVAILABLE  # 69
EXIT_LEASE_HELD = os.EX_TEMPFAIL  # 75
EXIT_CONFIG = os.EX_CONFIG  # 78


class JanitorError(Exception):
    """Base class of every error the janitor raises on purpose."""

    exit_code: int = EXIT_TASK_FAILED


class ConfigError(JanitorError):
    """Raised when the configuration cannot be loaded: names the source, key and value."""

    exit_code = EXIT_CONFIG


class RedisUnavailable(JanitorError):  # noqa: N818 - the name says what happened, as in os.EX_UNAVAILABLE
    """Raised when Redis cannot be reached; the message carries the redacted URL."""

    exit_code = EXIT_UNAVAILABLE


class LeaseHeld(JanitorError):  # noqa: N818 - a state, not a failure of ours
    """Raised when another janitor holds the leader lease, so this one must not write."""

    exit_code = EXIT_LEASE_HELD


class LeadershipLost(JanitorError):  # noqa: N818 - a state, not a failure of ours
    """Raised before a batch of writes when this janitor no longer holds the lease."""

    exit_code = EXIT_LEASE_HELD


class NoSuchJob(JanitorError):  # noqa: N818 - mirrors rq's NoSuchJobError in spirit
    """Raised by ``explain`` when the job id names no job."""

    exit_code = EXIT_NO_SUCH_JOB
