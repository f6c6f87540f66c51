"""What the daemon shows its monitoring: the Prometheus metrics and the /healthz /readyz /metrics server.

The registry is our own (never prometheus-client's process-global one), every value is
cheap to read at scrape time (nothing here talks to Redis while rendering /metrics),
and no label value carries a job id or a worker name.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from janitor.audit import get_logger
from janitor.config.values import format_host_port, host_port
from janitor.errors import ConfigError

OUTCOMES = ("ok", "failed", "skipped")
"""``janitor_task_runs_total`` outcomes: ran and succeeded, ran and failed, did not run
(this replica is a follower, Redis is unreachable, the daemon is stopping, or the
previous run of the task was still going)."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
"""Seconds; a task on a quiet Redis takes milliseconds, a first sweep of a year of
failed jobs minutes."""

READY_TIMEOUT_S = 1.0
"""How long /readyz waits for Redis to answer PING (Kubernetes' default probe timeout)."""

log = get_logger(__name__)

# Queue names that embed ids (actinia's per_job "job_queue_resource_id-<uuid4>") would
# make one time series per job; such runs are folded into "*" before they become labels.
_ID_RUNS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuid
    r"|[0-9a-f]{16,}"  # long hex: hashes, uuid4().hex
    r"|[0-9]{6,}",  # timestamps, numeric ids
    re.IGNORECASE,
)


def queue_label(queue: str) -> str:
    """Return the label value for a queue: the name, with embedded ids folded into ``*``.

    >>> queue_label("job_queue_resource_id-7e0c2f8a-5b1d-4c9e-8f3a-2d6b9c1e4a70")
    'job_queue_resource_id-*'
    >>> queue_label("job_queue_0")
    'job_queue_0'
    """
    return _ID_RUNS.sub("*", queue)


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One scheduled run of a task as the metrics and /healthz see it."""

    task: str
    outcome: str
    """One of OUTCOMES."""
    finished_at: float
    """UNIX time when the run ended (or was skipped)."""
    duration_s: float | None = None
    """How long the task ran; None when it did not run."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Audit events written (event -> number)."""
    reason: str | None = None
    """Why the task was skipped or failed."""


class _BacklogCollector(Collector):
    """Serves the last backlog snapshot; the daemon replaces it after each expire_jobs run."""

    def __init__(self) -> None:
        self._snapshot: dict[tuple[str, str], float] = {}

    def replace(self, backlog: Mapping[tuple[str, str], float]) -> None:
        snapshot: dict[tuple[str, str], float] = {}
        for (queue, state), age in backlog.items():
            key = (queue_label(queue), state)
            snapshot[key] = max(age, snapshot.get(key, age))
        # One assignment: a scrape sees the old snapshot or the new one, never a mix.
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "janitor_backlog_oldest_age_seconds",
            "Age of the oldest job that is past its retention but not yet deleted, "
            "per queue and state (how far behind cleaning is); set by the leader "
            "after each expire_jobs run.",
            labels=("queue", "state"),
        )
        for (queue, state), age in sorted(self._snapshot.items()):
            family.add_metric((queue, state), age)
        yield family


class Metrics:
    """The contract's metrics (and the cleaning backlog) in a registry of their own.

    Args:
        tasks: the scheduled tasks; their run counters start at 0 for every outcome, so
            a rate() over them works from the first scrape.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        # No "_created" series: one more series per label set that nobody graphs (this
        # switch is process-wide; the daemon is the only user of metrics in its process).
        disable_created_metrics()  # type: ignore[no-untyped-call] # untyped upstream
        self.registry = CollectorRegistry()
        self._actions = Counter(
            "janitor_actions",
            "Actions applied, by task and action (the audit event name).",
            ("task", "action"),
            registry=self.registry,
        )
        self._runs = Counter(
            "janitor_task_runs",
            "Scheduled task runs, by outcome: ok, failed, or skipped (not the leader, "
            "Redis unreachable, stopping, or still running).",
            ("task", "outcome"),
            registry=self.registry,
        )
        self._duration = Histogram(
            "janitor_task_duration_seconds",
            "How long task runs took.",
            ("task",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._last_success = Gauge(
            "janitor_task_last_success_timestamp_seconds",
            "UNIX time of the task's last successful run on this replica.",
            ("task",),
            registry=self.registry,
        )
        self._interval = Gauge(
            "janitor_task_interval_seconds",
            "How often the task is scheduled ([schedule]; a cron line: the gap between its next two runs).",
            ("task",),
            registry=self.registry,
        )
        self._leader = Gauge(
            "janitor_leader",
            "1 while this replica holds the leader lease, else 0.",
            registry=self.registry,
        )
        self._used_memory = Gauge(
            "janitor_redis_used_memory_bytes",
            "Redis used_memory at the daemon's last memory check (leader only).",
            registry=self.registry,
        )
        self._budget = Gauge(
            "janitor_memory_budget_bytes",
            "[memory] budget in bytes at the last memory check (absent: no budget).",
            registry=self.registry,
        )
        self._over = Gauge(
            "janitor_memory_over_budget",
            "1 while Redis stays over [memory] budget after the janitor's memory pass "
            "(only live and young jobs left), else 0.",
            registry=self.registry,
        )
        self._backlog = _BacklogCollector()
        self.registry.register(self._backlog)
        self._lock = threading.Lock()
        self._last: dict[str, TaskRun] = {}
        self._last_ok: dict[str, TaskRun] = {}
        for task in tasks:
            for outcome in OUTCOMES:
                self._runs.labels(task, outcome)

    def observe(self, run: TaskRun) -> None:
        """Count one task run and, if it ran, its duration and actions."""
        self._runs.labels(run.task, run.outcome).inc()
        if run.duration_s is not None:
            self._duration.labels(run.task).observe(run.duration_s)
        for action, number in run.counts.items():
            self._actions.labels(run.task, action).inc(number)
        with self._lock:
            self._last[run.task] = run
            if run.outcome == "ok":
                self._last_ok[run.task] = run
                self._last_success.labels(run.task).set(run.finished_at)

    def set_intervals(self, intervals: Mapping[str, float]) -> None:
        """Set each task's schedule interval (for staleness alerts: last success older than three of them)."""
        for task, seconds in intervals.items():
            self._interval.labels(task).set(seconds)

    def track_leader(self, is_leader: Callable[[], bool]) -> None:
        """Read ``janitor_leader`` from ``is_leader`` at every scrape."""
        self._leader.set_function(lambda: 1.0 if is_leader() else 0.0)

    def set_memory(self, used: int, budget: int | None) -> None:
        """Set the memory gauges from the daemon's memory check."""
        self._used_memory.set(used)
        if budget is not None:
            self._budget.set(budget)
            self._over.set(1.0 if used > budget else 0.0)

    def set_backlog(self, backlog: Mapping[tuple[str, str], float]) -> None:
        """Replace the backlog gauge with a fresh (queue, state) -> age snapshot."""
        self._backlog.replace(backlog)

    def last_runs(self) -> tuple[dict[str, TaskRun], dict[str, TaskRun]]:
        """Return each task's last run and last successful run (for /healthz)."""
        with self._lock:
            return dict(self._last), dict(self._last_ok)


class ReadinessProbe:
    """Answers "does Redis answer PING?" within READY_TIMEOUT_S, whatever the client's timeouts.

    The PING runs on a daemon thread, so a hung server delays no HTTP answer and no
    shutdown; while one PING is in flight, further probes wait for that one instead of
    piling up more.
    """

    def __init__(
        self, ping: Callable[[], object | None], timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        self._ping = ping
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._inflight: _Ping | None = None

    def check(self) -> str | None:
        """Return None when Redis answered, else the reason it is not ready."""
        with self._lock:
            if self._inflight is None or self._inflight.done.is_set():
                self._inflight = _Ping(self._ping)
            current = self._inflight
        if not current.done.wait(self._timeout_s):
            return f"Redis did not answer PING within {self._timeout_s:g}s"
        return current.error


class _Ping:
    def __init__(self, ping: Callable[[], object | None]) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self._ping = ping
        threading.Thread(target=self._run, name="janitor-readyz", daemon=True).start()

    def _run(self) -> None:
        try:
            if self._ping() is None:
                self.error = "not connected to Redis yet"
        except Exception as err:  # noqa: BLE001 - any failure means "not ready", with its reason
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.done.set()


def make_app(
    registry: CollectorRegistry,
    *,
    health: Callable[[], tuple[bool, dict[str, Any]]],
    ready: Callable[[], str | None],
) -> WSGIApplication:
    """Return the WSGI app: /healthz, /readyz, and prometheus-client's exposition at /metrics.

    Args:
        registry: the registry /metrics renders.
        health: returns (alive, body); /healthz answers 200 when alive, else 503.
        ready: returns None when ready, else the reason; /readyz answers 200 or 503.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return] # untyped upstream
        if path not in ("/healthz", "/readyz"):
            return _json(start_response, "404 Not Found", {"error": "not found"})
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "use GET"})
        if path == "/healthz":
            alive, body = health()
            return _json(start_response, _status(ok=alive), body)
        reason = ready()
        body = {"status": "ready"} if reason is None else {"status": "not ready"}
        if reason is not None:
            body["reason"] = reason
        return _json(start_response, _status(ok=reason is None), body)

    return app


def _status(*, ok: bool) -> str:
    return "200 OK" if ok else "503 Service Unavailable"


def _json(
    start_response: StartResponse, status: str, body: Mapping[str, object]
) -> list[bytes]:
    payload = json.dumps(body, sort_keys=True).encode() + b"\n"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [payload]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # Requests are answered on daemon threads: a client that never finishes its
    # request must not keep the janitor from exiting (and with non-daemon threads
    # ThreadingMixIn keeps a list of them to join, which grows without end).
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Log nothing: a scrape every 15 s is not news (errors still reach stderr)."""


class HttpServer:
    """The daemon's HTTP server on ``[http] listen``, answering on its own daemon threads."""

    def __init__(self, listen: str, app: WSGIApplication) -> None:
        self._listen = listen
        self._app = app
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The address actually bound, ``host:port`` (the port is known even for ``:0``)."""
        if self._httpd is None:
            return self._listen
        host, port = self._httpd.server_address[:2]
        return format_host_port(str(host), int(port))

    def start(self) -> Self:
        """Bind and serve.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, no permission);
                fix ``[http] listen``.
        """
        host, port = host_port(self._listen, "[http] listen")
        server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
        try:
            self._httpd = make_server(
                host, port, self._app, server_class, handler_class=_QuietHandler
            )
        except OSError as err:
            msg = f"[http] listen {self._listen!r}: cannot listen there: {err}"
            raise ConfigError(msg) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="janitor-http",
            daemon=True,
        )
        self._thread.start()
        log.info("http_listening", address=self.address)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; requests in flight finish on their threads."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
