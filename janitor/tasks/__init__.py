"""The registry of maintenance tasks, by their contract names, in the order a run executes them."""

from __future__ import annotations

from collections.abc import Mapping

from janitor.tasks.base import Task, TaskContext
from janitor.tasks.clean_registries import CleanRegistries
from janitor.tasks.expire_jobs import ExpireJobs
from janitor.tasks.prune_queues import PruneQueues
from janitor.tasks.prune_workers import PruneWorkers
from janitor.tasks.recover_abandoned import RecoverAbandoned
from janitor.tasks.sweep_orphans import SweepOrphans

TASKS: Mapping[str, Task] = {
    task.name: task
    for task in (
        ExpireJobs(),
        PruneWorkers(),
        RecoverAbandoned(),
        CleanRegistries(),
        PruneQueues(),
        SweepOrphans(),
    )
}
"""Every implemented task, keyed by its contract name."""

__all__ = ["TASKS", "Task", "TaskContext"]
