"""expire_jobs' fast path (EXPIRE_TERMINAL_JOBS) ends exactly where the reference plan ends.

The engine runs ``ExpireJobs.decide``: pages of registry entries go to one script that
deletes the plain cases itself and leaves the rest ('?') to the ordinary plan. These
tests generate job hashes of every shape (garbage included), run the reference path
(``plan`` + ``DeleteJob``) and the fast path on the same data, and compare the audit
events, the skips and the final database byte for byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.typing import EncodableT, FieldT
from structlog.testing import capture_logs

from janitor import scripts
from janitor.actions import Action, Skip
from janitor.audit import AuditLog
from janitor.config import RetentionSettings, Settings
from janitor.engine import BATCH_SIZE, run_once
from janitor.errors import LeadershipLost
from janitor.expiry import cutoff, cutoff_text
from janitor.jobs import FieldError, parse_rq_time
from janitor.keyspace import Keyspace, to_text
from janitor.leader import Fence
from janitor.policy import QueueFilter
from janitor.tasks import TASKS
from janitor.tasks.base import DECISIONS_IN_FLIGHT, Pace, TaskContext
from janitor.tasks.expire_jobs import ExpireJobs
from tests.bulk import fill_finished
from tests.engine_run import run_tasks
from tests.snapshot import snapshot

KEYS = Keyspace()
DAY = 86_400
NOW = 1_780_000_000.0
QUEUES = ("alpha", "beta", "gamma")
STATUSES = (
    b"finished",
    b"failed",
    b"stopped",
    b"canceled",
    b"queued",
    b"started",
    b"\xff\xfe",
    None,
)
RQ_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def rq_time(epoch: float, fmt: str = RQ_FORMAT) -> bytes:
    """An epoch time as RQ writes it."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime(fmt).encode()


ENDED = {
    "old": rq_time(NOW - 40 * DAY),
    "days": rq_time(NOW - 3 * DAY),
    "young": rq_time(NOW - 3600),
    "future": rq_time(NOW + 3600),
    "edge": rq_time(NOW - DAY),
    "no micros": rq_time(NOW - 40 * DAY, "%Y-%m-%dT%H:%M:%SZ"),
    "ancient": b"1965-01-01T00:00:00.000000Z",
    "bad date": b"2020-02-30T00:00:00.000000Z",
    "garbage": b"yesterday",
    "empty": b"",
    "missing": None,
}

jobs_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "queue": st.sampled_from(QUEUES),
            "registry": st.sampled_from(("finished", "failed", "canceled")),
            "hash": st.sampled_from(
                ("hash",) * 8 + ("missing", "wrong type", "no fields")
            ),
            "status": st.sampled_from(STATUSES),
            "origin": st.sampled_from(("same", "same", "same", "other", "missing")),
            "ended": st.sampled_from(list(ENDED)),
            "heartbeat": st.sampled_from((None, "old", "young")),
            "failure_ttl": st.sampled_from((None, b"3600", b"-1", b"x")),
            "score": st.sampled_from(("past", "future", "inf", "minus one")),
            "group": st.sampled_from(("none",) * 4 + ("empty", "set", "wrong type")),
            "dependents": st.sampled_from(
                ("none",) * 4 + ("finished child", "queued child", "wrong type")
            ),
            "executions": st.sampled_from(
                ("none",) * 4 + ("stale", "live hash", "wrong type")
            ),
            "started": st.sampled_from(("none",) * 4 + ("live", "stale")),
            "results": st.booleans(),
            "dependencies": st.booleans(),
        }
    ),
    min_size=1,
    max_size=12,
)

retention_strategy = st.fixed_dictionaries(
    {
        "finished": st.sampled_from((0, DAY)),
        "failed": st.sampled_from((0, 30 * DAY)),
        "stopped": st.sampled_from((0, 30 * DAY)),
        "canceled": st.sampled_from((0, DAY)),
        "keep_last": st.sampled_from((None, None, 1, 2)),
    }
)


def fill(
    client: redis.Redis, jobs: list[dict[str, Any]], *, broken_started: bool
) -> None:
    """Write the generated jobs, their registry entries and side keys."""
    for queue in QUEUES:
        client.sadd(KEYS.queues(), KEYS.queue(queue))
    if broken_started:
        client.set(KEYS.started("gamma"), b"garbage")
    for index, job in enumerate(jobs):
        job_id = (
            f"job-{index}".encode() if index % 5 else b"job:\xff-" + str(index).encode()
        )
        fill_job(client, job_id, job)


def fill_job(client: redis.Redis, job_id: bytes, job: dict[str, Any]) -> None:  # noqa: C901, PLR0912 - one branch per generated shape
    """Write one generated job."""
    queue = cast("str", job["queue"])
    key = KEYS.job(job_id)
    fields: dict[FieldT, EncodableT] = {"data": b"payload"}
    if job["status"] is not None:
        fields["status"] = job["status"]
    if job["origin"] != "missing":
        fields["origin"] = queue.encode() if job["origin"] == "same" else b"other"
    if ENDED[job["ended"]] is not None:
        fields["ended_at"] = cast("bytes", ENDED[job["ended"]])
    if job["heartbeat"] is not None:
        fields["last_heartbeat"] = rq_time(
            NOW - (40 * DAY if job["heartbeat"] == "old" else 60)
        )
    if job["failure_ttl"] is not None:
        fields["failure_ttl"] = job["failure_ttl"]
    if job["group"] == "empty":
        fields["group_id"] = b""
    elif job["group"] in {"set", "wrong type"}:
        fields["group_id"] = b"g-" + job_id
        if job["group"] == "set":
            client.sadd(KEYS.group(b"g-" + job_id), job_id)
        else:
            client.set(KEYS.group(b"g-" + job_id), b"garbage")
    if job["hash"] == "hash":
        client.hset(key, mapping=fields)
    elif job["hash"] == "no fields":
        client.hset(key, mapping={"data": b"payload"})
    elif job["hash"] == "wrong type":
        client.set(key, b"garbage")
    score = {
        "past": NOW - 10 * DAY,
        "future": NOW + 10 * DAY,
        "inf": float("inf"),
        "minus one": -1,
    }[job["score"]]
    client.zadd(getattr(KEYS, job["registry"])(queue), {job_id: score})
    if job["dependents"] == "wrong type":
        client.set(KEYS.dependents(job_id), b"garbage")
    elif job["dependents"] != "none":
        child = b"child-" + job_id
        client.sadd(KEYS.dependents(job_id), child)
        status = b"finished" if job["dependents"] == "finished child" else b"deferred"
        client.hset(KEYS.job(child), mapping={"status": status, "origin": b"beta"})
    if job["executions"] == "wrong type":
        client.set(KEYS.executions(job_id), b"garbage")
    elif job["executions"] != "none":
        client.zadd(KEYS.executions(job_id), {b"e1": NOW + 60})
        if job["executions"] == "live hash":
            client.hset(KEYS.execution(job_id, b"e1"), mapping={"id": b"e1"})
    if job["started"] != "none" and queue != "gamma":
        started_score = NOW + 600 if job["started"] == "live" else NOW - 600
        client.zadd(KEYS.started(queue), {job_id: started_score})
    if job["results"]:
        client.xadd(KEYS.results(job_id), {"type": "1"})
    if job["dependencies"]:
        client.sadd(KEYS.dependencies(job_id), b"parent")


class PlanOnly:
    """ExpireJobs without its fast path: what the engine runs then is the reference plan."""

    name = "expire_jobs"

    def plan(self, ctx: TaskContext) -> Iterator[Action | Skip]:
        """The reference plan."""
        return ExpireJobs().plan(ctx)


@contextmanager
def reference_path() -> Iterator[None]:
    """Make the engine run the reference plan instead of the fast path."""
    with mock.patch.dict(cast("dict[str, Any]", TASKS), {"expire_jobs": PlanOnly()}):
        yield


def outcome(
    client: redis.Redis, config: Settings, *, dry_run: bool, fails: bool = False
) -> tuple[list[str], list[str], dict[bytes, tuple[str, object, bool]]]:
    """Run expire_jobs; return its audit lines and skips (both sorted, without times) and the database."""
    stream = io.StringIO()
    with capture_logs() as logs:
        report = run_once(
            client,
            config,
            AuditLog(stream),
            dry_run=dry_run,
            only=["expire_jobs"],
            now=lambda: NOW,
        )
    assert report.failed_tasks == (("expire_jobs",) if fails else ())
    events = []
    for line in stream.getvalue().splitlines():
        event = json.loads(line)
        for volatile in ("timestamp", "run_id", "duration_s"):
            event.pop(volatile, None)
        events.append(json.dumps(event, sort_keys=True))
    skips = sorted(
        json.dumps(entry, sort_keys=True, default=str)
        for entry in logs
        if entry.get("event") == "job_skipped"
    )
    return sorted(events), skips, contents(client)


def contents(client: redis.Redis) -> dict[bytes, tuple[str, object, bool]]:
    """Every key's type, value and whether it has a TTL (DUMP bytes differ after RESTORE)."""
    found: dict[bytes, tuple[str, object, bool]] = {}
    readers: dict[str, Callable[[bytes], object]] = {
        "string": client.get,
        "hash": client.hgetall,
        "set": lambda key: sorted(cast("set[bytes]", client.smembers(key))),
        "zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        "stream": client.xrange,
        "list": lambda key: client.lrange(key, 0, -1),
    }
    for key in client.scan_iter(count=1000):
        raw = cast("bytes", key)
        kind = cast("bytes", client.type(raw)).decode()
        found[raw] = (kind, readers[kind](raw), client.pttl(raw) > 0)
    return found


def restore(client: redis.Redis, state: dict[bytes, tuple[bytes, int]]) -> None:
    """Put the database back to ``state``."""
    client.flushall()
    for key, (dumped, pttl) in state.items():
        client.restore(key, max(pttl, 0), dumped)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    jobs=jobs_strategy,
    retention=retention_strategy,
    broken_started=st.booleans(),
    dry_run=st.booleans(),
)
def test_fast_path_ends_where_the_reference_plan_ends(
    r: redis.Redis,
    jobs: list[dict[str, Any]],
    retention: dict[str, Any],
    broken_started: bool,
    dry_run: bool,
) -> None:
    """Same audit events, same skips, same database afterwards, for any mix of job shapes."""
    r.flushall()
    fill(r, jobs, broken_started=broken_started)
    start = snapshot(r)
    config = Settings(retention=RetentionSettings(**retention))
    with reference_path():
        expected = outcome(r, config, dry_run=dry_run)
    restore(r, start)
    assert outcome(r, config, dry_run=dry_run) == expected


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_registry_of_the_wrong_type_fails_the_task_there(
    r: redis.Redis, dry_run: bool
) -> None:
    """A registry that is not a sorted set fails the task, as in the reference plan.

    The garbage stays, and every job deleted before the task stopped is audited.
    """
    fill(r, [PLAIN, {**PLAIN, "queue": "gamma"}], broken_started=False)
    r.set(KEYS.failed("beta"), b"garbage")
    for path in (reference_path, contextlib.nullcontext):
        start = snapshot(r)
        with path():
            events, _, _ = outcome(r, Settings(), dry_run=dry_run, fails=True)
        lines = [json.loads(e) for e in events]
        failures = [e["error"] for e in lines if e["event"] == "task_failed"]
        assert len(failures) == 1
        assert failures[0].startswith("ResponseError: WRONGTYPE")
        assert r.get(KEYS.failed("beta")) == b"garbage"
        audited = {e["job_id"] for e in lines if e["event"] == "job_deleted"}
        ids = (b"job:\xff-0", b"job-1")
        gone = {to_text(job_id) for job_id in ids if not r.exists(KEYS.job(job_id))}
        assert gone == (set() if dry_run else audited)
        restore(r, start)


VARIATIONS = {
    "hash": ("missing", "wrong type", "no fields"),
    "status": STATUSES,
    "origin": ("other", "missing"),
    "ended": tuple(ENDED),
    "heartbeat": ("old", "young"),
    "failure_ttl": (b"3600", b"-1", b"x"),
    "score": ("past", "future", "inf", "minus one"),
    "group": ("empty", "set", "wrong type"),
    "dependents": ("finished child", "queued child", "wrong type"),
    "executions": ("stale", "live hash", "wrong type"),
    "started": ("live", "stale"),
    "results": (False,),
    "dependencies": (False,),
}
"""Every way a job can differ from a plain one, one at a time."""


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, values in VARIATIONS.items() for value in values],
)
@pytest.mark.parametrize(
    ("registry", "status"),
    [
        ("finished", b"finished"),
        ("failed", b"failed"),
        ("failed", b"stopped"),
        ("canceled", b"canceled"),
    ],
)
def test_each_shape_ends_as_the_reference_plan_ends(
    r: redis.Redis, field: str, value: object, registry: str, status: bytes
) -> None:
    """A plain old job and one that differs in a single way, beside plain ones: both paths agree."""
    plain = {**PLAIN, "registry": registry, "status": status}
    jobs = [plain, {**plain, field: value}, plain]
    for dry_run in (False, True):
        r.flushall()
        fill(r, jobs, broken_started=False)
        start = snapshot(r)
        with reference_path():
            expected = outcome(r, Settings(), dry_run=dry_run)
        restore(r, start)
        assert outcome(r, Settings(), dry_run=dry_run) == expected


def test_dry_run_writes_nothing_and_reports_the_real_runs_deletes(
    r: redis.Redis,
) -> None:
    """A dry run of the fast path leaves the database as it was and audits what a real run deletes."""
    jobs = [
        {**PLAIN, "ended": ended, "registry": registry, "status": status}
        for ended in ("old", "young")
        for registry, status in (("finished", b"finished"), ("failed", b"failed"))
    ]
    fill(r, jobs * 3, broken_started=False)
    before = snapshot(r)
    dry_events, _, _ = outcome(r, Settings(), dry_run=True)
    assert snapshot(r) == before
    real_events, _, _ = outcome(r, Settings(), dry_run=False)
    assert len(dry_events) == len(real_events) == 6 + 1  # six deletes and run_finished
    assert [
        e.replace('"dry_run": true', '"dry_run": false') for e in dry_events
    ] == real_events


PLAIN: dict[str, Any] = {
    "queue": "alpha",
    "registry": "finished",
    "hash": "hash",
    "status": b"finished",
    "origin": "same",
    "ended": "old",
    "heartbeat": None,
    "failure_ttl": None,
    "score": "inf",
    "group": "none",
    "dependents": "none",
    "executions": "none",
    "started": "none",
    "results": True,
    "dependencies": True,
}
"""A finished job past its retention, with a result stream and a dependencies set."""


def context(client: redis.Redis, pace: Pace | None = None) -> TaskContext:
    """A fast-path planning context at NOW with the default settings."""
    config = Settings()
    return TaskContext(
        client, KEYS, config, NOW, QueueFilter.build(config.rq), pace=pace or Pace()
    )


def test_big_pages_delete_everything_completely(r: redis.Redis) -> None:
    """Pages beyond the script's 1000-argument chunks delete every job with all its keys."""
    fill(
        r,
        [{**PLAIN, "queue": queue} for queue in ("alpha", "beta") for _ in range(700)],
        broken_started=False,
    )
    ctx = context(r, Pace(maximum=2400))
    deleted = 0
    for page in ExpireJobs().decide(ctx):
        assert not isinstance(page, (Action, Skip))
        assert len(page) <= 1200
        decided = page.send(r, None, dry_run=False)()
        deleted += len(decided.events)
        assert list(decided.rest) == []
    assert deleted == 1400
    assert sorted(cast("list[bytes]", r.keys())) == [KEYS.queues()]


def test_pages_sent_before_the_engine_reads_the_ones_before_take_each_job_once(
    r: redis.Redis,
) -> None:
    """Pages sent before the engine read the answers before them delete each job exactly once, and leave no janitor key."""
    young = {**PLAIN, "ended": "young"}
    jobs = [PLAIN] * 150 + [young] * 40 + [PLAIN] * 150
    fill(
        r,
        [{**job, "queue": queue} for queue in ("alpha", "beta") for job in jobs],
        broken_started=False,
    )
    r.script_load(scripts.memoized(scripts.EXPIRE_TERMINAL_JOBS))  # no NOSCRIPT retries
    ctx = context(r, Pace(maximum=100))  # pages of 50 entries
    pages = iter(ExpireJobs().decide(ctx))
    receivers = []
    for page in pages:
        assert not isinstance(page, (Action, Skip))
        receivers.append(page.send(r, None, dry_run=False))  # none answered yet
        if len(receivers) == 6:
            break
    deleted = [
        fields["job_id"] for receive in receivers for _, fields in receive().events
    ]
    for page in pages:  # the rest, answered one by one
        assert not isinstance(page, (Action, Skip))
        deleted += [f["job_id"] for _, f in page.send(r, None, dry_run=False)().events]
    assert len(deleted) == len(set(deleted)) == 600
    assert r.zcard(KEYS.finished("alpha")) == r.zcard(KEYS.finished("beta")) == 40
    assert list(r.scan_iter(match=b"janitor:*")) == []  # the memos are gone


def test_a_page_with_a_stale_lease_token_writes_nothing(r: redis.Redis) -> None:
    """A page sent with a lease token that no longer matches raises and deletes nothing."""
    fill(r, [PLAIN] * 3, broken_started=False)
    r.set("janitor:leader", b"someone-else")
    before = snapshot(r)
    page = next(iter(ExpireJobs().decide(context(r))))
    assert not isinstance(page, (Action, Skip))
    receive = page.send(r, Fence(b"janitor:leader", b"mine"), dry_run=False)
    with pytest.raises(LeadershipLost):
        receive()
    with pytest.raises(LeadershipLost):  # the engine reads it again when it drains
        receive()
    assert snapshot(r) == before


def test_job_changed_after_the_page_was_made_is_judged_as_it_is_now(
    r: redis.Redis,
) -> None:
    """The script reads the job when it runs: a job requeued before it runs stays."""
    fill(r, [PLAIN, PLAIN], broken_started=False)
    page = next(iter(ExpireJobs().decide(context(r))))
    r.hset(KEYS.job(b"job-1"), "status", b"queued")
    assert not isinstance(page, (Action, Skip))
    decided = page.send(r, None, dry_run=False)()
    assert [fields["job_id"] for _, fields in decided.events] == ["job:\\xff-0"]
    assert list(decided.rest) == []  # a queued job in the finished registry: left alone
    assert r.hget(KEYS.job(b"job-1"), "status") == b"queued"


def test_pages_must_be_sent_in_order(r: redis.Redis) -> None:
    """Asking for the next page before sending this one is refused: it needs the cursors."""
    fill(r, [PLAIN] * 3, broken_started=False)
    pages = iter(ExpireJobs().decide(context(r)))
    next(pages)
    with pytest.raises(RuntimeError, match="sent before the next"):
        next(pages)


def test_pages_stay_within_the_audit_bound() -> None:
    """Pages in flight together never hold more than BATCH_SIZE jobs."""
    pace = Pace()
    assert pace.decision_size * DECISIONS_IN_FLIGHT <= BATCH_SIZE
    pace.record(pace.decision_size, 1.0)  # very slow: shrink to the minimum
    assert pace.size == pace.minimum
    for _ in range(20):
        pace.record(pace.size, 0.0001)  # fast again: grow, at most doubling
    assert pace.size == pace.maximum


def script_accepts(client: redis.Redis, values: list[bytes]) -> list[bool]:
    """The script's verdict on each value: RQ's time format, and a real moment?"""
    body = (
        scripts._RQ_TIME
        + "local out = {} for i, v in ipairs(ARGV) do "
        + "out[i] = rq_time_ok(v) and 1 or 0 end return out"
    )
    reply = client.eval(body, 0, *values)
    return [bool(value) for value in cast("list[int]", reply)]


def python_accepts(value: bytes) -> bool:
    """What the fast path must agree with: parse_rq_time, in the script's strict format."""
    try:
        parsed = parse_rq_time(value)
    except FieldError:
        return False
    return parsed is not None and len(value) == 27 and 1970 <= int(value[:4]) <= 2200


def script_before(client: redis.Redis, pairs: list[tuple[bytes, bytes]]) -> list[bool]:
    """The script's comparison ``a <= b`` of each pair of RQ times."""
    body = (
        "local out = {} for i = 1, #ARGV, 2 do "
        "out[#out + 1] = ARGV[i] <= ARGV[i + 1] and 1 or 0 end return out"
    )
    flat = [value for pair in pairs for value in pair]
    return [bool(v) for v in cast("list[int]", client.eval(body, 0, *flat))]


def exact_micros(value: bytes) -> int:
    """Microseconds since the epoch of an RQ time, exactly (no float)."""
    moment = dt.datetime.strptime(value.decode(), RQ_FORMAT).replace(tzinfo=dt.UTC)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        microseconds=1
    )


def test_the_scripts_time_cutoffs_order_as_python_does(r: redis.Redis) -> None:
    """An ended_at is at or before a cutoff for the script exactly when it is in time."""
    rng = random.Random(7)
    now = NOW + 0.123456
    pairs: list[tuple[bytes, bytes]] = []
    expected: list[bool] = []
    for age in (1, 59, 3600, DAY, 40 * DAY, 365 * DAY, 50 * 365 * DAY):
        edge = cutoff(now, age)
        past = cutoff_text(edge)
        assert exact_micros(past) == edge == int(now * 1_000_000) - age * 1_000_000
        for _ in range(300):
            micros = rng.choice(
                [rng.randrange(0, 7_200_000_000_000_000), edge + rng.randrange(-3, 4)]
            )
            value = rq_time(micros / 1_000_000)
            pairs.append((value, past))
            expected.append(exact_micros(value) <= edge)
    assert script_before(r, pairs) == expected
    always = cutoff_text(cutoff(now, 0))  # "0s": past every time the script accepts
    assert script_before(r, [(b"2200-12-31T23:59:59.999999Z", always)]) == [True]
    too_old = cutoff_text(cutoff(now, 3000 * 365 * DAY))  # nothing is that old
    assert too_old == b"1969-12-31T23:59:59.999999Z"


def test_the_scripts_rq_time_agrees_with_python(r: redis.Redis) -> None:
    """The script accepts exactly the times Python reads in RQ's format, from 1970 to 2200."""
    rng = random.Random(6)
    values = [rq_time(rng.uniform(0, 7_200_000_000)) for _ in range(3000)] + [
        b"2024-02-29T12:00:00.000001Z",
        b"2023-02-29T12:00:00.000000Z",
        b"2100-02-29T00:00:00.000000Z",
        b"2000-02-29T23:59:59.999999Z",
        b"2026-04-31T00:00:00.000000Z",
        b"2026-13-01T00:00:00.000000Z",
        b"2026-00-01T00:00:00.000000Z",
        b"2026-01-00T00:00:00.000000Z",
        b"2026-01-01T24:00:00.000000Z",
        b"2026-01-01T00:60:00.000000Z",
        b"2026-01-01T00:00:60.000000Z",
        b"2026-01-01T00:00:00.00000aZ",
        b"2026-01-01 00:00:00.000000Z",
        b"2026-01-01T00:00:00.000000+",
        b"2026-1-01T00:00:00.0000000Z",
        b"1969-12-31T23:59:59.999999Z",
        b"2201-01-01T00:00:00.000000Z",
        b"2026-01-01T00:00:00Z",
        b"",
    ]
    assert script_accepts(r, values) == [python_accepts(value) for value in values]


def test_keep_last_is_reached_in_one_run(r: redis.Redis) -> None:
    """Entries the planner deletes behind the walk (keep_last caps) make it pass over none."""
    fill_finished(r, "capped", 1_000, age_s=60)  # young: only the cap deletes them
    settings = Settings(retention=RetentionSettings(keep_last=10))
    _, lines = run_tasks(r, settings, only=["expire_jobs"])
    assert sum(1 for line in lines if line["event"] == "job_deleted") == 990
    assert r.zcard(Keyspace().finished("capped")) == 10
