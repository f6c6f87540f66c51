"""Virtualenvs with one pinned RQ version each, so tests can produce data with old RQ releases.

``python_for("1.16.2")`` returns the python of ``<repo>/.venvs/rq-1.16.2/``, creating that virtualenv on the
first call (``sys.executable -m venv`` plus pip). A lock file (``fcntl.flock``) makes concurrent callers, even in
separate pytest processes, wait for one another, and a marker file written last records a finished install, so
later calls only read that marker. ``python_for("current")`` is the interpreter running the tests (the project's
own ``.venv``, with the RQ version the project installs).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The RQ releases the janitor must understand: what actinia pins, the newest 2.x and the newest release.
RQ_VERSIONS = ("1.16.2", "2.12.0", "3.0.0")

#: ``python_for`` returns the interpreter running the tests for this name.
CURRENT = "current"

REPO_ROOT = Path(__file__).resolve().parent.parent
VENVS_DIR = REPO_ROOT / ".venvs"

#: Extra requirements installed next to ``rq==<version>``, checked by running a real worker with them.
#: rq 1.16.2 (January 2024) is paired with the redis-py line of its time, which is also what projects that pin
#: rq 1.16.2 use, and with click < 8.2: click 8.2 warns about the duplicate ``--serializer`` option that
#: rq 1.16's ``rq worker`` declares twice. rq 2.12.0 excludes only redis 6.0.0 (``redis!=6,>=3.5``) and runs
#: with the newest redis-py; rq 3.0.0 needs ``redis>=5.0.1``.
COMPANIONS: dict[str, tuple[str, ...]] = {
    "1.16.2": ("redis>=5.0.1,<6", "click<8.2"),
    "2.12.0": ("redis>=5.0.1,!=6.0.0",),
    "3.0.0": ("redis>=5.0.1",),
}

MARKER_NAME = ".rqenv-ready.json"
INSTALL_TIMEOUT_S = 900


class RqEnvError(RuntimeError):
    """Raised when a virtualenv for an RQ version cannot be created."""


def venv_dir(rq_version: str) -> Path:
    """Return the folder of the virtualenv for ``rq_version`` (it may not exist yet)."""
    return VENVS_DIR / f"rq-{rq_version}"


def _venv_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def requirements_for(rq_version: str) -> list[str]:
    """Return the pip requirements installed into the virtualenv for ``rq_version``."""
    return [f"rq=={rq_version}", *COMPANIONS.get(rq_version, ())]


def _marker_content(rq_version: str) -> dict[str, object]:
    return {
        "rq_version": rq_version,
        "requirements": requirements_for(rq_version),
        "base_python": sys.base_prefix,
        "python_version": list(sys.version_info[:2]),
    }


def _marker_ok(directory: Path, rq_version: str) -> bool:
    marker = directory / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    expected = _marker_content(rq_version)
    same = all(recorded.get(key) == value for key, value in expected.items())
    return same and _venv_python(directory).exists()


def _run(args: list[str], what: str) -> str:
    # A clean environment for pip: no PYTHONPATH or virtualenv of the caller leaks into the new one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        msg = f"{what} timed out after {INSTALL_TIMEOUT_S} s: {args}"
        raise RqEnvError(msg) from err
    if done.returncode != 0:
        msg = f"{what} failed ({done.returncode}): {args}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise RqEnvError(msg)
    return done.stdout


def _create(directory: Path, rq_version: str) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    _run([sys.executable, "-m", "venv", str(directory)], "creating the virtualenv")
    python = str(_venv_python(directory))
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *requirements_for(rq_version),
        ],
        f"installing rq=={rq_version}",
    )
    installed = _run(
        [python, "-c", "import importlib.metadata as m; print(m.version('rq'))"],
        "checking the rq version",
    ).strip()
    if installed != rq_version:
        msg = f"{directory} has rq {installed}, wanted {rq_version}"
        raise RqEnvError(msg)
    freeze = _run(
        [python, "-m", "pip", "freeze", "--disable-pip-version-check"],
        "listing the installed packages",
    )
    marker = {**_marker_content(rq_version), "installed": freeze.split()}
    tmp = directory / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(directory / MARKER_NAME)


def python_for(rq_version: str) -> Path:
    """Return a python that imports exactly ``rq==rq_version``, creating its virtualenv if needed.

    ``"current"`` returns ``sys.executable``. Safe to call from several processes at once: they serialize on
    ``<repo>/.venvs/rq-<version>.lock``, and all but the first find the finished virtualenv.
    """
    if rq_version == CURRENT:
        return Path(sys.executable)
    directory = venv_dir(rq_version)
    if _marker_ok(directory, rq_version):
        return _venv_python(directory)
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    lock_path = VENVS_DIR / f"rq-{rq_version}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not _marker_ok(directory, rq_version):
                _create(directory, rq_version)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return _venv_python(directory)
