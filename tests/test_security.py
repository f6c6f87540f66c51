"""Security: a restricted ACL user is enough, and no password or payload reaches any output."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.cli import janitor
from tests.rqstate import MARKER, SECRET_ERROR, Manifest, produce
from tests.servers import RedisServer

ACL_LINE = re.compile(r"^ACL SETUSER janitor .*$", re.MULTILINE)


def readme_acl(password: str) -> list[str]:
    """The ACL rule the README documents, with a real password, as ACL SETUSER arguments."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = ACL_LINE.search(readme)
    assert found is not None, "the README documents the ACL user"
    words = found.group(0).split()[2:]  # drop "ACL SETUSER"
    return [f">{password}" if word.startswith(">") else word for word in words]


def acl_url(server: RedisServer, password: str) -> str:
    """The URL with which the janitor logs in as the documented ACL user."""
    return f"redis://janitor:{quote(password)}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_user(r: redis.Redis) -> Iterator[str]:
    """A user named janitor with exactly the README's ACL; yields its password."""
    password = secrets.token_hex(16)
    r.acl_setuser(
        "janitor", reset=True
    )  # start from nothing; the README's rules follow
    r.execute_command("ACL", "SETUSER", *readme_acl(password))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    yield password
    r.acl_deluser("janitor")


@pytest.fixture
def state(redis_server: RedisServer, r: redis.Redis) -> Iterator[Manifest]:
    """Real RQ 3 state with every job state and a SIGKILLed worker."""
    manifest = produce(redis_server.url, queue="secure", with_killed_worker=True)
    try:
        manifest.expire_dead_workers(r)
        yield manifest
    finally:
        manifest.kill_workers()


def test_every_task_runs_as_the_documented_acl_user(
    redis_server: RedisServer,
    r: redis.Redis,
    acl_user: str,
    state: Manifest,
    tmp_path: Path,
) -> None:
    """All tasks run, twice, as the README's ACL user without a permission error, and delete what they should."""
    url = acl_url(redis_server, acl_user)
    config = tmp_path / "janitor.toml"
    config.write_text(
        '[retention]\nfinished = "0s"\nfailed = "0s"\ncanceled = "0s"\nstopped = "0s"\n'
    )
    for _ in range(2):
        result = janitor(
            "run",
            "--once",
            "-c",
            str(config),
            "--redis-url",
            url,
            "--log-format",
            "json",
        )
        assert result.returncode == 0, result.stderr
        assert "NOPERM" not in result.stdout + result.stderr
    assert not r.exists(f"rq:job:{state.ids('finished')[0]}")
    check = janitor("check", "--redis-url", url)
    assert check.returncode == 0, check.stderr


def test_acl_user_cannot_write_other_keys(
    redis_server: RedisServer, r: redis.Redis, acl_user: str
) -> None:
    """The documented user is refused by the server for any key outside rq:* and janitor:*."""
    restricted = redis.Redis(
        port=redis_server.port, username="janitor", password=acl_user
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        restricted.set("myapp:session", b"x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        restricted.flushall()
    restricted.close()


def test_no_password_or_payload_in_any_output(
    redis_server: RedisServer,
    r: redis.Redis,
    acl_user: str,
    state: Manifest,
    tmp_path: Path,
) -> None:
    """Passwords and job payloads appear in no log line, audit line, error or config output."""
    url = acl_url(redis_server, acl_user)
    config = tmp_path / "janitor.toml"
    config.write_text('[retention]\nfinished = "0s"\nfailed = "0s"\n')
    r.hset(
        "rq:job:garbage",
        mapping={"status": "finished", "origin": "secure", "ended_at": MARKER},
    )
    r.zadd("rq:finished:secure", {"garbage": 1})
    outputs = [
        janitor(
            "run",
            "--once",
            "--dry-run",
            "-c",
            str(config),
            "--redis-url",
            url,
            "--log-format",
            "json",
        ),
        janitor(
            "run",
            "--once",
            "-c",
            str(config),
            "--redis-url",
            url,
            "--log-format",
            "console",
        ),
        janitor("config", "-c", str(config), "--redis-url", url),
        janitor("check", "--redis-url", url),
        janitor("check", "--redis-url", url.replace(acl_user, "wrong-" + acl_user)),
    ]
    text = "".join(o.stdout + o.stderr for o in outputs)
    assert "job_skipped" in text  # the garbage hash was reported ...
    for secret in (acl_user, MARKER, SECRET_ERROR, "hunter2"):
        assert secret not in text  # ... without its content, and no secret anywhere
