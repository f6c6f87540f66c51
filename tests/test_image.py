"""The container image as operators run it: built with Podman on a local base, run read-only as uid 10001.

Nothing can be pulled here, so the base is made locally (``mmdebstrap``, then ``podman
import``) and passed as the Dockerfile's ``BASE`` build argument; the recipe is the one in
the team's container notes. Podman gets a containers.conf of the test's own (no systemd, the
``runc`` runtime, no default ulimits). Skipped with the reason where Podman or mmdebstrap is
missing; ``scripts/bootstrap`` installs both where ``apt-get`` works as root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from rq import Queue

from tests import funcs
from tests.funcs import work
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.slow

BASE = "localhost/rq-janitor-test-base:bookworm"
IMAGE = "localhost/rq-janitor:test"
CONF = """[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
MISSING = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The podman command with the test's containers.conf, and the image built on a local base."""
    if MISSING:
        pytest.skip(
            f"no {' and no '.join(MISSING)} here (scripts/bootstrap installs them as root)"
        )
    workdir = tmp_path_factory.mktemp("podman")
    conf = workdir / "containers.conf"
    conf.write_text(CONF, encoding="utf-8")
    env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    command = ["env", *(f"{k}={v}" for k, v in env.items()), "podman"]
    if subprocess.run([*command, "image", "exists", BASE], check=False).returncode:
        _make_base(command, workdir)
    repo = Path(__file__).resolve().parent.parent
    _run(
        [
            *command,
            "build",
            "--quiet",
            "--format",
            "docker",  # keeps the HEALTHCHECK (the OCI format drops it)
            "--build-arg",
            f"BASE={BASE}",
            "-t",
            IMAGE,
            str(repo),
        ],
        timeout=600,
    )
    # earlier builds' layers no tag names any more: gone, so runs do not fill the disk
    subprocess.run(
        [*command, "image", "prune", "--force"], capture_output=True, check=False
    )
    return command


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def _make_base(podman: list[str], workdir: Path) -> None:
    """Make the base: a Debian bookworm root with Python, imported into Podman.

    The machine's CA bundle goes into it: pip in the build reaches the package index
    through the machine's TLS interception only so (never in the project's Dockerfile).
    """
    rootfs = workdir / "rootfs.tar"
    _run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
        ],
        timeout=600,
    )
    raw = BASE + "-raw"
    _run([*podman, "import", "--quiet", str(rootfs), raw], timeout=300)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", workdir / "ca.crt")
    (workdir / "Containerfile").write_text(
        f"FROM {raw}\nCOPY ca.crt /etc/ssl/certs/ca-certificates.crt\n"
        "RUN ln -sf /usr/bin/python3 /usr/local/bin/python\n",
        encoding="utf-8",
    )
    _run([*podman, "build", "--quiet", "-t", BASE, str(workdir)], timeout=300)
    rootfs.unlink()


def config(tmp_path: Path, name: str, server: RedisServer, port: int) -> Path:
    """A janitor.toml for a container: the server, a moved [http] listen, short retention."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[redis]\nurl = "{server.url}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        '[retention]\nfinished = "0s"\nfailed = "0s"\n'
        '[daemon]\nlease_ttl = "6s"\n',
        encoding="utf-8",
    )
    return path


def run_in_image(
    podman: list[str], cfg: Path, *args: str, options: tuple[str, ...] = ("--rm",)
) -> subprocess.CompletedProcess[str]:
    """``janitor ARGS`` in a read-only container on the host's network, with ``cfg`` as its config.

    ``options`` go to ``podman run``: by default the container goes when it ends.
    """
    return _run(
        [
            *podman,
            "run",
            *options,
            "--network",
            "host",
            "--read-only",
            "-v",
            f"{cfg}:/etc/rq-janitor/janitor.toml:ro,Z",
            IMAGE,
            *args,
        ]
    )


def healthz(port: int) -> tuple[int, bytes]:
    """The daemon's /healthz status and body with its spaces taken out ((0, b"") when it does not answer)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/healthz", timeout=2
        ) as got:
            return int(got.status), bytes(got.read()).replace(b" ", b"")
    except OSError:
        return 0, b""


def wait(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def test_check_and_run_once_on_real_rq_data(
    podman: list[str], redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    """In the image, `check` answers and `run --once` deletes the finished jobs real RQ made, with audit lines."""
    queue = Queue("default", connection=r)
    done = [queue.enqueue(funcs.ok).id for _ in range(3)]
    work(r, queue)
    live = queue.enqueue(funcs.ok).id
    cfg = config(tmp_path, "once", redis_server, free_port())
    checked = run_in_image(podman, cfg, "check")
    assert "config: ok" in checked.stdout
    ran = run_in_image(podman, cfg, "run", "--once")
    events = [
        json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")
    ]
    deleted = {e["job_id"] for e in events if e["event"] == "job_deleted"}
    assert deleted == set(done)
    assert r.exists(*(f"rq:job:{job_id}" for job_id in done)) == 0
    assert r.exists(f"rq:job:{live}") == 1


def test_daemon_health_user_stop_and_takeover(
    podman: list[str], redis_server: RedisServer, tmp_path: Path
) -> None:
    """The daemon on a moved port: the image's HEALTHCHECK passes, uid 10001, SIGTERM stops it with 0 within 10 s, a second replica takes the lease."""
    ports = free_port(), free_port()
    names = [f"rq-janitor-test-{n}-{ports[0]}" for n in ("a", "b")]
    try:
        for name, port in zip(names, ports, strict=True):
            cfg = config(tmp_path, name, redis_server, port)
            run_in_image(podman, cfg, options=("-d", "--name", name))
            wait(lambda port=port: healthz(port)[0] == 200, 30, f"{name}'s /healthz")
        first, second = names
        health = subprocess.run(
            [*podman, "healthcheck", "run", first],
            capture_output=True,
            text=True,
            check=False,
        )
        assert health.returncode == 0, health.stdout + health.stderr
        uid = _run([*podman, "exec", first, "id", "-u"]).stdout.strip()
        assert uid == "10001"
        writable = subprocess.run(
            [*podman, "exec", first, "touch", "/opt/rq-janitor/x"],
            capture_output=True,
            check=False,
        )
        assert writable.returncode != 0  # a read-only root filesystem
        leader = first if b'"leader":true' in healthz(ports[0])[1] else second
        stopped_port = ports[names.index(leader)]
        other_port = ports[1 - names.index(leader)]
        started = time.monotonic()
        _run([*podman, "stop", "-t", "10", leader], timeout=30)
        took = time.monotonic() - started
        code = _run([*podman, "inspect", leader, "--format", "{{.State.ExitCode}}"])
        assert code.stdout.strip() == "0"
        assert took < 10
        assert healthz(stopped_port)[0] == 0
        wait(
            lambda: b'"leader":true' in healthz(other_port)[1],
            20,
            "the other replica to lead",
        )
    finally:
        for name in names:
            subprocess.run(
                [*podman, "rm", "-f", name], capture_output=True, check=False
            )
