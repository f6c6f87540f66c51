"""The locks in requirements/: portable, complete, and what the test environment really holds."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.rqenv import LATEST, REQUIREMENTS_DIR, RQ_VERSIONS

LOCKS = sorted(REQUIREMENTS_DIR.glob("*.txt"))
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)(?: ; ([^\\\n]+))?", re.MULTILINE)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path, *, here_only: bool = False) -> dict[str, str]:
    """The name and version of every requirement a lock pins (``here_only``: that this machine installs)."""
    return {
        canonical(name): version
        for name, version, marker in PIN.findall(lock.read_text())
        if not (here_only and marker and not Marker(marker.strip()).evaluate())
    }


def test_every_lock_the_scripts_use_exists() -> None:
    """bootstrap's, the floors' and each RQ version's lock are committed; each RQ lock pins that rq."""
    names = {lock.name for lock in LOCKS}
    assert {"dev.txt", "servers.txt", "floors.txt"} <= names
    for version in RQ_VERSIONS:
        assert (REQUIREMENTS_DIR / f"rq-{version}.in").exists()
        assert pins(REQUIREMENTS_DIR / f"rq-{version}.txt")["rq"] == version


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_a_lock_names_no_address_and_no_local_path(lock: Path) -> None:
    """A lock holds no URL, no index option and no absolute path: it works from any clone and any index."""
    text = lock.read_text()
    assert "://" not in text
    assert not re.search(
        r"^\s*--(index-url|extra-index-url|find-links)", text, re.MULTILINE
    )
    assert not re.search(r"(^|\s)/[A-Za-z]", text), "an absolute path"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_has_a_hash(lock: Path) -> None:
    """Each pinned requirement carries hashes, so pip's --require-hashes mode accepts the file."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    requirements = [b for b in blocks if PIN.match(b)]
    assert requirements
    for block in requirements:
        assert "--hash=sha256:" in block, block.splitlines()[0]


@pytest.mark.skipif(
    LATEST, reason="./scripts/test --latest runs on the newest releases"
)
def test_the_test_environment_holds_exactly_the_lock() -> None:
    """The running environment has every version dev.txt pins, and nothing the locks do not name."""
    wanted = pins(REQUIREMENTS_DIR / "dev.txt", here_only=True)
    optional = pins(REQUIREMENTS_DIR / "servers.txt")
    present = {
        canonical(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
    }
    present.pop("rq-janitor")
    for name, version in wanted.items():
        assert present.get(name) == version, name
    extra = set(present) - set(wanted) - set(optional)
    assert not extra
