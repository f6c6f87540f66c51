"""The CLI on the lowest version of every runtime dependency that ``pyproject.toml`` allows.

The floors' virtualenv (``tests/rqenv.py``, from ``requirements/floors.txt``, written by
``scripts/lock`` in the resolver's lowest-direct mode) makes its own RQ data with its own
rq and real workers, then runs ``janitor`` as users do: ``check``, ``run --once`` with and
without ``--dry-run``, and the daemon's start, ``/healthz`` and SIGTERM stop.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import cli
from tests.rqenv import FLOORS, REPO_ROOT, python_for
from tests.rqstate import produce
from tests.servers import RedisServer
from tests.snapshot import assert_unchanged, snapshot

pytestmark = pytest.mark.compat

FLOOR = re.compile(r"^([A-Za-z0-9._-]+)\s*>=\s*([0-9][^,;\s]*)")
TERMINAL = ("finished", "failed", "stopped", "canceled")
LIVE = ("queued", "deferred", "scheduled")


def declared_floors() -> dict[str, str]:
    """Each runtime dependency of pyproject.toml with the lowest version it allows."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = FLOOR.match(requirement)
        assert match, f"{requirement!r} declares no floor (>=)"
        floors[match[1].lower()] = match[2]
    return floors


def janitor(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m janitor ARGS`` in the floors' virtualenv, with a clean JANITOR_* environment."""
    return cli.janitor(*args, python=str(python_for(FLOORS)))


def write_config(path: Path, redis_url: str) -> Path:
    """A config that deletes every terminal job at once, audits to a file, and serves HTTP."""
    path.write_text(
        f"""
[redis]
url = "{redis_url}"

[retention]
finished = "0s"
failed = "0s"
stopped = "0s"
canceled = "0s"

[schedule]
expire_jobs = "every 1s"

[http]
listen = "127.0.0.1:0"

[audit]
path = "{path.with_suffix(".audit.jsonl")}"
"""
    )
    return path


def deleted_ids(audit: Path) -> set[str]:
    """The job ids of the job_deleted lines of an audit log (which it then removes)."""
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    audit.unlink()
    return {e["job_id"] for e in lines if e["event"] == "job_deleted"}


def test_the_floors_environment_holds_the_declared_floors() -> None:
    """requirements/floors.txt installs exactly the lowest version pyproject.toml allows of each dependency."""
    floors = declared_floors()
    script = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(python_for(FLOORS)), "-c", script, *floors],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    installed = json.loads(done.stdout)
    for name, floor in floors.items():
        assert (
            installed[name].split(".")
            == ([*floor.split("."), "0", "0"])[: len(installed[name].split("."))]
        ), (name, installed[name], floor)


def test_check_and_run_once_work_on_the_floors(
    redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    """On the floors: check exits 0, a dry run writes nothing, a real run deletes what the dry run named, live jobs stay."""
    manifest = produce(redis_server.url, rq_version=FLOORS, queue="floors")
    config = write_config(tmp_path / "janitor.toml", redis_server.url)
    audit = config.with_suffix(".audit.jsonl")

    checked = janitor("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "rq data layout:" in checked.stdout

    before = snapshot(r)
    dry = janitor("run", "--once", "--dry-run", "-c", str(config))
    assert dry.returncode == 0, dry.stderr
    assert_unchanged(before, snapshot(r))
    would = deleted_ids(audit)

    real = janitor("run", "--once", "-c", str(config))
    assert real.returncode == 0, real.stderr
    deleted = deleted_ids(audit)

    terminal = {job for state in TERMINAL for job in manifest.jobs.get(state, [])}
    live = {job for state in LIVE for job in manifest.jobs.get(state, [])}
    assert terminal, manifest.jobs
    assert live, manifest.jobs
    assert terminal <= deleted
    assert would == deleted
    assert not any(r.exists(manifest.key(f"job:{job}")) for job in terminal)
    assert all(r.exists(manifest.key(f"job:{job}")) for job in live)


def test_the_daemon_starts_serves_healthz_and_stops_cleanly_on_the_floors(
    redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    """On the floors: the daemon listens, /healthz answers 200, and SIGTERM ends it with exit 0 and daemon_stopped."""
    config = write_config(tmp_path / "janitor.toml", redis_server.url)
    stderr_path = tmp_path / "daemon.stderr"
    daemon = cli.daemon(config, stderr_path, python=str(python_for(FLOORS)))
    try:

        def events() -> list[dict[str, Any]]:
            lines = stderr_path.read_text(errors="replace").splitlines()
            return [json.loads(line) for line in lines if line.startswith("{")]

        deadline = time.monotonic() + 30
        port = 0
        while not port:
            assert daemon.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            for event in events():
                if event.get("event") == "http_listening":
                    port = int(str(event["address"]).rpartition(":")[2])
            time.sleep(0.05)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/healthz", timeout=5
        ) as response:
            assert response.status == 200

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, stderr_path.read_text()
        names = [e.get("event") for e in events()]
        assert names[-1] == "daemon_stopped", names
        assert not r.exists("janitor:leader")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
