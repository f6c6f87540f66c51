"""The janitor's settings: their shapes, defaults, parsing and where each value came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TERMINAL_STATES = ("finished", "failed", "stopped", "canceled")
"""The job states whose retention the config sets, in the contract's order."""

TASK_NAMES = (
    "expire_jobs",
    "prune_workers",
    "recover_abandoned",
    "clean_registries",
    "prune_queues",
    "sweep_orphans",
)
"""Every task the contract names, in the order a run executes them."""


class Secret:
    """A string that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call only where it is handed to the Redis client."""
        return self._value

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """``[redis]``: where the RQ data lives and how to reach it."""

    url: str = "redis://localhost:6379/0"
    password: Secret | None = None
    password_file: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclass(frozen=True, slots=True)
class RqSettings:
    """``[rq]``: RQ's key prefix and the glob allowlist of queues the janitor may write."""

    key_prefix: str = "rq"
    queues: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """One ``[[retention.rules]]`` entry: queue globs and the states it overrides."""

    index: int
    queues: tuple[str, ...]
    ages: Mapping[str, int]
    """State name -> seconds, only for the states this rule names."""
    keep_last: int | None = None


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """``[retention]``: how long terminal jobs are kept, per state, plus rules per queue."""

    finished: int = 86_400
    failed: int = 30 * 86_400
    stopped: int = 30 * 86_400
    canceled: int = 86_400
    keep_last: int | None = None
    rules: tuple[RetentionRule, ...] = ()

    def age_for(self, state: str) -> int:
        """Return the default retention in seconds for a terminal state."""
        return int(getattr(self, state))


@dataclass(frozen=True, slots=True)
class WorkersSettings:
    """``[workers]``: when a worker counts as dead."""

    dead_after: int = 900


@dataclass(frozen=True, slots=True)
class AbandonedSettings:
    """``[abandoned]``: what happens to started jobs of dead workers."""

    action: str = "fail"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A task's daemon schedule: ``every <duration>`` or a 5-field cron line."""

    text: str
    interval_s: int | None = None
    cron: str | None = None


DEFAULT_SCHEDULES: Mapping[str, str] = {
    "expire_jobs": "every 5m",
    "prune_workers": "every 1m",
    "recover_abandoned": "every 1m",
    "clean_registries": "every 10m",
    "prune_queues": "every 1h",
    "sweep_orphans": "0 3 * * *",
}


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``[audit]``: where the JSON-lines audit log goes (``-`` is stdout)."""

    path: str = "-"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """``[http]``: the daemon's listen address for /healthz, /readyz and /metrics."""

    listen: str = "127.0.0.1:9808"


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """``[daemon]``: the leader lease."""

    lease_key: str = "janitor:leader"
    lease_ttl: int = 15


@dataclass(frozen=True, slots=True)
class ActiniaSettings:
    """``[actinia]``: the actinia INI file to take connection and queue settings from."""

    config: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings, with the source of every value."""

    redis: RedisSettings = field(default_factory=RedisSettings)
    rq: RqSettings = field(default_factory=RqSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    abandoned: AbandonedSettings = field(default_factory=AbandonedSettings)
    schedule: Mapping[str, Schedule] = field(default_factory=dict)
    audit: AuditSettings = field(default_factory=AuditSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    actinia: ActiniaSettings = field(default_factory=ActiniaSettings)
    log_format: str = "auto"
    sources: Mapping[str, str] = field(default_factory=dict)
    """Dotted key (``retention.failed``) -> where its value came from."""
