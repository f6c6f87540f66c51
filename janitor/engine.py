"""The one place that writes: runs tasks' plans in batches, applies them, and audits each action."""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

import redis

from janitor.actions import Action, Skip, Write
from janitor.audit import AuditLog, EventRows, get_logger
from janitor.config import Settings
from janitor.errors import LeadershipLost
from janitor.keyspace import Keyspace
from janitor.leader import Fence, Lease
from janitor.policy import QueueFilter
from janitor.tasks import TASKS, TaskContext
from janitor.tasks.base import (
    DECISIONS_IN_FLIGHT,
    MAX_BATCH,
    Decided,
    DecidingTask,
    Decision,
    Task,
    Throttle,
    pace_for,
)

BATCH_SIZE = MAX_BATCH
"""The most planned actions (or judged entries) the engine applies per atomic script call.

The actual size adapts to the measured time of each call (see ``tasks.base.Pace``)."""

log = get_logger(__name__)


@dataclass(frozen=True)
class TaskReport:
    """What one task did in a run."""

    task: str
    counts: dict[str, int]
    skipped: int
    duration_s: float
    error: str | None = None
    lease_lost: bool = False
    """The task stopped because the lease was lost (or the daemon is stopping): the run ends."""


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
    ``dry_run: true``, but applies nothing. A real run confirms ``lease`` before its
    first write and renews it as it goes (before every batch of planned actions, in the
    background while decision pages are in flight), and its write scripts check the
    lease token atomically; when the lease is lost nothing more is written.
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
        pace=pace_for(settings.limits.max_ops_per_s),
    )
    for name in selected:
        with audit.bound(run_id=run_id, task=name, dry_run=dry_run):
            report = _run_task(
                name, context, audit, dry_run=dry_run, lease=lease, now=now
            )
        reports.append(report)
        if report.lease_lost:
            return RunReport(run_id, dry_run, tuple(reports), lease_lost=True)
    return RunReport(run_id, dry_run, tuple(reports))


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
    runner = _Runner(context, audit, dry_run=dry_run, lease=lease, now=now)
    error: str | None = None
    lease_lost = False
    try:
        runner.run(_plan(TASKS[name], context))
    except LeadershipLost as err:
        error, lease_lost = f"LeadershipLost: {err}", True
        log.error("leadership_lost", task=name, reason=str(err))  # noqa: TRY400 - an expected state, no traceback
        audit.emit("task_failed", error=error)
    except (
        Exception
    ) as err:  # one broken task must not stop the others (logged, audited)
        error = f"{type(err).__name__}: {err}"
        log.exception("task_crashed", task=name)
        audit.emit("task_failed", error=error)
    duration = time.monotonic() - started
    counts = dict(runner.counts)
    audit.emit("run_finished", counts=counts, duration_s=round(duration, 3))
    return TaskReport(name, counts, runner.skipped, duration, error, lease_lost)


def _plan(task: Task, context: TaskContext) -> Iterable[Action | Skip | Decision]:
    """The task's faster plan where it has one (see ``DecidingTask``), else its plan."""
    if isinstance(task, DecidingTask):
        return task.decide(context)
    return task.plan(context)


class _Runner:
    """Applies one task's plan: actions in batches, decisions pipelined, audited as they land.

    The batch size follows ``context.pace``: each script call's measured time sets the
    size of the next, so no single call blocks Redis for long. Up to
    ``DECISIONS_IN_FLIGHT`` decision pages are sent ahead, so Redis runs one while the
    janitor audits the one before and prepares the next; pages are small enough that
    at most ``BATCH_SIZE`` jobs are ever deleted without their audit lines yet written.
    The lease is renewed in the background meanwhile, by a thread of the run's own that
    ends with it; the write scripts check the lease anyway.
    """

    def __init__(
        self,
        context: TaskContext,
        audit: AuditLog,
        *,
        dry_run: bool,
        lease: Lease | None,
        now: Callable[[], float],
    ) -> None:
        self.context = context
        self.audit = audit
        self.dry_run = dry_run
        self.lease = lease if not dry_run else None
        self.now = now
        self.pace = context.pace
        self.pace.restart()
        self.throttle = Throttle(context.settings.limits.max_ops_per_s)
        self.counts: Counter[str] = Counter()
        self.skipped = 0
        self.pending: list[Action] = []
        self.inflight: deque[tuple[int, float, Callable[[], Decided]]] = deque()
        self.answered = 0.0
        """When the last decision's answer arrived: the next one's work starts there."""
        self.confirmed = False
        self.renewal: Future[None] | None = None
        self.renewer: ThreadPoolExecutor | None = None
        """The run's own renewal thread, made on first use and shut down with the run."""

    def run(self, items: Iterable[Action | Skip | Decision]) -> None:
        """Apply every item of a plan.

        Pages in flight always get their answers and audit lines. When the plan itself
        failed, that failure is what the task reports: an error while draining the
        pages is added to it as a note, not raised in its place.
        """
        try:
            try:
                for item in items:
                    if isinstance(item, Action):
                        self._add(item)
                    elif isinstance(item, Skip):
                        self._skip(item)
                    else:
                        self._send(item)
            except BaseException as failure:
                try:
                    self._drain()
                except Exception as err:  # noqa: BLE001 - the plan's failure is the one to raise
                    failure.add_note(f"while reading the pages in flight: {err!r}")
                raise
            self._drain()
        finally:
            if self.renewer is not None:
                self.renewer.shutdown(wait=True)  # a lost lease is the next task's news
        self._flush()

    def _add(self, action: Action) -> None:
        self.pending.append(action)
        if len(self.pending) >= self.pace.size:
            self._flush()

    def _skip(self, skip: Skip) -> None:
        self.skipped += 1
        log.warning("job_skipped", task=skip.task, reason=skip.reason, **skip.fields)

    def _flush(self) -> None:
        self._drain()
        if not self.pending:
            return
        if self.renewal is not None:  # settle it: _apply confirms the lease itself
            renewal, self.renewal = self.renewal, None
            renewal.result()
        batch, self.pending = self.pending, []
        self.throttle.wait()
        self.throttle.count(len(batch))
        if self.dry_run:
            done = [a for a in batch if a.event is not None]
        else:
            started = time.perf_counter()
            done = _apply(self.context.client, batch, self.lease, self.now())
            self.pace.record(len(batch), time.perf_counter() - started)
        self._audit(done)

    def _send(self, decision: Decision) -> None:
        while len(self.inflight) >= DECISIONS_IN_FLIGHT:
            self._finish_oldest()
        if self.pending:
            self._flush()
        fence = self._fence()
        self.throttle.wait()
        receive = decision.send(self.context.client, fence, dry_run=self.dry_run)
        self.throttle.count(len(decision))
        self.inflight.append((len(decision), time.perf_counter(), receive))

    def _fence(self) -> Fence | None:
        """The lease's fence; renewed before the first page, then in the background.

        A renewal that failed (lease lost, or the daemon stopping) stops the task here,
        before the next page; a page sent meanwhile carries the token, which its
        script checks, so nothing is ever written without the lease.
        """
        if self.lease is None:
            return None
        if not self.confirmed:
            self.lease.confirm()
            self.confirmed = True
        elif self.renewal is None or self.renewal.done():
            if self.renewal is not None:
                self.renewal.result()  # raises LeadershipLost
            if self.renewer is None:
                self.renewer = ThreadPoolExecutor(1, thread_name_prefix="janitor-lease")
            self.renewal = self.renewer.submit(self.lease.confirm)
        return self.lease.fence

    def _finish_oldest(self) -> None:
        size, sent, receive = self.inflight.popleft()
        decided = receive()
        answered = time.perf_counter()
        self.pace.record(size, answered - max(sent, self.answered))
        self.answered = answered
        self._audit_events(decided.events)
        for item in decided.rest:
            if isinstance(item, Action):
                self.pending.append(item)
            else:
                self._skip(item)

    def _drain(self) -> None:
        """Read every page in flight: each gets its audit lines; the first error wins."""
        error: Exception | None = None
        while self.inflight:
            try:
                self._finish_oldest()
            except Exception as err:  # noqa: BLE001 - the other pages are still read, then it is raised
                error = error or err
        if error is not None:
            raise error

    def _audit(self, done: Sequence[Action]) -> None:
        self._audit_events([(a.event, a.fields) for a in done if a.event is not None])

    def _audit_events(self, events: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        self.audit.emit_many(events)
        if isinstance(events, EventRows):  # no dictionary per event just to count them
            if events.rows:
                self.counts[events.event] += len(events.rows)
        else:
            self.counts.update(event for event, _ in events)


def _apply(
    client: redis.Redis, actions: Sequence[Action], lease: Lease | None, now: float
) -> list[Action]:
    """Apply a batch: confirm the lease, then one script call per run of one kind of write.

    Writes keep the plan's order: consecutive writes of one kind share a call
    (``groupby``, never a sort), so a task can rely on the order it planned.
    ``clean_registries`` does: it takes a queue's marker, cleans, then gives the marker
    back, three kinds of write that must reach Redis in that order.
    """
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
