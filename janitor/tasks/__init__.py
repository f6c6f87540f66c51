"""The registry of maintenance tasks, by their contract names, in the order a run executes them."""

from __future__ import annotations

from collections.abc import Mapping

from janitor.tasks.base import Task, TaskContext
from janitor.tasks.expire_jobs import ExpireJobs
from janitor.tasks.recover_abandoned import RecoverAbandoned

TASKS: Mapping[str, Task] = {task.name: task for task in (ExpireJobs(), RecoverAbandoned())}
"""Every implemented task, keyed by its contract name."""

__all__ = ["TASKS", "Task", "TaskContext"]
