"""The janitor command as users run it: a real process, real Redis, exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from janitor.audit import AUDIT_EVENTS
from janitor.keyspace import Keyspace
from janitor.tasks import TASKS
from tests import funcs
from tests.cli import audit_lines, janitor, run_once_cli
from tests.funcs import work
from tests.servers import RedisServer, free_port
from tests.snapshot import assert_unchanged, snapshot

KEYS = Keyspace()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config that deletes finished jobs at once, keeps failed ones, and logs to a file."""
    path = tmp_path / "janitor.toml"
    path.write_text(
        f"""
[retention]
finished = "0s"
failed = "30d"

[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    return path


@pytest.fixture
def state(r: redis.Redis) -> dict[str, list[str]]:
    """Finished, failed and queued jobs made by a real RQ worker."""
    queue = Queue("default", connection=r)
    finished = [queue.enqueue(funcs.ok).id for _ in range(3)]
    failed = [queue.enqueue(funcs.boom).id for _ in range(2)]
    work(r, queue)
    queued = [queue.enqueue(funcs.ok).id]
    return {"finished": finished, "failed": failed, "queued": queued}


class TestRunOnce:
    """``janitor run --once``."""

    def test_deletes_old_jobs_and_keeps_the_rest(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """Finished jobs past retention go; failed and queued ones stay; exit 0 and an audit line each."""
        result = run_once_cli(config_file, redis_server)
        assert result.returncode == 0, result.stderr
        events = audit_lines(config_file.parent / "audit.jsonl")
        deleted = {e["job_id"] for e in events if e["event"] == "job_deleted"}
        assert deleted == set(state["finished"])
        assert all(not r.exists(KEYS.job(j)) for j in state["finished"])
        assert all(r.exists(KEYS.job(j)) for j in state["failed"] + state["queued"])
        assert [e["task"] for e in events if e["event"] == "run_finished"] == list(
            TASKS
        )
        assert "expire_jobs: ok: 3 job_deleted" in result.stderr
        assert not r.exists("janitor:leader"), "the lease is released at the end"

    def test_dry_run_writes_nothing_and_names_the_same_jobs(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """--dry-run leaves Redis byte-for-byte unchanged (no lease either) and reports what a real run deletes."""
        before = snapshot(r)
        dry = janitor(
            "run",
            "--once",
            "--dry-run",
            "-c",
            str(config_file),
            "--redis-url",
            redis_server.url,
        )
        assert dry.returncode == 0, dry.stderr
        assert_unchanged(before, snapshot(r))
        dry_events = audit_lines(config_file.parent / "audit.jsonl")
        assert all(e["dry_run"] is True for e in dry_events)
        (config_file.parent / "audit.jsonl").unlink()
        run_once_cli(config_file, redis_server)
        real_events = audit_lines(config_file.parent / "audit.jsonl")

        def ids(events: list[dict[str, Any]]) -> set[str]:
            return {e["job_id"] for e in events if e["event"] == "job_deleted"}

        assert ids(dry_events) == ids(real_events) == set(state["finished"])

    def test_second_run_does_nothing(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """A run right after a run deletes nothing and changes nothing."""
        run_once_cli(config_file, redis_server)
        before = snapshot(r)
        second = run_once_cli(config_file, redis_server)
        assert second.returncode == 0
        assert "nothing to do" in second.stderr
        assert_unchanged(before, snapshot(r))

    def test_lease_held_elsewhere_exits_75_without_writing(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """When another janitor holds the lease, a real run writes nothing and exits 75."""
        r.set("janitor:leader", b"other-janitor", ex=60)
        before = snapshot(r)
        result = run_once_cli(config_file, redis_server)
        assert result.returncode == 75
        assert "another janitor holds the lease" in result.stderr
        assert_unchanged(before, snapshot(r))

    def test_one_failing_task_does_not_stop_the_others(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """A task that crashes is audited as task_failed, exit 1, and the other task still does its work."""
        r.sadd(KEYS.queues(), KEYS.queue("broken"))
        r.set(KEYS.started("broken"), b"not a sorted set")
        result = run_once_cli(config_file, redis_server)
        assert result.returncode == 1
        events = audit_lines(config_file.parent / "audit.jsonl")
        failed = [e for e in events if e["event"] == "task_failed"]
        assert [e["task"] for e in failed] == ["recover_abandoned"]
        assert "WRONGTYPE" in failed[0]["error"]
        assert {e["job_id"] for e in events if e["event"] == "job_deleted"} == set(
            state["finished"]
        )

    def test_task_and_queue_filters(
        self,
        redis_server: RedisServer,
        r: redis.Redis,
        config_file: Path,
        state: dict[str, list[str]],
    ) -> None:
        """--task runs only that task and --queue only touches matching queues."""
        result = janitor(
            "run",
            "--once",
            "--task",
            "expire_jobs",
            "--queue",
            "nomatch-*",
            "-c",
            str(config_file),
            "--redis-url",
            redis_server.url,
        )
        assert result.returncode == 0
        events = audit_lines(config_file.parent / "audit.jsonl")
        assert [e["task"] for e in events] == ["expire_jobs"]
        assert not any(e["event"] == "job_deleted" for e in events)

    def test_stdout_holds_only_audit_lines(
        self, redis_server: RedisServer, r: redis.Redis, state: dict[str, list[str]]
    ) -> None:
        """With the audit log on stdout, operational lines (skips, tracebacks) go to stderr only."""
        r.hset(
            KEYS.job("garbage"),
            mapping={"status": "finished", "origin": "default", "ended_at": "never"},
        )
        r.zadd(KEYS.finished("default"), {"garbage": 1})
        r.sadd(KEYS.queues(), KEYS.queue("broken"))
        r.set(KEYS.started("broken"), b"not a sorted set")
        for log_format in ("console", "json"):
            result = janitor(
                "run",
                "--once",
                "--redis-url",
                redis_server.url,
                "--log-format",
                log_format,
            )
            assert result.returncode == 1
            events = {json.loads(line)["event"] for line in result.stdout.splitlines()}
            assert events <= AUDIT_EVENTS
            assert "job_skipped" in result.stderr
            assert "task_crashed" in result.stderr

    def test_audit_to_stdout_by_default(
        self, redis_server: RedisServer, r: redis.Redis, state: dict[str, list[str]]
    ) -> None:
        """Without [audit] path the JSON lines go to stdout and the summary to stderr."""
        result = janitor(
            "run", "--once", "--redis-url", redis_server.url, "--log-format", "json"
        )
        assert result.returncode == 0
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert {line["event"] for line in lines} == {"run_finished"}
        assert "SECRET" not in result.stdout + result.stderr


class TestExitCodes:
    """Errors a user can act on, with the contract's exit codes."""

    def test_unreachable_redis_exits_69_with_redacted_url(self) -> None:
        """An unreachable Redis exits 69 and names the URL without its password."""
        url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
        result = janitor("run", "--once", "--redis-url", url)
        assert result.returncode == 69
        assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout

    def test_bad_config_exits_78_naming_the_key(self, tmp_path: Path) -> None:
        """An invalid value exits 78 with the file, key and value in the message."""
        path = tmp_path / "janitor.toml"
        path.write_text('[retention]\nfailed = "abc"\n')
        result = janitor("run", "--once", "-c", str(path))
        assert result.returncode == 78
        assert "failed" in result.stderr
        assert "abc" in result.stderr

    def test_unknown_key_suggests_the_closest(self, tmp_path: Path) -> None:
        """A misspelt key exits 78 and suggests the key that was meant."""
        path = tmp_path / "janitor.toml"
        path.write_text('[retention]\nfinshed = "1d"\n')
        result = janitor("config", "-c", str(path))
        assert result.returncode == 78
        assert "finished" in result.stderr

    def test_once_only_flags_without_once_are_a_usage_error(self) -> None:
        """--dry-run without --once exits 2."""
        assert janitor("run", "--dry-run").returncode == 2

    def test_unknown_task_is_a_usage_error(self) -> None:
        """--task with a name no task has exits 2."""
        assert janitor("run", "--once", "--task", "nope").returncode == 2


class TestReadOnlyCommands:
    """check and config read and never write."""

    def test_config_redacts_the_password(self) -> None:
        """`janitor config` prints settings with sources and never the password."""
        result = janitor("config", env={"JANITOR_REDIS_PASSWORD": "hunter2-secret"})
        assert result.returncode == 0
        assert "hunter2" not in result.stdout
        assert "env JANITOR_REDIS_PASSWORD" in result.stdout

    def test_check_reports_layout_and_changes_nothing(
        self, redis_server: RedisServer, r: redis.Redis, state: dict[str, list[str]]
    ) -> None:
        """`janitor check` connects, reports the server and the RQ layout, and writes nothing."""
        before = snapshot(r)
        result = janitor("--redis-url", redis_server.url, "check")
        assert result.returncode == 0, result.stderr
        assert "rq data layout:" in result.stdout
        assert "queues listed in rq:queues: 1" in result.stdout
        assert_unchanged(before, snapshot(r))

    def test_version(self) -> None:
        """--version prints the version."""
        assert "janitor, version" in janitor("--version").stdout
