"""The janitor's settings: their shapes, defaults, parsing and where each value came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

from janitor.config.secret import Secret
from janitor.config.sources import (
    Entry,
    Layer,
    Schema,
    TableArray,
    merge_layers,
    pair_exclusive,
    read_actinia_layer,
    read_env_layer,
    read_flag_layer,
    read_toml_layer,
    resolve_password_file,
)
from janitor.config.values import (
    Validator,
    choice,
    globs,
    listen_address,
    memory_budget,
    parse_duration,
    parse_schedule_text,
    positive_duration,
    positive_int,
    secret_string,
    sentinel_csv,
    sentinel_list,
    string,
    valid_redis_url,
)
from janitor.errors import ConfigError
from janitor.jobs import TERMINAL_STATUSES

TERMINAL_STATES = TERMINAL_STATUSES
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
class QueuesSettings:
    """``[queues]``: when an empty queue leaves ``rq:queues``."""

    prune_after: int = 3600
    """Seconds a queue must stay empty everywhere before ``prune_queues`` removes it."""


@dataclass(frozen=True, slots=True)
class DeferredSettings:
    """``[deferred]``: what happens to deferred jobs that can never run."""

    stuck: str = "report"
    """``report`` (only ``report`` lists them) or ``cancel`` (as RQ's ``Job.cancel()``, after two sightings)."""


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """``[memory]``: the memory budget (off unless ``budget`` is set)."""

    budget: tuple[str, float] | None = None
    """``("percent", 80.0)`` of ``maxmemory`` or ``("bytes", n)``; None: no budget."""
    keep_for: int = 600
    """A terminal job younger than this (seconds since it ended) is never deleted for memory."""


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


MEMORY_CHECK = "memory"
"""The ``[schedule]`` key of the daemon's ``INFO memory`` check (``[memory] budget``); not a task."""

DEFAULT_SCHEDULES: Mapping[str, str] = {
    "expire_jobs": "every 5m",
    "prune_workers": "every 1m",
    "recover_abandoned": "every 1m",
    "clean_registries": "every 10m",
    "prune_queues": "every 1h",
    "sweep_orphans": "0 3 * * *",
    MEMORY_CHECK: "every 15s",
}


def _default_schedules() -> dict[str, Schedule]:
    return {
        name: Schedule(*parse_schedule_text(DEFAULT_SCHEDULES[name], "default"))
        for name in (*TASK_NAMES, MEMORY_CHECK)
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
class LimitsSettings:
    """``[limits]``: how hard a run may work Redis, beyond the per-call time bound."""

    max_ops_per_s: int | None = None
    """At most this many jobs (or other items) per second that a task's scripts judge or
    write, averaged over the task; unset, the only bound is each call's time."""


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
    queues: QueuesSettings = field(default_factory=QueuesSettings)
    deferred: DeferredSettings = field(default_factory=DeferredSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    abandoned: AbandonedSettings = field(default_factory=AbandonedSettings)
    schedule: Mapping[str, Schedule] = field(default_factory=_default_schedules)
    """Task name -> its daemon schedule; every task in TASK_NAMES has one."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    actinia: ActiniaSettings = field(default_factory=ActiniaSettings)
    log_format: str = "auto"
    sources: Mapping[str, str] = field(default_factory=dict)
    """Dotted key (``retention.failed``) -> where its value came from."""
    config_path: str | None = None
    """The TOML file that was read, if any (its own source is ``sources["config_path"]``)."""


ABANDONED_ACTIONS = ("fail", "requeue", "report")
"""``[abandoned] action`` values."""

STUCK_ACTIONS = ("report", "cancel")
"""``[deferred] stuck`` values."""

LOG_FORMATS = ("json", "console", "auto")
"""``--log-format`` values."""

MIN_LEASE_TTL = 3
"""``[daemon] lease_ttl`` lower bound in seconds: the lease is renewed every third of it."""


def parse_schedule(value: object, where: str) -> Schedule:
    """Parse ``"every 30s"`` (interval > 0) or a 5-field cron line APScheduler accepts (UTC)."""
    text, interval_s, cron = parse_schedule_text(value, where)
    return Schedule(text=text, interval_s=interval_s, cron=cron)


def _secret(value: object, where: str) -> Secret:
    return Secret(secret_string(value, where))


def _lease_ttl(value: object, where: str) -> int:
    seconds = parse_duration(value, where)
    if seconds < MIN_LEASE_TTL:
        msg = (
            f"{where}: expected a duration of at least {MIN_LEASE_TTL}s, got {value!r}"
        )
        raise ConfigError(msg)
    return seconds


def _rule(index: int, values: Mapping[str, object]) -> RetentionRule:
    return RetentionRule(
        index=index,
        queues=cast("tuple[str, ...]", values["queues"]),
        ages={s: cast("int", values[s]) for s in TERMINAL_STATES if s in values},
        keep_last=cast("int | None", values.get("keep_last")),
    )


_AGES: dict[str, Validator] = dict.fromkeys(TERMINAL_STATES, parse_duration)
_SCHEMA: Schema = {
    "redis": {
        "url": valid_redis_url,
        "password": _secret,
        "password_file": string,
        "sentinels": sentinel_list,
        "sentinel_master": string,
        "ssl_ca_certs": string,
        "ssl_certfile": string,
        "ssl_keyfile": string,
    },
    "rq": {"key_prefix": string, "queues": globs},
    "retention": {
        **_AGES,
        "keep_last": positive_int,
        "rules": TableArray(
            keys={"queues": globs, **_AGES, "keep_last": positive_int},
            required=("queues",),
            build=_rule,
        ),
    },
    "workers": {"dead_after": positive_duration},
    "queues": {"prune_after": parse_duration},
    "deferred": {"stuck": choice(STUCK_ACTIONS)},
    "memory": {"budget": memory_budget, "keep_for": parse_duration},
    "abandoned": {"action": choice(ABANDONED_ACTIONS)},
    "schedule": dict.fromkeys((*TASK_NAMES, MEMORY_CHECK), parse_schedule),
    "audit": {"path": string},
    "http": {"listen": listen_address},
    "daemon": {"lease_key": string, "lease_ttl": _lease_ttl},
    "limits": {"max_ops_per_s": positive_int},
    "actinia": {"config": string},
}

SECTIONS: tuple[str, ...] = tuple(_SCHEMA)
"""The config file's sections, in the schema's order (``janitor config`` prints them so)."""
_PARTS = tuple(section for section in SECTIONS if section != "schedule")
"""The sections held by a settings dataclass of their own (``schedule`` is a mapping)."""

_ENV: Mapping[str, tuple[str, Validator]] = {
    "JANITOR_REDIS_URL": ("redis.url", valid_redis_url),
    "JANITOR_REDIS_PASSWORD": ("redis.password", _secret),
    "JANITOR_REDIS_PASSWORD_FILE": ("redis.password_file", string),
    "JANITOR_REDIS_SENTINELS": ("redis.sentinels", sentinel_csv),
    "JANITOR_REDIS_SENTINEL_MASTER": ("redis.sentinel_master", string),
    "JANITOR_REDIS_TLS_CA_FILE": ("redis.ssl_ca_certs", string),
    "JANITOR_ACTINIA_CONFIG": ("actinia.config", string),
}
"""Env var -> (dotted key, validator); empty variables count as unset."""


def load_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    redis_url: str | None = None,
    log_format: str | None = None,
) -> Settings:
    """Load and validate the effective settings; raise ConfigError naming the source on any problem.

    Precedence, lowest first: built-in defaults < the actinia INI named by ``[actinia] config``
    < the TOML file (``config_path``, else env ``JANITOR_CONFIG``) < ``JANITOR_*`` env vars
    < the CLI flags ``redis_url`` and ``log_format``.
    """
    env = os.environ if env is None else env
    path, path_source = _config_path(config_path, env)
    upper = [
        read_toml_layer(path, _SCHEMA) if path else {},
        read_env_layer(env, _ENV),
        read_flag_layer(
            {
                "--redis-url": ("redis.url", redis_url, valid_redis_url),
                "--log-format": ("log_format", log_format, choice(LOG_FORMATS)),
            }
        ),
    ]
    actinia = read_actinia_layer(merge_layers(upper).get("actinia.config"), env)
    for layer in (actinia, *upper):
        pair_exclusive(layer, "redis.password", "redis.password_file")
    merged = merge_layers([_default_layer(), actinia, *upper])
    resolve_password_file(merged)
    _check_sentinels(merged)
    merged["config_path"] = Entry(path, path_source, path_source)
    return _build(merged)


def _config_path(
    config_path: str | None, env: Mapping[str, str]
) -> tuple[str | None, str]:
    if config_path:
        return config_path, "flag --config"
    if env.get("JANITOR_CONFIG"):
        return env["JANITOR_CONFIG"], "env JANITOR_CONFIG"
    return None, "default"


def _default_layer() -> Layer:
    defaults = Settings()
    layer: Layer = {}
    for section in _PARTS:
        part = getattr(defaults, section)
        for item in fields(part):
            key = f"{section}.{item.name}"
            layer[key] = Entry(getattr(part, item.name), "default", f"default {key}")
    for task, schedule in defaults.schedule.items():
        layer[f"schedule.{task}"] = Entry(
            schedule, "default", f"default schedule.{task}"
        )
    layer["log_format"] = Entry(defaults.log_format, "default", "default log_format")
    return layer


def _check_sentinels(merged: Layer) -> None:
    sentinels, master = merged["redis.sentinels"], merged["redis.sentinel_master"]
    if bool(sentinels.value) != (master.value is not None):
        given, missing = (
            (sentinels, "sentinel_master") if sentinels.value else (master, "sentinels")
        )
        msg = f"{given.where}: Sentinel needs both [redis] sentinels and sentinel_master; {missing} is not set"
        raise ConfigError(msg)


def _build(merged: Layer) -> Settings:
    parts: dict[str, dict[str, Any]] = {}
    for key, entry in merged.items():
        section, _, name = key.rpartition(".")
        parts.setdefault(section, {})[name] = entry.value
    return Settings(
        redis=RedisSettings(**parts["redis"]),
        rq=RqSettings(**parts["rq"]),
        retention=RetentionSettings(**parts["retention"]),
        workers=WorkersSettings(**parts["workers"]),
        queues=QueuesSettings(**parts["queues"]),
        deferred=DeferredSettings(**parts["deferred"]),
        memory=MemorySettings(**parts["memory"]),
        abandoned=AbandonedSettings(**parts["abandoned"]),
        schedule={
            name: parts["schedule"][name] for name in (*TASK_NAMES, MEMORY_CHECK)
        },
        audit=AuditSettings(**parts["audit"]),
        http=HttpSettings(**parts["http"]),
        daemon=DaemonSettings(**parts["daemon"]),
        limits=LimitsSettings(**parts["limits"]),
        actinia=ActiniaSettings(**parts["actinia"]),
        log_format=parts[""]["log_format"],
        config_path=parts[""]["config_path"],
        sources={key: entry.source for key, entry in merged.items()},
    )
