"""The metrics registry, the readiness probe and the HTTP app, in-process (the daemon tests run them for real)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.types import WSGIApplication
from wsgiref.util import setup_testing_defaults

import pytest

from janitor.errors import ConfigError
from janitor.metrics import (
    OUTCOMES,
    HttpServer,
    Metrics,
    ReadinessProbe,
    TaskRun,
    make_app,
    queue_label,
)
from tests.servers import free_port


def call(app: WSGIApplication, path: str, method: str = "GET") -> tuple[str, bytes]:
    """Call a WSGI app once; return its status line and body."""
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "wsgi.input": io.BytesIO(),
    }
    setup_testing_defaults(environ)
    seen: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None, /
    ) -> Callable[[bytes], object]:
        seen.append(status)
        return lambda _: None

    body = b"".join(app(environ, start_response))
    return seen[0], body


class TestMetrics:
    """The contract's metrics and the backlog gauge."""

    def test_runs_start_at_zero_for_every_outcome(self) -> None:
        """Every task has a run counter at 0 per outcome before anything ran."""
        metrics = Metrics(["expire_jobs"])
        for outcome in OUTCOMES:
            value = metrics.registry.get_sample_value(
                "janitor_task_runs_total", {"task": "expire_jobs", "outcome": outcome}
            )
            assert value == 0

    def test_observe_counts_runs_actions_duration_and_success(self) -> None:
        """An ok run counts its outcome, actions, duration and last success; a skip only its outcome."""
        metrics = Metrics(["expire_jobs"])
        metrics.observe(TaskRun("expire_jobs", "ok", 1000.0, 0.5, {"job_deleted": 3}))
        metrics.observe(TaskRun("expire_jobs", "skipped", 1001.0, reason="follower"))
        sample = metrics.registry.get_sample_value
        assert (
            sample(
                "janitor_actions_total",
                {"task": "expire_jobs", "action": "job_deleted"},
            )
            == 3
        )
        assert (
            sample("janitor_task_runs_total", {"task": "expire_jobs", "outcome": "ok"})
            == 1
        )
        assert (
            sample(
                "janitor_task_runs_total", {"task": "expire_jobs", "outcome": "skipped"}
            )
            == 1
        )
        assert (
            sample("janitor_task_duration_seconds_count", {"task": "expire_jobs"}) == 1
        )
        assert (
            sample(
                "janitor_task_last_success_timestamp_seconds", {"task": "expire_jobs"}
            )
            == 1000.0
        )
        last, last_ok = metrics.last_runs()
        assert last["expire_jobs"].outcome == "skipped"
        assert last_ok["expire_jobs"].finished_at == 1000.0

    def test_leader_gauge_is_read_at_scrape_time(self) -> None:
        """janitor_leader follows the callable it tracks, without any update call."""
        metrics = Metrics([])
        holder = {"leader": False}
        metrics.track_leader(lambda: holder["leader"])
        assert metrics.registry.get_sample_value("janitor_leader") == 0
        holder["leader"] = True
        assert metrics.registry.get_sample_value("janitor_leader") == 1

    def test_backlog_folds_ids_out_of_queue_labels(self) -> None:
        """Per-job queues become one series (the oldest age wins); other queues keep their names."""
        metrics = Metrics([])
        metrics.set_backlog(
            {
                (
                    "job_queue_resource_id-7e0c2f8a-5b1d-4c9e-8f3a-2d6b9c1e4a70",
                    "failed",
                ): 50.0,
                (
                    "job_queue_resource_id-11111111-2222-4333-8444-555555555555",
                    "failed",
                ): 80.0,
                ("job_queue_0", "finished"): 7.0,
            }
        )
        sample = metrics.registry.get_sample_value
        name = "janitor_backlog_oldest_age_seconds"
        assert (
            sample(name, {"queue": "job_queue_resource_id-*", "state": "failed"})
            == 80.0
        )
        assert sample(name, {"queue": "job_queue_0", "state": "finished"}) == 7.0
        metrics.set_backlog({})
        assert sample(name, {"queue": "job_queue_0", "state": "finished"}) is None

    @pytest.mark.parametrize(
        ("queue", "label"),
        [
            ("default", "default"),
            ("job_queue_0", "job_queue_0"),
            ("job_queue_lina", "job_queue_lina"),
            (
                "job_queue_resource_id-7E0C2F8A-5B1D-4C9E-8F3A-2D6B9C1E4A70",
                "job_queue_resource_id-*",
            ),
            ("batch-0123456789abcdef0123", "batch-*"),
            ("import-20261129", "import-*"),
        ],
    )
    def test_queue_label(self, queue: str, label: str) -> None:
        """Uuids, long hex runs and long digit runs are folded; short names stay as they are."""
        assert queue_label(queue) == label


class TestReadinessProbe:
    """/readyz's PING with a bound on the wait."""

    def test_ready_when_ping_answers(self) -> None:
        """A PING that returns makes the probe ready."""
        assert ReadinessProbe(lambda: True).check() is None

    def test_not_connected_yet(self) -> None:
        """No client yet (the ping callable returns None) is not ready."""
        assert ReadinessProbe(lambda: None).check() == "not connected to Redis yet"

    def test_error_is_the_reason(self) -> None:
        """A PING that raises gives its exception as the reason."""

        def ping() -> bool:
            msg = "Connection refused"
            raise ConnectionError(msg)

        assert ReadinessProbe(ping).check() == "ConnectionError: Connection refused"

    def test_a_hung_ping_answers_within_the_timeout_and_is_not_repeated(self) -> None:
        """A PING that hangs fails the probe within its timeout, and later probes share the one in flight."""
        release = threading.Event()
        calls: list[int] = []

        def ping() -> bool:
            calls.append(1)
            release.wait(5)
            return True

        probe = ReadinessProbe(ping, timeout_s=0.1)
        started = time.monotonic()
        assert "did not answer" in (probe.check() or "")
        assert "did not answer" in (probe.check() or "")
        assert time.monotonic() - started < 1
        assert len(calls) == 1
        release.set()


class TestHttpApp:
    """The WSGI app behind [http] listen."""

    def app(self, *, alive: bool = True, ready: str | None = None) -> WSGIApplication:
        """An app over a fresh registry with fixed health and readiness answers."""
        metrics = Metrics(["expire_jobs"])
        return make_app(
            metrics.registry,
            health=lambda: (alive, {"status": "ok" if alive else "stopping"}),
            ready=lambda: ready,
        )

    def test_healthz(self) -> None:
        """/healthz is 200 with the health body while alive, 503 when not."""
        status, body = call(self.app(), "/healthz")
        assert status == "200 OK"
        assert json.loads(body) == {"status": "ok"}
        assert call(self.app(alive=False), "/healthz")[0].startswith("503")

    def test_readyz(self) -> None:
        """/readyz is 200 when ready and 503 with the reason when not."""
        assert call(self.app(), "/readyz")[0] == "200 OK"
        status, body = call(self.app(ready="Redis is down"), "/readyz")
        assert status.startswith("503")
        assert json.loads(body)["reason"] == "Redis is down"

    def test_metrics_and_unknown_paths(self) -> None:
        """/metrics renders the registry, other paths are 404 and writes are 405."""
        status, body = call(self.app(), "/metrics")
        assert status == "200 OK"
        assert b"janitor_task_runs_total" in body
        assert call(self.app(), "/nope")[0].startswith("404")
        assert call(self.app(), "/healthz", method="POST")[0].startswith("405")


class TestHttpServer:
    """Binding [http] listen."""

    def test_an_address_in_use_is_a_config_error(self) -> None:
        """A second server on a bound port raises ConfigError naming [http] listen."""
        listen = f"127.0.0.1:{free_port()}"
        app = TestHttpApp().app()
        with HttpServer(listen, app) as first:
            assert first.address == listen
            with pytest.raises(ConfigError, match=r"\[http\] listen"):
                HttpServer(listen, app).start()

    def test_port_zero_reports_the_bound_port(self) -> None:
        """Listening on port 0 binds a free port and reports it."""
        with HttpServer("127.0.0.1:0", TestHttpApp().app()) as server:
            assert not server.address.endswith(":0")
