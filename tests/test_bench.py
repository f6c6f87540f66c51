"""The benchmark script runs and prints every figure (a smoke test: timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import default_server_binary

FIGURES = (
    "(a) baseline loop",
    "(b) RQ API loop",
    "(c) janitor",
    "janitor / baseline",
    "janitor / RQ API",
    "janitor peak RSS",
    "PING during janitor",
    "shape per_job",
    "janitor >= 1.0x baseline",
    "janitor >= 100x RQ API",
    "RSS growth <= 30 MB",
    "PING p99 < 10 ms",
)


def test_bench_quick_prints_every_figure(repo_root: Path, tmp_path: Path) -> None:
    """``bench/run.py --quick`` with a tiny N fills, times, and reports all four targets."""
    try:
        default_server_binary()
    except RuntimeError as err:
        pytest.skip(str(err))
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "bench" / "run.py"),
            "--quick",
            "--n",
            "300",
            "--rq-n",
            "40",
            "--per-job-queues",
            "10",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=repo_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for figure in FIGURES:
        assert figure in done.stdout, figure
    results = json.loads(out.read_text())
    assert results["n"] == 300
    assert len(results["baseline_jobs_s"]) == len(results["janitor_jobs_s"]) == 1
    assert results["shapes"]["per_job"]["jobs"] == 40
    assert results["ping_janitor"]["count"] > 0
