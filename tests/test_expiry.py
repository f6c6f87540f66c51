"""One expiry rule: Python's answer (janitor/expiry.py) and the fast path's Lua judge agree on every job, at the cutoff too."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor.actions import Action, Skip
from janitor.config import RetentionSettings, Settings
from janitor.expiry import cutoff, cutoff_text, expiry, micros, past_age, terminal_end
from janitor.jobs import JOB_FIELDS, FieldError, JobFields
from janitor.keyspace import Keyspace
from janitor.policy import QueueFilter, retention_for
from janitor.tasks.base import Pace, TaskContext
from janitor.tasks.expire_jobs import ExpireJobs
from janitor.tasks.expire_jobs.fast import ScanPage

KEYS = Keyspace()
NOW = 1_780_000_000.654321
DAY = 86_400
QUEUE = "q"
KIND_OF = {
    "finished": "finished",
    "failed": "failed",
    "stopped": "failed",
    "canceled": "canceled",
}
AGES = (0, 1, 3600, DAY, 30 * DAY)


class TestRule:
    """The rule itself, without Redis."""

    @pytest.mark.parametrize("max_age", AGES[1:])
    def test_the_cutoff_is_exact_to_the_microsecond(self, max_age: int) -> None:
        """A job that ended exactly max_age ago is past; one a microsecond later is not."""
        edge = (math.floor(NOW * 1_000_000) - max_age * 1_000_000) / 1_000_000
        assert past_age(edge, NOW, max_age)
        assert not past_age(edge + 0.000001, NOW, max_age)

    def test_zero_means_whatever_the_age(self) -> None:
        """With "0s" even a job that ends in the future is past."""
        assert past_age(NOW + 10 * 365 * DAY, NOW, 0)

    def test_micros_recovers_rq_times_exactly(self) -> None:
        """RQ's times parsed to floats come back as their exact microseconds."""
        for value in range(
            1_700_000_000_000_000, 1_700_000_000_000_000 + 2_000_000, 997
        ):
            assert micros(value / 1_000_000) == value

    def test_a_cap_makes_a_young_job_due_by_the_cap_rule(self) -> None:
        """Beyond keep_last, a job not yet past its age is due at once, by the cap rule."""
        retention = retention_for(
            RetentionSettings(finished=DAY, keep_last=1), QUEUE, "finished"
        )
        young = expiry(end=NOW - 60, retention=retention, capped=True, now=NOW)
        assert (young.due, young.rule) == (True, retention.cap_rule)
        old = expiry(end=NOW - 2 * DAY, retention=retention, capped=True, now=NOW)
        assert (old.due, old.rule) == (True, retention.age_rule)
        kept = expiry(end=NOW - 60, retention=retention, capped=False, now=NOW)
        assert (kept.due, kept.at) == (False, NOW - 60 + DAY)

    def test_no_end_time_means_never_by_age(self) -> None:
        """Without an end time a job is due only by a cap."""
        retention = retention_for(RetentionSettings(), QUEUE, "failed")
        assert not expiry(end=None, retention=retention, capped=False, now=NOW).due


ended_at = st.one_of(
    st.tuples(st.just("edge"), st.integers(-3, 3)),
    st.tuples(st.just("any"), st.integers(0, 7_000_000_000_000_000)),
    st.sampled_from(
        [
            ("raw", b""),
            ("raw", b"yesterday"),
            ("raw", b"2026-01-01T00:00:00Z"),
            ("raw", b"2020-02-30T00:00:00.000000Z"),
            ("raw", None),
        ]
    ),
)
jobs = st.lists(
    st.fixed_dictionaries(
        {
            "status": st.sampled_from(
                ("finished", "failed", "stopped", "canceled", "queued", "started")
            ),
            "registry": st.sampled_from(("finished", "failed", "canceled")),
            "origin": st.sampled_from((QUEUE, QUEUE, QUEUE, "elsewhere")),
            "ended": ended_at,
            "score": st.sampled_from((NOW - DAY, NOW + DAY, math.inf, -1.0)),
        }
    ),
    min_size=1,
    max_size=25,
)
retentions = st.fixed_dictionaries({state: st.sampled_from(AGES) for state in KIND_OF})


def ended_text(job: dict[str, Any], max_age: int) -> bytes | None:
    """The job's ended_at: near its status's cutoff, anywhere, or something odd."""
    how, value = job["ended"]
    if how == "edge":
        edge = (
            cutoff(NOW, max_age) if max_age else math.floor(NOW * 1e6) - DAY * 1_000_000
        )
        return cutoff_text(edge + value)
    if how == "any":
        return cutoff_text(value)
    return cast("bytes | None", value)


def python_says(job: dict[str, Any], raw_ended: bytes | None, config: Settings) -> bool:
    """Whether expire_jobs' rule deletes the job (none of these has dependents or a group)."""
    statuses = [s for s, kind in KIND_OF.items() if kind == job["registry"]]
    if job["status"] not in statuses or job["origin"] != QUEUE:
        return False
    fields = {
        "status": job["status"].encode(),
        "origin": job["origin"].encode(),
        "ended_at": raw_ended,
    }
    reply = [fields.get(name) for name in JOB_FIELDS]
    try:
        end = terminal_end(
            job["registry"], job["score"], JobFields.from_reply(b"x", reply)
        )
    except FieldError:
        return False
    retention = retention_for(config.retention, QUEUE, job["status"])
    return expiry(end=end, retention=retention, capped=False, now=NOW).due


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=jobs, ages=retentions)
def test_the_lua_judge_agrees_with_the_python_rule(
    r: redis.Redis, generated: list[dict[str, Any]], ages: dict[str, int]
) -> None:
    """Every job the script deletes the rule deletes; every well-formed job the rule deletes (or keeps) the script deletes (or keeps)."""
    r.flushall()
    config = Settings(
        retention=RetentionSettings(
            finished=ages["finished"],
            failed=ages["failed"],
            stopped=ages["stopped"],
            canceled=ages["canceled"],
        )
    )
    expected: dict[bytes, bool] = {}
    plain: set[bytes] = set()
    r.sadd(KEYS.queues(), KEYS.queue(QUEUE))
    for index, job in enumerate(generated):
        job_id = f"job-{index}".encode()
        raw = ended_text(job, ages.get(job["status"], 0))
        r.hset(KEYS.job(job_id), "status", job["status"])
        r.hset(KEYS.job(job_id), "origin", job["origin"])
        if raw is not None:
            r.hset(KEYS.job(job_id), "ended_at", raw)
        r.zadd(getattr(KEYS, job["registry"])(QUEUE), {job_id: job["score"]})
        expected[job_id] = python_says(job, raw, config)
        in_its_registry = KIND_OF.get(job["status"]) == job["registry"]
        if job["ended"][0] != "raw" and job["origin"] == QUEUE and in_its_registry:
            plain.add(job_id)

    ctx = TaskContext(
        r,
        KEYS,
        config,
        NOW,
        QueueFilter.build(config.rq),
        dry_run=True,
        pace=Pace(maximum=1000),
    )
    deleted: set[bytes] = set()
    answered_back: set[bytes] = set()
    for page in ExpireJobs().decide(ctx):
        assert not isinstance(page, (Action, Skip))
        decided = page.send(r, None, dry_run=True)()
        deleted |= {str(f["job_id"]).encode() for _, f in decided.events}
        if isinstance(page, ScanPage):
            answered_back |= {i for _, entries in page.planned for i in entries}
    assert all(expected[job_id] for job_id in deleted), (
        "the script deleted a job the rule keeps"
    )
    for job_id in plain:
        assert job_id not in answered_back, "a plain case is never left to the planner"
        assert (job_id in deleted) == expected[job_id], job_id
