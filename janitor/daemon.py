"""``janitor run`` without ``--once``: every task on its own schedule, on the replica that holds the lease.

Threads, and why each exists:

* the main thread owns the signals and the shutdown sequence; it only waits;
* APScheduler's ``BackgroundScheduler`` thread fires the jobs;
* the ``default`` executor has one thread, so tasks never overlap;
* the ``lease`` executor has one thread, so a slow task never delays a lease renewal;
* the HTTP server answers /healthz, /readyz and /metrics on daemon threads.

A stop (SIGTERM or SIGINT) lets the running task finish its current batch, releases
the lease, stops the HTTP server and exits 0, within ``SHUTDOWN_GRACE_S`` plus
``RELEASE_TIMEOUT_S`` (a watchdog enforces ``STOP_DEADLINE_S``); a second signal exits
at once. A normal stop returns from ``main``, so the interpreter exits as usual (atexit
handlers run); ``os._exit`` is only for the watchdog and the second signal. Every other
thread belongs to a run and ends with it (the engine's lease renewer).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import redis
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from janitor.audit import AuditLog, get_logger
from janitor.config import Schedule, Settings
from janitor.config.settings import MEMORY_CHECK
from janitor.engine import run_once
from janitor.errors import EXIT_OK, JanitorError
from janitor.leadership import Leadership
from janitor.memory import budget_bytes, read_usage
from janitor.metrics import HttpServer, Metrics, ReadinessProbe, TaskRun, make_app
from janitor.report.build import backlog
from janitor.tasks import TASKS

SHUTDOWN_GRACE_S = 5.0
"""How long a stop waits for the running task to finish its batch. With the release
bound below it stays inside ``docker stop``'s 10 s before SIGKILL."""

RELEASE_TIMEOUT_S = 2.0
"""How long a stop waits for Redis to take the lease back (a hung Redis must not hold
the exit up; the lease then lapses by its TTL)."""

STOP_DEADLINE_S = SHUTDOWN_GRACE_S + RELEASE_TIMEOUT_S + 2.0
"""A watchdog ends the process this long after a stop began, whatever is stuck: the
bound a supervisor can rely on."""

TICK_S = 0.1
"""How often the main thread looks for a signal (uvicorn's habit: handlers set flags)."""

JITTER_FRACTION = 0.1
"""Interval schedules fire up to this fraction of their interval late, at random ..."""

MAX_JITTER_S = 30.0
"""... but never more than this: replicas and tasks spread out, schedules stay honest."""

LEASE_JOB = "janitor:lease"
"""The scheduler job id of the lease heartbeat (task jobs use the task names)."""

Backlog = Callable[[redis.Redis, Settings, float], Mapping[tuple[str, str], float]]
"""``janitor.report.build.backlog``: (queue, state) -> age of the oldest overdue job."""

log = get_logger(__name__)


def serve(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit code (0 on a clean stop).

    Raises:
        ConfigError: ``[http] listen`` cannot be bound, or ``[redis]`` cannot work.
    """
    return Daemon(settings, backlog=backlog).run()


def interval_of(schedule: Schedule) -> float:
    """Seconds between two runs of a ``[schedule]`` entry (a cron line: its next two runs)."""
    if schedule.interval_s is not None:
        return float(schedule.interval_s)
    trigger = trigger_for(schedule)
    now = datetime.now(UTC)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    return (second - first).total_seconds() if first and second else 0.0


def trigger_for(schedule: Schedule) -> IntervalTrigger | CronTrigger:
    """Return the APScheduler trigger (UTC) for a ``[schedule]`` entry."""
    if schedule.interval_s is not None:
        jitter = min(schedule.interval_s * JITTER_FRACTION, MAX_JITTER_S)
        return IntervalTrigger(
            seconds=schedule.interval_s, jitter=jitter, timezone="UTC"
        )
    assert schedule.cron is not None, "a schedule is an interval or a cron line"
    return CronTrigger.from_crontab(schedule.cron, timezone="UTC")


class Daemon:
    """The scheduler, the lease, the HTTP endpoints and the stop sequence of one replica.

    Args:
        settings: the effective settings.
        backlog: computes the cleaning backlog after each ``expire_jobs`` run on the
            leader, for ``janitor_backlog_oldest_age_seconds``; None leaves it empty.
    """

    def __init__(self, settings: Settings, *, backlog: Backlog | None = None) -> None:
        self.settings = settings
        self.tasks = tuple(name for name in TASKS if name in settings.schedule)
        self.metrics = Metrics(self.tasks)
        self.metrics.set_intervals(
            {task: interval_of(settings.schedule[task]) for task in self.tasks}
        )
        self._backlog = backlog
        self._stopping = threading.Event()
        self.leadership = Leadership(settings, self._stopping)
        self.metrics.track_leader(lambda: self.leadership.is_leader)
        self._probe = ReadinessProbe(
            lambda: self.leadership.client.ping() if self.leadership.client else None
        )
        # Held while a task runs; a stop waits on it.
        self._task_lock = threading.Lock()
        # Set by the signal handler and by the lease thread; the main loop reads them.
        self._signal: int | None = None
        self._fatal: JanitorError | None = None
        self._audit: AuditLog | None = None
        self._scheduler = self._build_scheduler()
        self._watchdog = threading.Timer(STOP_DEADLINE_S, self._overran)
        self._watchdog.daemon = True

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        app = make_app(self.metrics.registry, health=self._health, ready=self._ready)
        self._audit = AuditLog.open(self.settings.audit.path)
        try:
            with _signals(self._on_signal), HttpServer(self.settings.http.listen, app):
                # The first tick connects and settles the lease before any task fires;
                # a Redis that is down is retried by the lease job, a bad [redis] raises.
                self.leadership.tick()
                client = self.leadership.client
                if client is not None:  # a percent budget needs maxmemory: exit 78 now
                    budget_bytes(self.settings.memory, read_usage(client).maxmemory)
                self._scheduler.start()
                log.info(
                    "daemon_started",
                    tasks={t: self.settings.schedule[t].text for t in self.tasks},
                    lease_key=self.leadership.key,
                    lease_ttl_s=self.leadership.ttl_s,
                )
                while self._signal is None and self._fatal is None:
                    time.sleep(TICK_S)
                finished = self._shutdown()
        finally:
            self._audit.close()
        if finished:
            self._watchdog.cancel()
        # Otherwise a task is stuck past the grace period: the interpreter waits for its
        # thread at exit, and the watchdog ends the process at STOP_DEADLINE_S (the
        # task's writes are fenced by the lease, which lapses by its TTL).
        if self._fatal is not None:
            raise self._fatal
        return EXIT_OK

    def _build_scheduler(self) -> BackgroundScheduler:
        # BackgroundScheduler, not BlockingScheduler: the main thread stays free for
        # the stop sequence (a bounded wait, then a forced exit on a second signal).
        scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={
                "default": ThreadPoolExecutor(1),
                "lease": ThreadPoolExecutor(1),
            },
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                # A task queued behind a long one runs late rather than never: no
                # misfire window (coalescing folds a backlog of runs into one).
                "misfire_grace_time": None,
            },
        )
        scheduler.add_job(
            self._lease_job,
            IntervalTrigger(seconds=self.leadership.renew_s, timezone="UTC"),
            id=LEASE_JOB,
            name="lease",
            executor="lease",
        )
        for task in self.tasks:
            scheduler.add_job(
                self._task_job,
                trigger_for(self.settings.schedule[task]),
                args=(task,),
                id=task,
                name=task,
            )
        scheduler.add_job(
            self._memory_job,
            trigger_for(self.settings.schedule[MEMORY_CHECK]),
            id=MEMORY_CHECK,
            name=MEMORY_CHECK,
        )
        scheduler.add_listener(
            self._on_job_event,
            EVENT_JOB_EXECUTED
            | EVENT_JOB_ERROR
            | EVENT_JOB_MAX_INSTANCES
            | EVENT_JOB_MISSED,
        )
        return scheduler

    def _lease_job(self) -> None:
        try:
            delay = self.leadership.tick()
        except JanitorError as err:  # a ConfigError found on a later connection attempt
            log.error("daemon_failed", error=str(err))  # noqa: TRY400 - the message says it all
            self._fatal = err
            return
        if self._stopping.is_set():
            return
        # The next tick counts from the end of this one (a slow Redis call does not
        # make ticks pile up), or comes earlier to meet a lapsing lease, or later to
        # back off from an unreachable Redis.
        pause = self.leadership.renew_s if delay is None else delay
        when = datetime.now(UTC) + timedelta(seconds=pause)
        with contextlib.suppress(JobLookupError):
            self._scheduler.modify_job(LEASE_JOB, next_run_time=when)

    def _memory_job(self) -> None:
        """``[schedule] memory``: read ``INFO memory``; over ``[memory] budget``, run ``expire_jobs`` now.

        Cheap under the budget (one INFO). Only the leader reads and acts; the run it
        starts is recorded as any run of ``expire_jobs``.
        """
        client = self.leadership.client
        if client is None or not self.leadership.is_leader or self._stopping.is_set():
            return
        try:
            usage = read_usage(client)
            budget = budget_bytes(self.settings.memory, usage.maxmemory)
        except JanitorError as err:  # a percent budget on a server without maxmemory
            log.error("daemon_failed", error=str(err))  # noqa: TRY400 - the message says it all
            self._fatal = err
            return
        except redis.RedisError as err:
            log.warning("memory_check_failed", error=f"{type(err).__name__}: {err}")
            return
        self.metrics.set_memory(usage.used, budget)
        if budget is not None and usage.used > budget and "expire_jobs" in self.tasks:
            log.info("memory_over_budget", used_memory=usage.used, budget=budget)
            self.metrics.observe(self._task_job("expire_jobs"))
            with contextlib.suppress(redis.RedisError):  # the next check reads it again
                self.metrics.set_memory(read_usage(client).used, budget)

    def _task_job(self, task: str) -> TaskRun:
        with self._task_lock:
            client, lease = self.leadership.client, self.leadership.lease
            if self._stopping.is_set():
                return _skipped(task, "the janitor is stopping")
            if client is None or lease is None:
                return _skipped(task, "not connected to Redis")
            if not self.leadership.is_leader:
                self.metrics.set_backlog({})  # the leader's gauge is the one to trust
                return _skipped(task, "another janitor holds the lease")
            assert self._audit is not None, "opened before the scheduler starts"
            report = run_once(
                client,
                self.settings,
                self._audit,
                dry_run=False,
                lease=lease,
                only=(task,),
            )
            done = report.tasks[0]
            if report.lease_lost and not self._stopping.is_set():
                self.leadership.lose(f"{task} found the lease gone before a batch")
            if done.error is None and task == "expire_jobs":
                self._refresh_backlog(client)
            return TaskRun(
                task=task,
                outcome="ok" if done.error is None else "failed",
                finished_at=time.time(),
                duration_s=done.duration_s,
                counts=done.counts,
                reason=done.error,
            )

    def _refresh_backlog(self, client: redis.Redis) -> None:
        if self._backlog is None:
            return
        try:
            self.metrics.set_backlog(self._backlog(client, self.settings, time.time()))
        except Exception as err:  # noqa: BLE001 - a gauge is not worth a failed task
            log.warning("backlog_failed", error=f"{type(err).__name__}: {err}")

    def _on_job_event(self, event: Any) -> None:
        if event.job_id not in self.tasks:
            return
        if event.code == EVENT_JOB_EXECUTED:
            run: TaskRun = event.retval
        elif event.code == EVENT_JOB_ERROR:  # a bug in the job wrapper: count it, go on
            run = TaskRun(
                event.job_id, "failed", time.time(), reason=repr(event.exception)
            )
        else:  # the previous run of the same task is still running or queued
            run = TaskRun(event.job_id, "skipped", time.time(), reason="still running")
        self.metrics.observe(run)

    def _health(self) -> tuple[bool, dict[str, Any]]:
        alive = bool(self._scheduler.running) and not self._stopping.is_set()
        now = time.time()
        last, last_ok = self.metrics.last_runs()
        tasks: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            job = self._scheduler.get_job(task)
            ok = last_ok.get(task)
            tasks[task] = {
                "schedule": self.settings.schedule[task].text,
                "last_success": _iso(ok.finished_at) if ok else None,
                "staleness_s": round(now - ok.finished_at, 3) if ok else None,
                "last_outcome": last[task].outcome if task in last else None,
                "next_run": job.next_run_time.isoformat()
                if job and job.next_run_time
                else None,
            }
        return alive, {
            "status": "ok" if alive else "stopping",
            "leader": self.leadership.is_leader,
            "redis": "connected" if self.leadership.connected else "unreachable",
            "tasks": tasks,
        }

    def _ready(self) -> str | None:
        if self._stopping.is_set():
            return "the janitor is stopping"
        return self._probe.check()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: only set a flag (no logging,
        # whose locks the main thread may hold), or leave at once on a second signal.
        if self._signal is None:
            self._signal = signum
            return
        _force_exit(signum)

    def _overran(self) -> None:
        """Leave when a stop overran STOP_DEADLINE_S, with the exit code it was heading for."""
        line = {
            "event": "shutdown_overran",
            "level": "error",
            "deadline_s": STOP_DEADLINE_S,
            "timestamp": _iso(time.time()),
        }
        # Raw, as in _force_exit: whatever is stuck may hold the logger's lock.
        os.write(2, json.dumps(line).encode() + b"\n")
        os._exit(EXIT_OK if self._fatal is None else self._fatal.exit_code)

    def _shutdown(self) -> bool:
        """Stop scheduling, let the running task end its batch, release the lease."""
        began = time.monotonic()
        reason = (
            signal.Signals(self._signal).name
            if self._signal is not None
            else "fatal error"
        )
        log.info("daemon_stopping", reason=reason, grace_s=SHUTDOWN_GRACE_S)
        self._watchdog.start()
        self._stopping.set()
        self._scheduler.shutdown(wait=False)
        finished = self._task_lock.acquire(timeout=SHUTDOWN_GRACE_S)
        if finished:
            self._task_lock.release()
        else:
            log.warning("shutdown_timeout", grace_s=SHUTDOWN_GRACE_S)
        releaser = threading.Thread(
            target=self.leadership.release, name="janitor-release", daemon=True
        )
        releaser.start()
        releaser.join(RELEASE_TIMEOUT_S)
        if releaser.is_alive():
            log.warning("lease_not_released", reason="Redis did not answer in time")
        log.info("daemon_stopped", took_s=round(time.monotonic() - began, 3))
        return finished


def _skipped(task: str, reason: str) -> TaskRun:
    return TaskRun(task, "skipped", time.time(), reason=reason)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


_HANDLED_SIGNALS = (
    signal.SIGINT,  # Ctrl+C
    signal.SIGTERM,  # kill, docker stop, Kubernetes, systemd
)


@contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM, and restore the previous ones on exit."""
    previous = {sig: signal.signal(sig, handler) for sig in _HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _force_exit(signum: int) -> None:
    """Leave at once (second signal): one raw line on stderr, no cleanup, 128 + signal."""
    line = {
        "event": "shutdown_forced",
        "level": "warning",
        "signal": signal.Signals(signum).name,
        "timestamp": _iso(time.time()),
    }
    # os.write, not the logger: the interrupted main thread may hold the logger's lock.
    os.write(2, json.dumps(line).encode() + b"\n")
    os._exit(128 + signum)
