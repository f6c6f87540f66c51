"""The audit log: the contract's events only, as JSON lines with the contract's leading fields."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from janitor.audit import AuditLog


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
