"""What the locks in requirements/ pin, against what a virtualenv holds (run with that venv's python).

``prune LOCK...`` uninstalls what no lock names (scripts/bootstrap); ``compare LOCK...``
lists every installed version and marks those that differ from the locks
(scripts/test --latest).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", re.MULTILINE)
OWN = "rq-janitor"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(paths: list[str]) -> dict[str, str]:
    """Name -> version of every requirement the locks at ``paths`` pin."""
    text = "".join(Path(path).read_text() for path in paths)
    return {canonical(name): version for name, version in PIN.findall(text)}


def installed() -> dict[str, str]:
    """Name -> version of every distribution this interpreter sees."""
    return {
        canonical(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }


def prune(paths: list[str]) -> None:
    """Uninstall what no lock names: the setuptools venv brings, what a lock no longer has."""
    extra = sorted(set(installed()) - set(pins(paths)) - {OWN})
    if extra:
        print(
            f"bootstrap: removing what the lock does not name: {' '.join(extra)}",
            file=sys.stderr,
        )
        cmd = [sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra]
        subprocess.run(cmd, check=True)


def compare(paths: list[str]) -> None:
    """Print every installed version, and the locked one where it differs."""
    locked = pins(paths)
    for name, version in sorted(installed().items()):
        was = locked.get(name)
        mark = "" if was == version else f"  (locked: {was or 'not in the lock'})"
        print(f"  {name} {version}{mark}", file=sys.stderr)


if __name__ == "__main__":
    {"prune": prune, "compare": compare}[sys.argv[1]](sys.argv[2:])
