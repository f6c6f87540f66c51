"""The janitor command in a test: a real ``python -m janitor`` process, and its audit log read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.servers import RedisServer


def clean_env() -> dict[str, str]:
    """This process's environment without JANITOR_* variables, for a janitor process of a test's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}


def janitor(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m janitor ARGS`` (this interpreter unless ``python``) with a clean JANITOR_* environment."""
    return subprocess.run(
        [python, "-m", "janitor", *args],
        capture_output=True,
        text=True,
        env={**clean_env(), **(env or {})},
        timeout=timeout,
        check=False,
    )


def run_once_cli(
    config_file: Path, server: RedisServer
) -> subprocess.CompletedProcess[str]:
    """``janitor run --once`` with the test's config file against the test's server."""
    return janitor("run", "--once", "-c", str(config_file), "--redis-url", server.url)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of an audit log file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def daemon(
    config_file: Path, stderr_path: Path, *, python: str = sys.executable
) -> subprocess.Popen[bytes]:
    """Start ``python -m janitor run -c FILE`` (the daemon, logging JSON to ``stderr_path``) with a clean environment."""
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [
                python,
                "-m",
                "janitor",
                "run",
                "-c",
                str(config_file),
                "--log-format",
                "json",
            ],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
