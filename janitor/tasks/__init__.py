"""The registry of maintenance tasks, by their contract names, in the order a run executes them."""

from __future__ import annotations

from collections.abc import Mapping

from janitor.tasks.base import Task, TaskContext
from janitor.tasks.expire_jobs import ExpireJobs

TASKS: Mapping[str, Task] = {task.name: task for task in (ExpireJobs(),)}
"""Every implemented task, keyed by its contract name."""

__all__ = ["TASKS", "Task", "TaskContext"]
