"""Real ``rq worker`` processes for a test: started on a server's queues, stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def rq_workers(
    url: str, queues: Sequence[str], *options: str, count: int = 2
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` ``rq worker`` processes (this interpreter's rq) on ``queues``, with the repository importable.

    ``options`` go to ``rq worker`` (``--with-scheduler``, ``--worker-class ...``).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "--url", url, *options, *queues],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
