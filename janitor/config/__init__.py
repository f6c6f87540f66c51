"""Configuration: the settings, where each value comes from, and how they are shown.

``settings`` holds the shapes, defaults and loading (with ``sources``: TOML, environment,
flags and actinia's INI via ``actinia``; ``values``: parsing single values; ``secret``:
values never shown); ``render`` prints them for ``janitor config``. Callers import from
here the names below.
"""

from janitor.config.render import render_settings
from janitor.config.secret import Secret
from janitor.config.settings import (
    DEFAULT_SCHEDULES,
    TASK_NAMES,
    TERMINAL_STATES,
    AbandonedSettings,
    DeferredSettings,
    LimitsSettings,
    MemorySettings,
    QueuesSettings,
    RedisSettings,
    RetentionRule,
    RetentionSettings,
    RqSettings,
    Schedule,
    Settings,
    WorkersSettings,
    load_settings,
    parse_schedule,
)
from janitor.config.values import parse_duration, redact_url

__all__ = [
    "DEFAULT_SCHEDULES",
    "TASK_NAMES",
    "TERMINAL_STATES",
    "AbandonedSettings",
    "DeferredSettings",
    "LimitsSettings",
    "MemorySettings",
    "QueuesSettings",
    "RedisSettings",
    "RetentionRule",
    "RetentionSettings",
    "RqSettings",
    "Schedule",
    "Secret",
    "Settings",
    "WorkersSettings",
    "load_settings",
    "parse_duration",
    "parse_schedule",
    "redact_url",
    "render_settings",
]
