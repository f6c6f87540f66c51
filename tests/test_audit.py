"""The audit log: the contract's events only, as JSON lines with the contract's leading fields."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.processors import JSONRenderer

from janitor.audit import AuditLog, EventRows


def test_lines_carry_the_bound_context_first() -> None:
    """Every line starts with event, timestamp, run_id, task and dry_run, then the event's fields."""
    stream = io.StringIO()
    log = AuditLog(stream)
    with log.bound(run_id="r1", task="expire_jobs", dry_run=False):
        log.emit(
            "job_deleted",
            queue="q",
            job_id="j",
            status="finished",
            age_s=5,
            rule="retention.finished",
        )
    line = json.loads(stream.getvalue())
    assert list(line)[:5] == ["event", "timestamp", "run_id", "task", "dry_run"]
    assert line["timestamp"].endswith("Z")
    assert line["queue"] == "q"


def test_only_contract_events_are_accepted() -> None:
    """An event the contract does not name is refused rather than written."""
    with pytest.raises(ValueError, match="not an audit event"):
        AuditLog(io.StringIO()).emit("job_exploded")


def test_file_is_appended_to(tmp_path: Path) -> None:
    """A path appends JSON lines, keeping earlier runs' lines."""
    path = tmp_path / "logs" / "audit.jsonl"
    for run in ("a", "b"):
        log = AuditLog.open(str(path))
        with log.bound(run_id=run, task="expire_jobs", dry_run=True):
            log.emit("run_finished", counts={}, duration_s=0.1)
        log.close()
    assert [json.loads(line)["run_id"] for line in path.read_text().splitlines()] == [
        "a",
        "b",
    ]


values = st.one_of(
    st.text(),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)
names = st.sampled_from(
    ["queue", "job_id", "status", "age_s", "rule", "%s", 'we"ird', "é", "task"]
)


def reference_line(
    event: str, stamp: str, context: dict[str, object], fields: dict[str, object]
) -> str:
    """The line structlog's JSONRenderer writes for the event (what the fast paths copy)."""
    line = {"event": event, "timestamp": stamp, **context, **fields}
    line["event"], line["timestamp"] = event, stamp
    return str(JSONRenderer()(None, "info", line)) + "\n"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(values, values, values), min_size=1, max_size=4),
    st.lists(names, min_size=3, max_size=3, unique=True),
    st.text(),
)
def test_rows_and_pairs_render_as_structlogs_renderer_does(
    rows: list[tuple[object, object, object]], fields: list[str], run_id: str
) -> None:
    """EventRows and (event, fields) pairs render byte for byte as JSONRenderer would."""
    context: dict[str, object] = {
        "run_id": run_id,
        "task": "expire_jobs",
        "dry_run": False,
    }
    for batch in (
        EventRows("job_deleted", tuple(fields), list(rows)),
        [("job_deleted", dict(zip(fields, row, strict=True))) for row in rows],
    ):
        stream = io.StringIO()
        log = AuditLog(stream)
        with log.bound(**context):
            log.emit_many(batch)
        lines = stream.getvalue().splitlines(keepends=True)
        stamp = json.loads(lines[0])["timestamp"]
        assert lines == [
            reference_line(
                "job_deleted", stamp, context, dict(zip(fields, row, strict=True))
            )
            for row in rows
        ]


def test_event_rows_are_a_sequence_of_events() -> None:
    """EventRows index, slice and iterate as (event, fields) pairs."""
    rows = EventRows("job_deleted", ("queue", "age_s"), [("a", 1), ("b", 2)])
    assert list(rows) == [
        ("job_deleted", {"queue": "a", "age_s": 1}),
        ("job_deleted", {"queue": "b", "age_s": 2}),
    ]
    assert list(rows[1:]) == [("job_deleted", {"queue": "b", "age_s": 2})]
    assert len(rows) == 2
