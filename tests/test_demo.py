"""`janitor demo`, as a newcomer runs it: a throwaway server, real RQ state, cleaned before their eyes."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_shows_jobs_deleted_and_live_jobs_kept() -> None:
    """The demo exits 0, deletes old finished and canceled jobs, and keeps the live ones."""
    result = subprocess.run(
        [sys.executable, "-m", "janitor", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    deleted = re.search(r"expire_jobs: (\d+) jobs deleted", out)
    assert deleted is not None
    assert int(deleted.group(1)) == 21  # 12 + 4 + 3 finished, 2 canceled
    after = out.split("After:", 1)[1]
    default_row = next(
        line for line in after.splitlines() if line.strip().startswith("default")
    )
    assert default_row.split()[1:] == ["2", "1", "1", "0", "0", "4", "0"]
