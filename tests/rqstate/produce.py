"""Produce RQ state of every kind in one queue with real RQ APIs and real workers, then print a JSON manifest.

Run it with the python of a virtualenv that has the wanted rq version (``tests/rqenv.py``)::

    python produce.py --redis-url redis://127.0.0.1:6379/0 --queue default [--with-started] [--with-killed-worker]

It works under rq 1.16.2, 2.12.0 and 3.0.0 and imports nothing from janitor or tests, only rq, redis-py and the
job functions in ``jobs.py`` next to it (which the workers import as the top-level module ``jobs``).
rq 3.0 reads ``RQ_KEY_PREFIX`` from the environment; the workers inherit this process's environment.

Manifest printed on stdout (one JSON object)::

    {"rq_version": "2.12.0", "queue": "default", "redis_url": "redis://...", "key_prefix": "rq",
     "jobs": {"finished": [id, id, id], ...}, "groups": [name], "workers": [name], "worker_pids": [pid],
     "horse_pids": [pid], "dead_workers": [name]}

See ``CATEGORIES`` for the keys of ``jobs``; every key is always present (empty list when not produced).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.job import Dependency, Job

HERE = Path(__file__).resolve().parent

#: Literal marker in every job's arguments.
MARKER = "SECRET-PAYLOAD-7f3a"

#: Category names of the manifest's ``jobs``, in the order they are produced.
CATEGORIES = (
    "finished",
    "finished_forever",
    "failed",
    "failed_retried",
    "stopped",
    "canceled",
    "failed_parent",
    "deferred_child",
    "finished_parent",
    "finished_child",
    "group",
    "queued",
    "deferred",
    "scheduled",
    "started",
    "abandoned",
    "abandoned_child_allowed",
    "abandoned_child",
    "rate_limit_holder",
    "rate_limit_waiting",
)

#: Status each category has when the script ends (``abandoned`` stays ``started``: its worker is dead).
EXPECTED_STATUS = {
    "finished": "finished",
    "finished_forever": "finished",
    "failed": "failed",
    "failed_retried": "failed",
    "stopped": "stopped",
    "canceled": "canceled",
    "failed_parent": "failed",
    "deferred_child": "deferred",
    "finished_parent": "finished",
    "finished_child": "finished",
    "group": "finished",
    "queued": "queued",
    "deferred": "deferred",
    "scheduled": "scheduled",
    "started": "started",
    "abandoned": "started",
    "abandoned_child_allowed": "deferred",
    "abandoned_child": "deferred",
    "rate_limit_holder": "started",
    "rate_limit_waiting": "rate_limited",
}

STATUS_TIMEOUT_S = 20.0
WORKER_EXIT_TIMEOUT_S = 30.0
POLL_S = 0.02
#: How long the jobs of ``started`` and ``abandoned`` would run if nobody killed them.
LONG_SLEEP_S = 600
BURST_ROUNDS = 3
#: Resend a stop command that has not stopped the job after this long.
STOP_RESEND_S = 3.0
#: Grace between seeing a job started (written by the horse) and stopping it: the worker records the horse's
#: pid right after fork() returns, and a stop command that came earlier would find no horse to kill.
STOP_GRACE_S = 0.05


class StateNotReachedError(RuntimeError):
    """Raised when RQ did not reach the expected state in time."""


def rq_version() -> str:
    """Return the installed rq version."""
    return importlib.metadata.version("rq")


def rq_major() -> int:
    """Return the installed rq major version."""
    return int(rq_version().split(".", 1)[0])


def key_prefix() -> str:
    """Return RQ's key prefix: ``RQ_KEY_PREFIX`` on rq 3.0+, always ``rq`` before."""
    import rq.defaults

    return str(getattr(rq.defaults, "RQ_KEY_PREFIX", "rq"))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Producer:
    """Creates the state, remembering every process it starts so a failure can stop them all."""

    def __init__(self, redis_url: str, queue_name: str) -> None:
        self.redis_url = redis_url
        self.conn = Redis.from_url(redis_url)
        self.queue = Queue(queue_name, connection=self.conn)
        self.jobs: dict[str, list[str]] = {name: [] for name in CATEGORIES}
        self.groups: list[str] = []
        self.workers: list[str] = []
        self.worker_pids: list[int] = []
        self.horse_pids: list[int] = []
        self.dead_workers: list[str] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="rqstate-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.run_id = uuid.uuid4().hex[:8]

    # ----------------------------------------------------------------- helpers

    def status(self, job_id: str) -> str | None:
        """Return the job's status as stored in Redis (None when the hash or field is missing)."""
        return _text(self.conn.hget(Job.key_for(job_id), "status"))

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = STATUS_TIMEOUT_S
    ) -> None:
        """Poll ``check`` until it is true; raise StateNotReachedError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout} s waiting for {what}"
                raise StateNotReachedError(msg)
            time.sleep(POLL_S)

    def wait_for_status(
        self, job_id: str, wanted: str, timeout: float = STATUS_TIMEOUT_S
    ) -> None:
        """Wait until the job has status ``wanted``."""
        self.wait_for(
            f"job {job_id} to be {wanted} (last {self.status(job_id)})",
            lambda: self.status(job_id) == wanted,
            timeout,
        )

    def enqueue(self, category: str, func: str, *args: object, **options: Any) -> Job:
        """Enqueue ``jobs.<func>(MARKER, *args)`` and file it under ``category``."""
        job = self.queue.enqueue(f"jobs.{func}", MARKER, *args, **options)
        self.jobs[category].append(job.id)
        return job

    def start_worker(
        self, role: str, *, burst: bool, max_jobs: int | None = None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """Start ``rq worker`` on the queue in a new session, logging into the temporary folder."""
        name = f"rqstate-{self.run_id}-{role}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), env.get("PYTHONPATH", "")) if p
        )
        args = [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--url",
            self.redis_url,
            "--name",
            name,
            "--path",
            str(HERE),
        ]
        if burst:
            args.append("--burst")
        if max_jobs is not None:
            args += ["--max-jobs", str(max_jobs)]
        args.append(self.queue.name)
        with (self.logdir / f"{role}.log").open("ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return name, proc

    def wait_worker_exit(self, proc: subprocess.Popen[bytes], role: str) -> None:
        """Wait for a burst worker to finish and check that it exited cleanly."""
        try:
            code = proc.wait(timeout=WORKER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            msg = f"{role} worker did not finish within {WORKER_EXIT_TIMEOUT_S} s"
            raise StateNotReachedError(msg) from err
        if code != 0:
            msg = f"{role} worker exited with {code}"
            raise StateNotReachedError(msg)

    def logs(self) -> str:
        """Return the tail of every worker log, for error messages."""
        parts = [
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logdir.glob("*.log"))
        ]
        return "\n".join(parts)

    def kill_all(self) -> None:
        """SIGKILL every worker this script started that is still running, and its work horses."""
        for proc in self.procs:
            if proc.poll() is None:
                horses = children_of(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                for horse in horses:
                    kill_group(horse)

    # ----------------------------------------------------------------- phases

    def terminal(self) -> None:
        """Jobs that a burst worker brings to finished, failed, stopped; plus a canceled one and a blocked child."""
        # First in the queue, so the worker runs it first and the stop command finds it running.
        to_stop = self.enqueue("stopped", "sleep_for", 60, job_timeout=120)
        for _ in range(3):
            self.enqueue("finished", "ok")
        self.enqueue("finished_forever", "ok", result_ttl=-1)
        for _ in range(2):
            self.enqueue("failed", "boom")
        self.enqueue("failed_retried", "boom", retry=Retry(max=1))
        failed_parent = self.enqueue("failed_parent", "boom")
        self.enqueue("deferred_child", "ok", depends_on=failed_parent)
        finished_parent = self.enqueue("finished_parent", "ok")
        self.enqueue("finished_child", "ok", depends_on=finished_parent)
        if rq_major() >= 2:
            self.enqueue_group(2)
        canceled = self.enqueue("canceled", "ok")
        canceled.cancel()

        _, proc = self.start_worker("burst", burst=True)
        self.wait_for_status(to_stop.id, "started")
        time.sleep(STOP_GRACE_S)
        self.stop(to_stop.id)
        self.wait_worker_exit(proc, "burst")

        # A child enqueued by its parent's success lands behind the worker's last dequeue in some versions.
        for rnd in range(1, BURST_ROUNDS):
            if not any(
                self.status(i) == "queued" for ids in self.jobs.values() for i in ids
            ):
                break
            _, proc = self.start_worker(f"burst{rnd}", burst=True)
            self.wait_worker_exit(proc, f"burst{rnd}")

    def stop(self, job_id: str) -> None:
        """Stop a running job with ``send_stop_job_command`` and wait until it is ``stopped``.

        The command is a pub/sub message, so it is lost if the worker is not listening yet; while the job
        still runs after a while, send it again.
        """
        deadline = time.monotonic() + STATUS_TIMEOUT_S
        while True:
            send_stop_job_command(self.conn, job_id)
            try:
                self.wait_for_status(job_id, "stopped", timeout=STOP_RESEND_S)
            except StateNotReachedError:
                if self.status(job_id) != "started" or time.monotonic() > deadline:
                    raise
            else:
                return

    def enqueue_group(self, size: int) -> None:
        """Enqueue ``size`` successful jobs through ``rq.group.Group`` (rq 2.0+)."""
        from rq.group import Group

        group = Group.create(connection=self.conn)
        datas = [Queue.prepare_data("jobs.ok", (MARKER, n)) for n in range(size)]
        jobs = group.enqueue_many(self.queue, datas)
        self.jobs["group"].extend(job.id for job in jobs)
        self.groups.append(group.name)

    def running_job(
        self, category: str, role: str, *, burst: bool, **options: Any
    ) -> tuple[str, subprocess.Popen[bytes], int]:
        """Start a worker on a long job (enqueued with ``options``) and wait until it runs; return the worker's name, process and horse pid."""
        job = self.enqueue(
            category,
            "sleep_for",
            LONG_SLEEP_S,
            job_timeout=LONG_SLEEP_S + 300,
            **options,
        )
        name, proc = self.start_worker(role, burst=burst, max_jobs=1)
        self.wait_for_status(job.id, "started")
        horses: list[int] = []

        def horse_found() -> bool:
            horses[:] = children_of(proc.pid)
            return len(horses) == 1

        self.wait_for(f"the work horse of {role} worker {proc.pid}", horse_found)
        return name, proc, horses[0]

    def killed_worker(self) -> None:
        """A worker SIGKILLed while it runs a job: the job stays ``started`` with nobody running it."""
        name, proc, horse = self.running_job("abandoned", "doomed", burst=True)
        # dependents of the abandoned job, one accepting its failure: RQ enqueues that one
        # when the job fails (and the janitor, when it fails the job), the other stays deferred
        parent = self.jobs["abandoned"][-1]
        allowed = Dependency(jobs=[parent], allow_failure=True)
        self.enqueue("abandoned_child_allowed", "ok", depends_on=allowed)
        self.enqueue("abandoned_child", "ok", depends_on=parent)
        self._kill(name, proc, horse)

    def _kill(self, name: str, proc: subprocess.Popen[bytes], horse: int) -> None:
        """SIGKILL a worker, then its work horse, and record it as dead."""
        # The worker first: if the horse died first, the worker would notice and fail the job.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WORKER_EXIT_TIMEOUT_S)
        kill_group(horse)
        self.wait_for(f"horse {horse} to exit", lambda: not alive(horse))
        self.dead_workers.append(name)

    def killed_rate_limited(self) -> None:
        """A worker SIGKILLed while its job holds the only slot of a rate limit another job waits for (RQ 3.0+)."""
        from rq.rate_limit import RateLimit

        limit = RateLimit("rqstate", 1)
        name, proc, horse = self.running_job(
            "rate_limit_holder", "limited", burst=True, rate_limit=limit
        )
        self.enqueue("rate_limit_waiting", "ok", rate_limit=limit)
        self._kill(name, proc, horse)

    def started_worker(self) -> None:
        """A worker left running a long job; the caller kills it (worker_pids and horse_pids)."""
        name, proc, horse = self.running_job("started", "live", burst=False)
        self.workers.append(name)
        self.worker_pids.append(proc.pid)
        self.horse_pids.append(horse)

    def live(self) -> None:
        """Jobs nobody will run: two queued, one deferred on a queued job, one scheduled an hour ahead."""
        first = self.enqueue("queued", "ok")
        self.enqueue("queued", "ok")
        self.enqueue("deferred", "ok", depends_on=first)
        job = self.queue.enqueue_in(timedelta(hours=1), "jobs.ok", MARKER)
        self.jobs["scheduled"].append(job.id)

    def check(self) -> None:
        """Fail loudly unless every produced job has the status its category promises."""
        wrong = [
            f"{category} {job_id}: {self.status(job_id)} (want {EXPECTED_STATUS[category]})"
            for category, ids in self.jobs.items()
            for job_id in ids
            if self.status(job_id) != EXPECTED_STATUS[category]
        ]
        if wrong:
            raise StateNotReachedError("unexpected job states:\n" + "\n".join(wrong))

    def manifest(self) -> dict[str, Any]:
        """Return the manifest printed on stdout."""
        return {
            "rq_version": rq_version(),
            "queue": self.queue.name,
            "redis_url": self.redis_url,
            "key_prefix": key_prefix(),
            "jobs": self.jobs,
            "groups": self.groups,
            "workers": self.workers,
            "worker_pids": self.worker_pids,
            "horse_pids": self.horse_pids,
            "dead_workers": self.dead_workers,
        }


def children_of(pid: int) -> list[int]:
    """Return the pids whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Return whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a work horse leads its own), or just ``pid``."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def producing(redis_url: str, queue: str) -> Iterator[Producer]:
    """Yield a Producer; on error stop its workers and copy their log tails to stderr."""
    producer = Producer(redis_url, queue)
    try:
        yield producer
    except BaseException:
        producer.kill_all()
        sys.stderr.write(producer.logs() + "\n")
        raise
    finally:
        # A worker left running keeps writing into its unlinked log file.
        shutil.rmtree(producer.logdir, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument(
        "--with-started", action="store_true", help="leave a worker running a long job"
    )
    parser.add_argument(
        "--with-killed-worker",
        action="store_true",
        help="SIGKILL a worker while it runs a job",
    )
    parser.add_argument(
        "--with-rate-limit",
        action="store_true",
        help="rq 3.0+: SIGKILL a worker whose job holds a rate limit's only slot, another job waiting",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Produce the state and print the manifest."""
    args = parse_args(argv)
    # Turn SIGTERM (a caller's timeout) into SystemExit, so producing() stops the workers started so far.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with producing(args.redis_url, args.queue) as producer:
        producer.terminal()
        if args.with_killed_worker:
            producer.killed_worker()
        if args.with_rate_limit:
            producer.killed_rate_limited()
        if args.with_started:
            producer.started_worker()
        producer.live()
        producer.check()
        manifest = producer.manifest()
    sys.stdout.write(json.dumps(manifest) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
