"""`janitor demo`, as a newcomer runs it: a throwaway server, real RQ state, cleaned before their eyes."""

from __future__ import annotations

import re
import subprocess
import sys

from janitor.demo import COLUMNS

LIVE = ("queued", "deferred", "scheduled")


def table(out: str, title: str) -> dict[str, dict[str, int]]:
    """The demo's table under ``title``: per queue, the count of each column."""
    section = out.split(f"{title}:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in section.splitlines()[2:]:
        parts = line.split()
        if len(parts) == len(COLUMNS) + 1 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = dict(zip(COLUMNS, map(int, parts[1:]), strict=True))
    return rows


def test_demo_cleans_what_is_dead_and_keeps_what_lives() -> None:
    """The demo exits 0; its passes delete old jobs, prune the dead worker, recover its job and prune drained queues; live jobs stay."""
    result = subprocess.run(
        [sys.executable, "-m", "janitor", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    first = re.search(r"first pass: (\d+) job_deleted, (\d+) worker_pruned", out)
    second = re.search(r"second pass: (\d+) job_abandoned, (\d+) queue_pruned", out)
    assert first, out
    assert second, out
    deleted, workers = int(first[1]), int(first[2])
    abandoned, queues = int(second[1]), int(second[2])
    assert deleted > 0
    assert workers >= 1
    assert abandoned == 1, "the killed worker's job, and nothing else"
    assert queues >= 1

    before, after = table(out, "Before"), table(out, "After")
    assert before
    assert after
    assert set(after) < set(before), "drained queues are pruned, none appears"
    for queue, counts in after.items():
        for column in LIVE:
            assert counts[column] == before[queue][column], (queue, column)
        assert counts["started"] == 0, "the abandoned job left the started registry"
    assert sum(c["started"] for c in before.values()) == 1
    terminal = ("finished", "failed", "canceled")
    kept = sum(c[k] for c in after.values() for k in terminal)
    had = sum(c[k] for c in before.values() for k in terminal)
    assert kept == had - deleted + abandoned, "the recovered job is now failed"
