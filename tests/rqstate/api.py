"""Run ``produce.py`` under a chosen RQ version against a test's redis-server and return its manifest."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rqenv import CURRENT, python_for
from tests.rqstate.jobs import SECRET_ERROR
from tests.rqstate.produce import CATEGORIES, EXPECTED_STATUS, MARKER

__all__ = [
    "CATEGORIES",
    "EXPECTED_STATUS",
    "LIVE",
    "MARKER",
    "SECRET_ERROR",
    "TERMINAL",
    "Manifest",
    "ProduceError",
    "produce",
    "running",
]

#: The categories ``expire_jobs`` deletes with zero retention, and those it must keep.
TERMINAL = (
    "finished",
    "finished_forever",
    "failed",
    "failed_retried",
    "stopped",
    "canceled",
    "finished_parent",
    "finished_child",
    "group",
)
LIVE = (
    "queued",
    "deferred",
    "scheduled",
    "deferred_child",
    "abandoned_child_allowed",
    "abandoned_child",
)

PRODUCE_SCRIPT = Path(__file__).resolve().parent / "produce.py"

DEFAULT_TIMEOUT_S = 60.0
KILL_TIMEOUT_S = 10.0


class ProduceError(RuntimeError):
    """Raised when ``produce.py`` fails or times out; the message holds its stderr (with worker logs)."""


@dataclass
class Manifest:
    """What ``produce.py`` created: job ids by category, and the workers it left alive or killed.

    ``key_prefix`` is RQ's key prefix in force (``rq`` unless rq 3.0 ran with ``RQ_KEY_PREFIX``).
    ``workers``/``worker_pids``/``horse_pids`` describe the worker left running the ``started`` job (its work
    horse leads its own process group); call ``kill_workers()`` when done with them.
    ``dead_workers`` are names of workers that were SIGKILLed while running the ``abandoned`` job.
    """

    rq_version: str
    queue: str
    redis_url: str
    key_prefix: str
    jobs: dict[str, list[str]]
    groups: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)
    horse_pids: list[int] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Build a Manifest from the decoded JSON that ``produce.py`` prints, checking its shape."""
        jobs = {str(k): [str(i) for i in v] for k, v in dict(data["jobs"]).items()}
        missing = set(CATEGORIES) - set(jobs)
        if missing:
            msg = f"manifest lacks categories {sorted(missing)}"
            raise ProduceError(msg)
        return cls(
            rq_version=str(data["rq_version"]),
            queue=str(data["queue"]),
            redis_url=str(data["redis_url"]),
            key_prefix=str(data["key_prefix"]),
            jobs=jobs,
            groups=[str(g) for g in data["groups"]],
            workers=[str(w) for w in data["workers"]],
            worker_pids=[int(p) for p in data["worker_pids"]],
            horse_pids=[int(p) for p in data["horse_pids"]],
            dead_workers=[str(w) for w in data["dead_workers"]],
        )

    @property
    def rq_major(self) -> int:
        """The major version of the RQ that produced the data."""
        return int(self.rq_version.split(".", 1)[0])

    def ids(self, *categories: str) -> list[str]:
        """Return the job ids of the given categories (all categories when none is given)."""
        return [
            job_id
            for category in (categories or CATEGORIES)
            for job_id in self.jobs[category]
        ]

    def key(self, suffix: str) -> str:
        """Return an RQ key name under this manifest's prefix, e.g. ``key("failed:default")``."""
        return f"{self.key_prefix}:{suffix}"

    def expire_worker(self, client: Any, name: str) -> None:
        """Do now what Redis does about 90 s after a SIGKILLed worker's last heartbeat.

        Its hash and the hashes of its executions expire (RQ gives both the heartbeat TTL);
        RQ 3's executions set outlives them by 60 s, and so stays here.
        """
        worker = self.key(f"worker:{name}")
        members = client.smembers(f"{worker}:executions")
        client.delete(worker, *(self.key(f"execution:{m.decode()}") for m in members))
        for job_id in self.jobs["abandoned"] if name in self.dead_workers else []:
            for key in client.scan_iter(match=self.key(f"execution:{job_id}:*")):
                client.delete(key)

    def expire_dead_workers(self, client: Any) -> None:
        """``expire_worker`` for every worker that ``produce`` SIGKILLed."""
        for name in self.dead_workers:
            self.expire_worker(client, name)

    def work_burst(self, rq_version: str = CURRENT) -> None:
        """Run one burst ``rq worker`` of ``rq_version`` on the manifest's queue until it is empty."""
        here = str(PRODUCE_SCRIPT.parent)
        subprocess.run(
            [
                str(python_for(rq_version)),
                "-m",
                "rq.cli",
                "worker",
                "--burst",
                "--url",
                self.redis_url,
                "--path",
                here,
                self.queue,
            ],
            env=_environment({"PYTHONPATH": here}),
            cwd=here,
            check=True,
            capture_output=True,
            timeout=DEFAULT_TIMEOUT_S,
        )

    def kill_workers(self) -> None:
        """SIGKILL the worker left running (and its work horse), and wait until they are gone. Idempotent."""
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.horse_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_TIMEOUT_S
        for pid in [*self.worker_pids, *self.horse_pids]:
            while running(pid):
                if time.monotonic() > deadline:
                    msg = f"process {pid} survived SIGKILL for {KILL_TIMEOUT_S} s"
                    raise ProduceError(msg)
                time.sleep(0.02)


def running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's environment without variables that would change RQ or the interpreter, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RQ_")
        and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    env.update(extra or {})
    return env


def produce(  # noqa: PLR0913 - keyword-only options of one call, as the tests need them
    redis_url: str,
    *,
    rq_version: str = CURRENT,
    queue: str = "default",
    with_started: bool = False,
    with_killed_worker: bool = False,
    with_rate_limit: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Manifest:
    """Produce RQ state of every kind in ``queue`` with ``rq==rq_version`` and real workers; return the manifest.

    ``rq_version`` is one of ``tests.rqenv.RQ_VERSIONS`` or ``"current"`` (the rq of the test environment).
    ``env`` adds environment variables for the script and its workers, e.g. ``{"RQ_KEY_PREFIX": "acme"}``:
    only rq 3.0 honours ``RQ_KEY_PREFIX``; older versions always use ``rq`` (see ``Manifest.key_prefix``).
    ``RQ_*`` variables of the calling process are not passed on. With ``with_started`` a worker stays alive:
    call ``Manifest.kill_workers()`` afterwards. ``with_rate_limit`` (rq 3.0+) kills a worker whose job
    holds a rate limit's only slot while another job waits. Raises ProduceError with the script's stderr on failure.
    """
    args = [
        str(python_for(rq_version)),
        str(PRODUCE_SCRIPT),
        "--redis-url",
        redis_url,
        "--queue",
        queue,
    ]
    if with_started:
        args.append("--with-started")
    if with_killed_worker:
        args.append("--with-killed-worker")
    if with_rate_limit:
        args.append("--with-rate-limit")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(env),
        cwd=PRODUCE_SCRIPT.parent,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the script stop the workers it started and print their logs.
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        msg = f"produce.py (rq {rq_version}) timed out after {timeout} s:\n{stderr}"
        raise ProduceError(msg) from None
    if proc.returncode != 0:
        msg = f"produce.py (rq {rq_version}) exited with {proc.returncode}:\n{stderr}"
        raise ProduceError(msg)
    try:
        data = json.loads(stdout)
    except ValueError as err:
        msg = f"produce.py (rq {rq_version}) printed no JSON manifest: {stdout!r}\n{stderr}"
        raise ProduceError(msg) from err
    return Manifest.from_json(data)
