"""Virtualenvs for the compat tests, each installed from a lock in ``requirements/``.

``python_for("1.16.2")`` returns the python of ``<repo>/.venvs/rq-1.16.2/``, created on the first call from
``requirements/rq-1.16.2.txt`` (exact versions, hash-checked); ``python_for(FLOORS)`` the python of
``.venvs/floors/``, which holds the lowest version of every runtime dependency that ``pyproject.toml`` allows
(``requirements/floors.txt``) and the package's source on its path. A lock file (``fcntl.flock``) makes
concurrent callers, even in separate pytest processes, wait for one another, and a marker file written last
records a finished install (with the lock's digest, so a refreshed lock makes a new virtualenv); later calls
only read that marker. ``python_for("current")`` is the interpreter running the tests.

With ``JANITOR_TEST_LATEST=1`` (``./scripts/test --latest``) the RQ virtualenvs live in ``.venvs-latest/``
and take the newest releases that ``requirements/rq-<version>.in`` allows, to show what a lock refresh
would bring; the floors stay the floors.
"""

from __future__ import annotations

import fcntl
import hashlib
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

#: ``python_for`` returns the virtualenv of the dependency floors for this name.
FLOORS = "floors"

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS_DIR = REPO_ROOT / "requirements"
LATEST = os.environ.get("JANITOR_TEST_LATEST") == "1"
VENVS_DIR = REPO_ROOT / (".venvs-latest" if LATEST else ".venvs")

MARKER_NAME = ".rqenv-ready.json"
INSTALL_TIMEOUT_S = 900


class RqEnvError(RuntimeError):
    """Raised when a virtualenv for an RQ version cannot be created."""


def venv_dir(name: str) -> Path:
    """Return the folder of the virtualenv for an RQ version or ``FLOORS`` (it may not exist yet)."""
    return VENVS_DIR / (FLOORS if name == FLOORS else f"rq-{name}")


def _venv_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def requirements_file(name: str) -> Path:
    """Return the file the virtualenv for ``name`` is installed from: its lock, or in latest mode its ``.in``."""
    if name == FLOORS:
        return REQUIREMENTS_DIR / "floors.txt"
    return REQUIREMENTS_DIR / f"rq-{name}.{'in' if LATEST else 'txt'}"


def pip_arguments(name: str) -> list[str]:
    """Return what ``pip install`` gets for the virtualenv of ``name``: exactly its lock, hash-checked."""
    path = requirements_file(name)
    if path.suffix == ".in":
        return ["--upgrade", "-r", str(path)]
    return ["--require-hashes", "--no-deps", "-r", str(path)]


def _marker_content(name: str) -> dict[str, object]:
    requirements = requirements_file(name)
    return {
        "name": name,
        "requirements": requirements.name,
        "digest": hashlib.sha256(requirements.read_bytes()).hexdigest(),
        "base_python": sys.base_prefix,
        "python_version": list(sys.version_info[:2]),
    }


def _marker_ok(directory: Path, name: str) -> bool:
    marker = directory / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    expected = _marker_content(name)
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


def _create(directory: Path, name: str) -> None:
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
            *pip_arguments(name),
        ],
        f"installing {requirements_file(name).name}",
    )
    if name == FLOORS:
        # The package itself from this checkout, as an editable install would put it: a path entry. Its
        # dependencies are the floors' own; the build backend is not among them, so pip cannot install it.
        purelib = _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            "finding site-packages",
        ).strip()
        (Path(purelib) / "rq_janitor_checkout.pth").write_text(f"{REPO_ROOT}\n")
    else:
        installed = _run(
            [python, "-c", "import importlib.metadata as m; print(m.version('rq'))"],
            "checking the rq version",
        ).strip()
        if installed != name:
            msg = f"{directory} has rq {installed}, wanted {name}"
            raise RqEnvError(msg)
    freeze = _run(
        [python, "-m", "pip", "freeze", "--disable-pip-version-check"],
        "listing the installed packages",
    )
    marker = {**_marker_content(name), "installed": freeze.split()}
    tmp = directory / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(directory / MARKER_NAME)


def python_for(rq_version: str) -> Path:
    """Return a python that imports exactly ``rq==rq_version`` (or the floors), creating its virtualenv if needed.

    ``"current"`` returns ``sys.executable``. Safe to call from several processes at once: they serialize on
    ``<repo>/.venvs/<name>.lock``, and all but the first find the finished virtualenv.
    """
    if rq_version == CURRENT:
        return Path(sys.executable)
    directory = venv_dir(rq_version)
    if _marker_ok(directory, rq_version):
        return _venv_python(directory)
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    lock_path = VENVS_DIR / f"{directory.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not _marker_ok(directory, rq_version):
                _create(directory, rq_version)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return _venv_python(directory)
