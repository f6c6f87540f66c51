"""Property: however RQ operations and janitor passes interleave, the janitor deletes only terminal jobs."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from typing import cast

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from rq import Queue, Retry, SimpleWorker
from rq.job import Dependency, Job

from janitor.audit import AuditLog
from janitor.config import RetentionSettings, Settings
from janitor.dependencies import dependents_bound
from janitor.engine import run_once
from janitor.jobs import LIVE_STATUSES, TERMINAL_STATUSES
from janitor.keyspace import Keyspace
from tests import funcs

KEYS = Keyspace()
QUEUES = ("alpha", "beta")
ZERO = Settings(
    retention=RetentionSettings(finished=0, failed=0, stopped=0, canceled=0)
)
BOUND = dependents_bound(ZERO.retention)
"""How long past its due time a waiting dependent keeps its parent (a day, with zero retention)."""


class JanitorAmongRq(RuleBasedStateMachine):
    """RQ enqueues, works, cancels and requeues; the janitor passes with zero retention in between."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        client.flushall()
        self.queues = {name: Queue(name, connection=client) for name in QUEUES}
        self.jobs: list[str] = []
        self.deleted: dict[str, str] = {}
        """Job id -> the status it had when the janitor deleted it."""
        self.ages: dict[str, int] = {}
        """Job id -> its age when the janitor deleted it (with zero retention: how long it was due)."""
        self.clock = 0.0

    def status(self, job_id: str) -> str | None:
        """The job's status as stored, or None when the hash is gone."""
        raw = cast("bytes | None", self.client.hget(KEYS.job(job_id), "status"))
        return raw.decode() if raw else None

    @rule(queue=st.sampled_from(QUEUES), fail=st.booleans(), retry=st.booleans())
    def enqueue(self, queue: str, fail: bool, retry: bool) -> None:
        """Enqueue a job that succeeds or fails, maybe with a retry."""
        func = funcs.record_and_fail if fail else funcs.record
        job = self.queues[queue].enqueue(func, retry=Retry(max=1) if retry else None)
        self.jobs.append(job.id)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), queue=st.sampled_from(QUEUES), allow_failure=st.booleans())
    def enqueue_dependent(
        self, data: st.DataObject, queue: str, allow_failure: bool
    ) -> None:
        """Enqueue a job that depends on an existing one."""
        parent = data.draw(st.sampled_from(self.jobs))
        if self.status(parent) is None:
            return
        dependency = Dependency(jobs=[parent], allow_failure=allow_failure)
        job = self.queues[queue].enqueue(funcs.record, depends_on=dependency)
        self.jobs.append(job.id)

    @rule(queue=st.sampled_from(QUEUES))
    def schedule(self, queue: str) -> None:
        """Schedule a job for an hour from now."""
        self.jobs.append(
            self.queues[queue].enqueue_in(timedelta(hours=1), funcs.record).id
        )

    @rule(queue=st.sampled_from(QUEUES), max_jobs=st.integers(1, 3))
    def work(self, queue: str, max_jobs: int) -> None:
        """A real RQ worker performs a few jobs of the queue."""
        SimpleWorker([self.queues[queue]], connection=self.client).work(
            burst=True, max_jobs=max_jobs
        )

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a queued or deferred job."""
        job_id = data.draw(st.sampled_from(self.jobs))
        if self.status(job_id) in {"queued", "deferred"}:
            Job.fetch(job_id, connection=self.client).cancel()

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def requeue_failed(self, data: st.DataObject) -> None:
        """Requeue a failed job from the failed registry."""
        job_id = data.draw(st.sampled_from(self.jobs))
        if self.status(job_id) == "failed":
            origin = cast(
                "bytes", self.client.hget(KEYS.job(job_id), "origin")
            ).decode()
            self.queues[origin].failed_job_registry.requeue(job_id)

    @rule(dry_run=st.booleans(), advance=st.integers(0, 3 * 86_400))
    def janitor_pass(self, dry_run: bool, advance: int) -> None:
        """All janitor tasks once, zero retention; only terminal jobs may go, each with its audit line."""
        self.clock += advance
        before = {job_id: self.status(job_id) for job_id in self.jobs}
        stream = io.StringIO()
        report = run_once(
            self.client,
            ZERO,
            AuditLog(stream),
            dry_run=dry_run,
            now=lambda: _now() + self.clock,
        )
        assert report.failed_tasks == ()
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        deleted = {e["job_id"]: e for e in events if e["event"] == "job_deleted"}
        for job_id, status in before.items():
            after = self.status(job_id)
            if status is not None and after is None:
                assert not dry_run, job_id
                assert job_id in deleted, job_id
                assert status in TERMINAL_STATUSES, (job_id, status)
                self.deleted[job_id] = status
                self.ages[job_id] = deleted[job_id]["age_s"]
            if status in LIVE_STATUSES:
                assert after == status, (job_id, status, after)

    @invariant()
    def waiting_children_keep_their_parents(self) -> None:
        """A deferred job's parents are all there, unless deleted as finished or due longer than the bound."""
        for job_id in self.jobs:
            if self.status(job_id) != "deferred":
                continue
            for raw in cast(
                "set[bytes]", self.client.smembers(KEYS.dependencies(job_id))
            ):
                parent = raw.decode()
                assert (
                    self.status(parent) is not None
                    or self.deleted.get(parent) == "finished"
                    or self.ages.get(parent, 0) >= BOUND  # age_s is whole seconds
                ), (job_id, parent)

    def teardown(self) -> None:
        """Drain everything that can run: every job that RQ enqueued must have run."""
        for _ in range(
            len(self.jobs) + 1
        ):  # dependents of one queue may land in the other
            SimpleWorker(list(self.queues.values()), connection=self.client).work(
                burst=True
            )
            if not any(q.count for q in self.queues.values()):
                break
        ran = {
            m.decode() for m in cast("set[bytes]", self.client.smembers(funcs.RAN_KEY))
        }
        for job_id in self.jobs:
            status = self.status(job_id) or self.deleted.get(job_id)
            assert status is not None, job_id  # gone without a job_deleted line: lost
            if status in {"finished", "failed"}:
                assert job_id in ran, (
                    job_id
                )  # it ran, and the app's own key survived every pass
            else:
                assert status in {"scheduled", "deferred", "canceled"}, (job_id, status)


def _now() -> float:
    """The real time; the machine's clock is moved forward by ``self.clock``."""
    return time.time()


@pytest.mark.slow
@pytest.mark.timeout(
    360
)  # about 65 s alone; twice the default's 120 s on a loaded 2-core machine
def test_janitor_never_deletes_a_live_job(r: redis.Redis) -> None:
    """Random interleavings of RQ operations and janitor passes never lose a live job or an audit line."""
    run_state_machine_as_test(
        lambda: JanitorAmongRq(r),  # type: ignore[arg-type]  # any factory works
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.function_scoped_fixture,
            ],
        ),
    )
