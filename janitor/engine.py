"""The one place that writes: runs tasks' plans in batches, applies them, and audits each action."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice

import redis

from janitor.actions import Action, Fence, Skip, Write
from janitor.audit import AuditLog, get_logger
from janitor.config import Settings
from janitor.errors import LeadershipLost
from janitor.keyspace import Keyspace
from janitor.leader import Lease
from janitor.policy import QueueFilter
from janitor.tasks import TASKS, TaskContext

BATCH_SIZE = 500
"""How many planned actions the engine applies per atomic script call."""

log = get_logger(__name__)


@dataclass(frozen=True)
class TaskReport:
    """What one task did in a run."""

    task: str
    counts: dict[str, int]
    skipped: int
    duration_s: float
    error: str | None = None


@dataclass(frozen=True)
class RunReport:
    """What a run did: per task, and whether any task failed or the lease was lost."""

    run_id: str
    dry_run: bool
    tasks: tuple[TaskReport, ...] = field(default_factory=tuple)
    lease_lost: bool = False

    @property
    def failed_tasks(self) -> tuple[str, ...]:
        """The names of the tasks that raised."""
        return tuple(t.task for t in self.tasks if t.error is not None)

    @property
    def counts(self) -> dict[str, int]:
        """Audit events written, summed over all tasks (event -> number)."""
        total: Counter[str] = Counter()
        for task in self.tasks:
            total.update(task.counts)
        return dict(total)


def _batched(
    items: Iterable[Action | Skip], size: int
) -> Iterator[list[Action | Skip]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def run_once(  # noqa: PLR0913 - every flag is keyword-only and named for what it does
    client: redis.Redis,
    settings: Settings,
    audit: AuditLog,
    *,
    dry_run: bool,
    lease: Lease | None = None,
    only: Sequence[str] = (),
    queues: Sequence[str] = (),
    now: Callable[[], float] = time.time,
) -> RunReport:
    """Run the selected tasks once, in contract order; one failing task does not stop the rest.

    A dry run plans exactly as a real one and writes the same audit events with
    ``dry_run: true``, but applies nothing. A real run confirms ``lease`` before every
    batch, and its write scripts check the lease token atomically; when the lease is
    lost the run stops before its next write.
    """
    run_id = uuid.uuid4().hex
    selected = [name for name in TASKS if not only or name in only]
    reports: list[TaskReport] = []
    context = TaskContext(
        client=client,
        keys=Keyspace(settings.rq.key_prefix),
        settings=settings,
        now=now(),
        allows_queue=QueueFilter.build(settings.rq, queues),
        dry_run=dry_run,
    )
    for name in selected:
        with audit.bound(run_id=run_id, task=name, dry_run=dry_run):
            report = _run_task(
                name, context, audit, dry_run=dry_run, lease=lease, now=now
            )
        reports.append(report)
        if report.error == _LEASE_LOST:
            return RunReport(run_id, dry_run, tuple(reports), lease_lost=True)
    return RunReport(run_id, dry_run, tuple(reports))


_LEASE_LOST = "LeadershipLost"


def _run_task(  # noqa: PLR0913 - keyword-only flags
    name: str,
    context: TaskContext,
    audit: AuditLog,
    *,
    dry_run: bool,
    lease: Lease | None,
    now: Callable[[], float],
) -> TaskReport:
    started = time.monotonic()
    counts: Counter[str] = Counter()
    skipped = 0
    error: str | None = None
    try:
        for batch in _batched(TASKS[name].plan(context), BATCH_SIZE):
            actions = [item for item in batch if isinstance(item, Action)]
            for skip in (item for item in batch if isinstance(item, Skip)):
                skipped += 1
                log.warning(
                    "job_skipped", task=skip.task, reason=skip.reason, **skip.fields
                )
            if dry_run:
                done = [a for a in actions if a.event is not None]
            else:
                done = _apply(context.client, actions, lease, now())
            for action in done:
                if action.event is not None:
                    audit.emit(action.event, **action.fields)
                    counts[action.event] += 1
    except LeadershipLost as err:
        error = _LEASE_LOST
        log.error("leadership_lost", task=name, reason=str(err))  # noqa: TRY400 - an expected state, no traceback
        audit.emit("task_failed", error=f"LeadershipLost: {err}")
    except (
        Exception
    ) as err:  # one broken task must not stop the others (logged, audited)
        error = f"{type(err).__name__}: {err}"
        log.exception("task_crashed", task=name)
        audit.emit("task_failed", error=error)
    duration = time.monotonic() - started
    audit.emit("run_finished", counts=dict(counts), duration_s=round(duration, 3))
    return TaskReport(name, dict(counts), skipped, duration, error)


def _apply(
    client: redis.Redis, actions: Sequence[Action], lease: Lease | None, now: float
) -> list[Action]:
    """Apply a batch: confirm the lease, then one script call per kind of write."""
    fence: Fence | None = None
    if lease is not None:
        lease.confirm()
        fence = lease.fence
    done: list[Action] = [a for a in actions if a.write is None]
    writes = [a for a in actions if a.write is not None]
    for write_type, group in groupby(writes, key=lambda a: type(a.write)):
        members = list(group)
        kind: type[Write] = write_type
        applied = kind.apply_batch(
            client, [a.write for a in members if a.write], fence, now
        )
        done += [action for action, ok in zip(members, applied, strict=True) if ok]
    return done
