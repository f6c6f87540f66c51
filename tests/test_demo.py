"""`janitor demo`, as a newcomer runs it: a throwaway server, real RQ state, cleaned before their eyes."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_jobs_deleted_and_live_jobs_kept() -> None:
    """The demo exits 0, deletes old jobs, recovers the killed worker's job, prunes queues, keeps live jobs."""
    result = subprocess.run(
        [sys.executable, "-m", "janitor", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "first pass: 21 job_deleted, 1 worker_pruned" in out
    )  # 12 + 4 + 3 finished, 2 canceled
    assert (
        "second pass: 1 job_abandoned, 4 queue_pruned" in out
    )  # 3 per_job queues and "reports"
    after = out.split("After:", 1)[1]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in after.splitlines()[2:]
        if line.strip()
    }
    assert rows["default"] == ["2", "1", "1", "0", "0", "4", "0"]
    assert rows["imports"] == ["0", "0", "0", "0", "0", "1", "0"]
