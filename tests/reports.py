"""What the report and explain tests share: secrets that must never show, the documented JSON shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import redis
from rq.job import Job

from tests import funcs
from tests.rqstate import MARKER, SECRET_ERROR

SECRETS = (MARKER, SECRET_ERROR, funcs.SECRET, "hunter2")
"""Payloads, exception texts and passwords: none may appear in a report or explain output."""
DOCS = Path(__file__).resolve().parent.parent / "docs" / "report.md"


def ended_at(client: redis.Redis, job_id: str) -> float:
    """A job's ``ended_at`` as epoch seconds, read through RQ."""
    job = Job.fetch(job_id, connection=client)
    assert job.ended_at is not None
    return job.ended_at.timestamp()


def leak(report: dict[str, Any], kind: str) -> dict[str, Any]:
    """The leak object of one kind."""
    found: list[dict[str, Any]] = [i for i in report["leaks"] if i["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def json_examples() -> list[dict[str, Any]]:
    """The ```json blocks of docs/report.md: the report example, then the explain example."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return [json.loads(block) for block in blocks]


def assert_same_shape(example: Any, actual: Any, path: str = "$") -> None:
    """Assert ``actual`` has exactly the documented keys, recursively, with compatible types."""
    if path.endswith(".by_kind"):
        assert isinstance(actual, dict), path
        assert all(isinstance(v, int) for v in actual.values()), path
        return
    if isinstance(example, dict):
        assert isinstance(actual, dict), path
        assert set(actual) == set(example), (path, set(actual) ^ set(example))
        for key, value in example.items():
            assert_same_shape(value, actual[key], f"{path}.{key}")
    elif isinstance(example, list):
        assert isinstance(actual, list), path
        for item in actual if example else []:
            assert_same_shape(example[0], item, f"{path}[]")
    elif example is not None and actual is not None:
        number = (int, float)
        same = isinstance(actual, number) and not isinstance(actual, bool)
        wanted = isinstance(example, number) and not isinstance(example, bool)
        assert same == wanted, path
        assert wanted or type(actual) is type(example), path
