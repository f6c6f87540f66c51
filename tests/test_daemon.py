"""The daemon as users run it: real ``janitor run`` processes on a real server, probed over HTTP and signalled."""

from __future__ import annotations

import configparser
import fnmatch
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from janitor.config import Settings, load_settings
from janitor.daemon import STOP_DEADLINE_S
from janitor.keyspace import Keyspace
from tests import funcs
from tests.bulk import fill_finished
from tests.cli import clean_env, daemon, janitor
from tests.funcs import work
from tests.servers import RedisServer, free_port

KEYS = Keyspace()
TTL_S = 3
"""The lease TTL of the test daemons: a takeover must happen within it."""
SLACK_S = 2.0
"""What a loaded 2-core machine may add to a timing bound."""
LEASE_KEY = "janitor:leader"
LAUNCH = (
    "import atexit, pathlib, runpy, sys;"
    "marker = pathlib.Path(sys.argv.pop(1));"
    "atexit.register(marker.write_text, 'atexit ran');"
    "runpy.run_module('janitor', run_name='__main__', alter_sys=True)"
)
"""``python -m janitor`` with an atexit hook that writes a marker file: it runs only
when the interpreter exits normally, never through ``os._exit``."""

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.05)


class Replica:
    """One ``python -m janitor run -c FILE`` process with its own config, port and logs."""

    _serial = itertools.count()

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self._port: int | None = None
        name = f"janitor-{next(Replica._serial)}"
        self.config = workdir / f"{name}.toml"
        self.audit = workdir / f"{name}.audit.jsonl"
        self.stderr = workdir / f"{name}.stderr.log"
        self.atexit_marker = workdir / f"{name}.atexit"
        self.config.write_text(
            f"""
[redis]
url = "{redis_url}"

[retention]
finished = "0s"

[schedule]
expire_jobs = "every 1s"
recover_abandoned = "every 1s"

[http]
listen = "127.0.0.1:0"

[daemon]
lease_ttl = "{TTL_S}s"

[audit]
path = "{self.audit}"
"""
        )
        env = clean_env()
        env["PYTHONFAULTHANDLER"] = (
            "1"  # SIGABRT dumps every thread's stack (see stop())
        )
        with self.stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCH,
                    str(self.atexit_marker),
                    "run",
                    "-c",
                    str(self.config),
                    "--log-format",
                    "json",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def port(self) -> int:
        """The HTTP port the daemon bound (port 0 in the config: no race for a free port)."""
        if self._port is None:

            def announced() -> int:
                for event in self.events():
                    if event.get("event") == "http_listening":
                        return int(str(event["address"]).rpartition(":")[2])
                assert self.process.poll() is None, self.log_text()
                return 0

            self._port = wait_for(announced, 20, f"{self} to listen")
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        """GET a path; (0, "") when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return 0, ""

    def health(self) -> dict[str, Any]:
        """The /healthz body (asserting a 200)."""
        status, body = self.get("/healthz")
        assert status == 200, (status, body, self.log_text())
        health: dict[str, Any] = json.loads(body)
        return health

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics, or None when absent or unreachable."""
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def leader(self) -> float | None:
        """The replica's ``janitor_leader`` value."""
        return self.metric("janitor_leader")

    def wait_up(self) -> None:
        """Wait until /healthz answers 200."""
        wait_for(lambda: self.get("/healthz")[0] == 200, 20, f"{self} /healthz")

    def events(self) -> list[dict[str, Any]]:
        """The operational log's JSON events so far."""
        events = []
        for line in self.stderr.read_text(errors="replace").splitlines():
            # Skip traceback lines, and a last line still being written.
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def event_names(self) -> list[str]:
        """The names of the operational events so far."""
        return [str(event.get("event")) for event in self.events()]

    def log_text(self) -> str:
        """The stderr output, for assertion messages."""
        return self.stderr.read_text(errors="replace")[-6000:]

    def stop(
        self, signum: int = signal.SIGTERM, timeout: float = 10
    ) -> tuple[int, float]:
        """Send a signal and wait for the exit; return (exit code, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(10)
            msg = f"{self} did not exit within {timeout}s:\n{self.log_text()}"
            raise AssertionError(msg) from None
        return code, time.monotonic() - started

    def __repr__(self) -> str:
        return f"Replica(pid={self.process.pid}, port={self._port})"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    """Start daemon replicas on a Redis URL; every one still running is killed afterwards."""
    started: list[Replica] = []

    def _start(url: str) -> Replica:
        replica = Replica(tmp_path, url)
        started.append(replica)
        return replica

    yield _start
    for replica in started:
        if replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait(10)
        # Shown by pytest when the test failed: what each daemon said.
        print(f"--- {replica} stderr ---\n{replica.log_text()}")


@pytest.fixture
def own_server(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, to stop, freeze and restart (same binary as the session's)."""
    server = RedisServer(binary=redis_server.binary, workdir=tmp_path / "redis").start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def finished_jobs(client: redis.Redis, count: int = 2) -> list[str]:
    """Jobs that a real RQ worker finished just now (past a "0s" retention at once)."""
    queue = Queue("default", connection=client)
    ids = [queue.enqueue(funcs.ok).id for _ in range(count)]
    work(client, queue)
    return ids


def all_gone(client: redis.Redis, job_ids: list[str]) -> bool:
    """Whether none of the jobs' hashes exist any more."""
    return not any(client.exists(KEYS.job(job_id)) for job_id in job_ids)


class TestEndpoints:
    """/healthz, /readyz and /metrics of a running daemon."""

    def test_probes_and_metrics_answer(
        self, r: redis.Redis, redis_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """/healthz and /readyz answer 200 with JSON, /metrics has the contract's metrics, unknown paths 404."""
        daemon = start(redis_server.url)
        daemon.wait_up()
        health = daemon.health()
        assert health["status"] == "ok"
        assert health["tasks"]["expire_jobs"]["schedule"] == "every 1s"
        assert health["tasks"]["sweep_orphans"]["next_run"].endswith("03:00:00+00:00")
        assert daemon.get("/readyz") == (200, '{"status": "ready"}\n')
        wait_for(lambda: daemon.leader() == 1, 10, "the only replica to lead")
        status, text = daemon.get("/metrics")
        assert status == 200
        for name in (
            "janitor_actions_total",
            "janitor_task_runs_total",
            "janitor_task_duration_seconds",
            "janitor_task_last_success_timestamp_seconds",
            "janitor_leader",
            "janitor_backlog_oldest_age_seconds",
        ):
            assert f"# TYPE {name} " in text
        assert daemon.get("/nope")[0] == 404

    def test_deletes_on_schedule_and_counts_it(
        self, r: redis.Redis, redis_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """The leader deletes jobs on its schedule; actions, runs, duration and last success show it."""
        daemon = start(redis_server.url)
        job_ids = finished_jobs(r, 3)
        wait_for(lambda: all_gone(r, job_ids), 15, "the finished jobs to be deleted")
        labels = {"task": "expire_jobs"}
        # A run is counted when it returns, a moment after its last delete.
        wait_for(
            lambda: (
                daemon.metric("janitor_actions_total", action="job_deleted", **labels)
                == 3
            ),
            5,
            "3 job_deleted actions counted",
        )
        assert (
            daemon.metric("janitor_task_runs_total", outcome="ok", **labels) or 0
        ) >= 1
        assert (
            daemon.metric("janitor_task_duration_seconds_count", **labels) or 0
        ) >= 1
        last = daemon.metric("janitor_task_last_success_timestamp_seconds", **labels)
        assert last is not None
        assert abs(last - time.time()) < 60
        task = daemon.health()["tasks"]["expire_jobs"]
        assert task["last_success"] is not None
        assert task["last_outcome"] == "ok"
        audit = [json.loads(line) for line in daemon.audit.read_text().splitlines()]
        deleted = {e["job_id"] for e in audit if e["event"] == "job_deleted"}
        assert deleted == set(job_ids)

    def test_starts_and_waits_while_redis_is_down(
        self,
        redis_server: RedisServer,
        start: Callable[[str], Replica],
        tmp_path: Path,
    ) -> None:
        """With no server yet, /healthz is 200 and /readyz 503; once one starts, it is ready and leads."""
        port = free_port()
        daemon = start(f"redis://127.0.0.1:{port}/0")
        daemon.wait_up()
        assert daemon.get("/readyz")[0] == 503
        assert daemon.leader() == 0
        server = RedisServer(
            binary=redis_server.binary, workdir=tmp_path / "late", port=port
        ).start()
        try:
            wait_for(lambda: daemon.get("/readyz")[0] == 200, 3 * TTL_S, "/readyz 200")
            wait_for(lambda: daemon.leader() == 1, 3 * TTL_S, "leadership")
        finally:
            server.stop()
        assert "redis_disconnected" in daemon.event_names()
        assert "redis_connected" in daemon.event_names()


class TestLeadership:
    """Several replicas on one Redis."""

    def test_one_leader_and_a_takeover_within_the_ttl_after_sigkill(
        self, r: redis.Redis, redis_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """Of two replicas exactly one leads; SIGKILL it and the other leads within the TTL and deletes."""
        replicas = [start(redis_server.url), start(redis_server.url)]
        for replica in replicas:
            replica.wait_up()
        wait_for(
            lambda: sorted(rep.leader() or 0 for rep in replicas) == [0, 1],
            10,
            "exactly one leader",
        )
        for _ in range(5):  # and it stays that way
            assert sorted(rep.leader() or 0 for rep in replicas) == [0, 1]
            time.sleep(0.1)
        leader, follower = sorted(replicas, key=lambda rep: -(rep.leader() or 0))
        wait_for(
            lambda: follower.metric(
                "janitor_task_runs_total", task="expire_jobs", outcome="skipped"
            ),
            10,
            "the follower to skip its runs",
        )
        assert (
            follower.metric("janitor_task_runs_total", task="expire_jobs", outcome="ok")
            == 0
        )

        leader.process.kill()
        killed = time.monotonic()
        leader.process.wait(10)
        job_ids = finished_jobs(r, 2)
        wait_for(lambda: follower.leader() == 1, TTL_S + SLACK_S + 5, "a takeover")
        took = time.monotonic() - killed
        assert took <= TTL_S + SLACK_S, f"takeover took {took:.2f}s"
        wait_for(lambda: all_gone(r, job_ids), 15, "the new leader to delete")
        assert "leadership_acquired" in follower.event_names()


class TestResilience:
    """Redis going away, coming back, and tasks that fail."""

    def test_survives_a_redis_restart(
        self, own_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """Redis stopped for a few seconds: /healthz stays 200, /readyz goes 503 then 200, and deleting resumes."""
        daemon = start(own_server.url)
        wait_for(lambda: daemon.leader() == 1, 15, "leadership")
        own_server.stop()
        stopped = time.monotonic()
        wait_for(lambda: daemon.get("/readyz")[0] == 503, 10, "/readyz 503")
        assert daemon.get("/healthz")[0] == 200
        wait_for(lambda: daemon.leader() == 0, 2 * TTL_S, "leadership to end")
        time.sleep(
            max(0.0, 2.0 - (time.monotonic() - stopped))
        )  # down for 2 s at least
        assert daemon.process.poll() is None

        restarted = RedisServer(
            binary=own_server.binary, workdir=own_server.workdir, port=own_server.port
        ).start()
        try:
            wait_for(lambda: daemon.get("/readyz")[0] == 200, 10, "/readyz 200 again")
            wait_for(lambda: daemon.leader() == 1, 3 * TTL_S, "leadership again")
            client = restarted.client()
            job_ids = finished_jobs(client, 2)
            wait_for(lambda: all_gone(client, job_ids), 15, "deleting to resume")
        finally:
            restarted.stop()
        assert daemon.process.poll() is None
        names = daemon.event_names()
        assert "redis_disconnected" in names
        assert "redis_reconnected" in names
        assert "leadership_lost" in names

    def test_a_failing_task_does_not_stop_the_scheduler(
        self, r: redis.Redis, redis_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """Tasks that raise are counted as failed and run again on schedule; once the data is fixed they succeed."""
        r.set(KEYS.queues(), b"not a set")  # every task lists the queues first
        daemon = start(redis_server.url)
        failed = {"task": "expire_jobs", "outcome": "failed"}
        wait_for(
            lambda: (daemon.metric("janitor_task_runs_total", **failed) or 0) >= 2,
            15,
            "two failed runs",
        )
        assert daemon.get("/healthz")[0] == 200
        r.delete(KEYS.queues())
        job_ids = finished_jobs(r, 1)
        wait_for(lambda: all_gone(r, job_ids), 15, "a successful run")
        wait_for(
            lambda: daemon.health()["tasks"]["expire_jobs"]["last_outcome"] == "ok",
            5,
            "the run to be counted ok",
        )


class TestStop:
    """SIGTERM and SIGINT."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_a_signal_exits_0_promptly_and_releases_the_lease(
        self,
        r: redis.Redis,
        redis_server: RedisServer,
        start: Callable[[str], Replica],
        signum: signal.Signals,
    ) -> None:
        """SIGTERM or SIGINT: exit 0 within a second or two, the lease released for a successor."""
        daemon = start(redis_server.url)
        wait_for(lambda: daemon.leader() == 1, 15, "leadership")
        code, took = daemon.stop(signum)
        assert code == 0, daemon.log_text()
        assert took < 1 + SLACK_S
        assert not r.exists(LEASE_KEY)
        names = daemon.event_names()
        assert names[-3:] == [
            "daemon_stopping",
            "leadership_released",
            "daemon_stopped",
        ]
        assert daemon.atexit_marker.exists(), "a normal stop leaves through main"

    def test_a_stop_after_a_run_of_many_pages_leaves_through_main(
        self,
        r: redis.Redis,
        redis_server: RedisServer,
        start: Callable[[str], Replica],
    ) -> None:
        """After expire_jobs deleted thousands of jobs over many pages (lease renewed meanwhile), SIGTERM exits 0 and atexit handlers run."""
        ids = fill_finished(r, "bulk", 6_000)
        daemon = start(redis_server.url)

        def deleted() -> int:
            if not daemon.audit.exists():
                return 0
            return daemon.audit.read_text().count('"event": "job_deleted"')

        wait_for(lambda: deleted() >= len(ids), 60, "expire_jobs to delete the jobs")
        assert not r.exists(KEYS.finished("bulk"))
        code, _ = daemon.stop(signal.SIGTERM)
        assert code == 0, daemon.log_text()
        assert "shutdown_overran" not in daemon.event_names()
        assert daemon.atexit_marker.read_text() == "atexit ran"

    def test_stop_is_bounded_when_redis_hangs(
        self, own_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """With Redis frozen, /healthz stays 200, /readyz is 503, and SIGTERM still exits 0 by the watchdog's deadline.

        A thread stuck in a Redis call keeps the interpreter from exiting; the watchdog
        then ends the process at STOP_DEADLINE_S, with the exit code of a clean stop.
        """
        daemon = start(own_server.url)
        wait_for(lambda: daemon.leader() == 1, 15, "leadership")
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)
        wait_for(lambda: daemon.get("/readyz")[0] == 503, 10, "/readyz 503")
        assert daemon.get("/healthz")[0] == 200
        code, took = daemon.stop(signal.SIGTERM, timeout=30)
        assert code == 0, daemon.log_text()
        assert took < STOP_DEADLINE_S + SLACK_S

    def test_a_second_signal_stops_at_once(
        self, own_server: RedisServer, start: Callable[[str], Replica]
    ) -> None:
        """While a stop waits for a hung Redis, a second signal exits at once with 128 + signal."""
        daemon = start(own_server.url)
        wait_for(lambda: daemon.leader() == 1, 15, "leadership")
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)
        daemon.process.send_signal(signal.SIGTERM)
        wait_for(
            lambda: "daemon_stopping" in daemon.event_names(), 10, "the stop to begin"
        )
        assert daemon.process.poll() is None, "the first stop waits for Redis"
        code, took = daemon.stop(signal.SIGINT)
        assert code == 128 + signal.SIGINT
        assert took < 0.5 + SLACK_S
        assert "shutdown_forced" in daemon.event_names()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "a continuation line ends the file"
    return instructions


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes) or (
            glob.startswith("**/")
            and any(fnmatch.fnmatchcase(part, glob[3:]) for part in parts)
        ):
            ignored = not negate
    return ignored


def docker_engine() -> bool:
    """Whether a Docker engine answers here (the docker CLI alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0


def unit_file(path: Path) -> configparser.ConfigParser:
    """A systemd unit file, parsed (repeated keys allowed, no interpolation)."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign] # keep systemd's CamelCase keys
    parser.read_string(path.read_text())
    return parser


def load_config(text: str, tmp_path: Path) -> Settings:
    """Load a TOML config text exactly as the CLI would, with no environment."""
    path = tmp_path / "janitor.toml"
    path.write_text(text)
    return load_settings(config_path=str(path), env={})


class TestArtifacts:
    """The Dockerfile, compose file, Kubernetes manifests and systemd units are valid and agree."""

    def test_dockerfile_copies_files_that_exist_and_runs_janitor_as_non_root(
        self, repo_root: Path
    ) -> None:
        """Stages on the BASE build argument (python:3.11-slim), files that exist and survive .dockerignore, a numeric non-root user, `janitor run`."""
        instructions = dockerfile_instructions(repo_root / "Dockerfile")
        keywords = [keyword for keyword, _ in instructions]
        assert keywords[:2] == ["ARG", "FROM"]
        assert dict(instructions)["ARG"] == "BASE=python:3.11-slim"
        for keyword, args in instructions:
            if keyword == "FROM":
                assert args.split()[0] == "${BASE}"
        patterns = [
            line.strip()
            for line in (repo_root / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        copies = [args for keyword, args in instructions if keyword == "COPY"]
        assert copies
        for args in copies:
            if args.startswith("--from="):
                continue
            *sources, _ = args.split()
            for source in sources:
                source_path = repo_root / source
                assert source_path.exists(), source
                files = (
                    list(source_path.rglob("*.py"))
                    if source_path.is_dir()
                    else [source_path]
                )
                for file in files:
                    relative = file.relative_to(repo_root).as_posix()
                    assert not dockerignored(relative, patterns), relative
        assert dockerignored(".venv/bin/python", patterns)
        assert dockerignored("tests/test_daemon.py", patterns)
        user = dict(instructions)["USER"].split(":")[0]
        assert user.isdigit()
        assert int(user) != 0
        assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["janitor"]
        assert json.loads(dict(instructions)["CMD"]) == ["run"]

    def test_dockerfile_healthcheck_is_janitor_healthcheck(
        self, repo_root: Path, tmp_path: Path
    ) -> None:
        """The HEALTHCHECK runs `janitor healthcheck`, which reads the image's config (its port is the one exposed)."""
        instructions = dict(dockerfile_instructions(repo_root / "Dockerfile"))
        healthcheck = instructions["HEALTHCHECK"]
        command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
        assert command == ["janitor", "healthcheck"]
        settings = load_config(
            (repo_root / "deploy/container/janitor.toml").read_text(), tmp_path
        )
        port = settings.http.listen.rpartition(":")[2]
        assert settings.http.listen.startswith("0.0.0.0:")
        assert instructions["EXPOSE"] == port
        config_path = instructions["ENV"].split("JANITOR_CONFIG=")[1].split()[0]
        assert f"deploy/container/janitor.toml {config_path}" in " ".join(
            args for keyword, args in dockerfile_instructions(repo_root / "Dockerfile")
        )

    @pytest.mark.skipif(not docker_engine(), reason="no Docker engine here")
    def test_image_builds(self, repo_root: Path) -> None:
        """The image builds and its janitor answers --version (only where a Docker engine runs)."""
        subprocess.run(
            ["docker", "build", "-t", "rq-janitor:test", str(repo_root)],
            check=True,
            timeout=900,
        )
        result = subprocess.run(
            ["docker", "run", "--rm", "rq-janitor:test", "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "janitor, version" in result.stdout

    def test_compose_runs_the_janitor_beside_a_valkey_queue_server(
        self, repo_root: Path, tmp_path: Path
    ) -> None:
        """The compose file parses; the janitor builds from the repo, waits for valkey-queue and mounts a valid config."""
        folder = repo_root / "deploy/compose"
        compose = yaml.safe_load((folder / "docker-compose.yml").read_text())
        services = compose["services"]
        janitor = services["janitor"]
        assert "valkey-queue" in services
        assert "valkey" in services["valkey-queue"]["image"]
        assert janitor["depends_on"]["valkey-queue"]["condition"] == "service_healthy"
        context = (folder / janitor["build"]["context"]).resolve()
        assert (context / janitor["build"]["dockerfile"]).is_file()
        assert janitor["environment"]["JANITOR_REDIS_URL"].startswith(
            "redis://valkey-queue:"
        )
        for secret in compose["secrets"].values():
            assert (folder / secret["file"]).is_file()
        mounts = [v for v in janitor["volumes"] if v.endswith(":ro")]
        source, target, _ = mounts[0].split(":")
        assert target == "/etc/rq-janitor/janitor.toml"
        settings = load_config((folder / source).read_text(), tmp_path)
        assert settings.http.listen == "0.0.0.0:9808"

    def test_kubernetes_sidecar_and_cronjob(
        self, repo_root: Path, tmp_path: Path
    ) -> None:
        """The manifests parse; the sidecar runs `janitor run` with /healthz probes, the CronJob `run --once`; configs load."""
        folder = repo_root / "deploy/kubernetes"
        docs: dict[str, dict[str, Any]] = {}
        for name in ("sidecar.yaml", "cronjob.yaml"):
            for doc in yaml.safe_load_all((folder / name).read_text()):
                if doc:
                    assert {"apiVersion", "kind", "metadata"} <= set(doc)
                    docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
        uid = int(
            dict(dockerfile_instructions(repo_root / "Dockerfile"))["USER"].split(":")[
                0
            ]
        )

        pod = docs["Deployment/rq-worker"]["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        sidecar = containers["janitor"]
        assert len(containers) >= 2, "a sidecar beside the worker"
        assert sidecar["args"] == ["run"]
        assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert sidecar["securityContext"]["runAsUser"] == uid
        config_map = pod["volumes"][0]["configMap"]["name"]
        settings = load_config(
            docs[f"ConfigMap/{config_map}"]["data"]["janitor.toml"], tmp_path
        )
        port = int(settings.http.listen.rpartition(":")[2])
        assert sidecar["ports"][0]["containerPort"] == port

        cron = docs["CronJob/rq-janitor"]["spec"]
        job_pod = cron["jobTemplate"]["spec"]["template"]["spec"]
        job = job_pod["containers"][0]
        assert job["args"] == ["run", "--once"]
        assert len(cron["schedule"].split()) == 5
        assert job["securityContext"]["runAsUser"] == uid
        config_map = job_pod["volumes"][0]["configMap"]["name"]
        load_config(docs[f"ConfigMap/{config_map}"]["data"]["janitor.toml"], tmp_path)

    def test_systemd_units(self, repo_root: Path, tmp_path: Path) -> None:
        """The service runs the daemon, the timer starts a one-shot `run --once`; systemd-analyze accepts them where present."""
        folder = repo_root / "deploy/systemd"
        daemon = unit_file(folder / "rq-janitor.service")
        assert {"Unit", "Service", "Install"} <= set(daemon.sections())
        assert "janitor run " in daemon["Service"]["ExecStart"]
        assert "--once" not in daemon["Service"]["ExecStart"]
        once = unit_file(folder / "rq-janitor-once.service")
        assert once["Service"]["Type"] == "oneshot"
        assert "janitor run --once" in once["Service"]["ExecStart"]
        timer = unit_file(folder / "rq-janitor-once.timer")
        assert {"Unit", "Timer", "Install"} <= set(timer.sections())
        assert (folder / timer["Timer"]["Unit"]).is_file()
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            return
        janitor = Path(sys.executable).with_name("janitor")
        for unit in folder.iterdir():
            text = unit.read_text().replace("/opt/rq-janitor/bin/janitor", str(janitor))
            (tmp_path / unit.name).write_text(text)
        result = subprocess.run(
            [analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    def test_readme_explains_every_artifact(self, repo_root: Path) -> None:
        """The README's Deployment section names the Dockerfile and every file in deploy/."""
        readme = (repo_root / "README.md").read_text()
        section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
        assert "Dockerfile" in section
        for path in (repo_root / "deploy").rglob("*"):
            if path.is_file() and not path.name.endswith(".txt"):
                relative = path.relative_to(repo_root).as_posix()
                assert relative in section, relative


def test_healthcheck_follows_the_configured_listen_address(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """`janitor healthcheck` asks /healthz where [http] listen says (a moved port too): 0 while up, 1 once stopped."""
    port = free_port()
    config = tmp_path / "moved.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\n[http]\nlisten = "0.0.0.0:{port}"\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n',
        encoding="utf-8",
    )
    env = clean_env()
    process = daemon(config, tmp_path / "daemon.stderr")
    try:
        healthy = wait_for(
            lambda: janitor("healthcheck", "-c", str(config), env=env).returncode == 0,
            20,
            "the daemon to be healthy",
        )
        assert healthy
        done = janitor("healthcheck", "-c", str(config), env=env)
        assert f"127.0.0.1:{port}/healthz" in done.stdout
    finally:
        process.terminate()
        process.wait(timeout=15)
    stopped = janitor("healthcheck", "-c", str(config), env=env)
    assert stopped.returncode == 1
    assert "unhealthy" in stopped.stderr
