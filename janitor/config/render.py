"""Renders the effective settings as the TOML-like text ``janitor config`` prints, secrets redacted."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import cast

from janitor.config.settings import SECTIONS, RetentionRule, Settings
from janitor.config.values import (
    REDACTED,
    format_budget,
    format_duration,
    format_host_port,
    redact_url,
)

_DURATIONS = frozenset(
    (
        "finished",
        "failed",
        "stopped",
        "canceled",
        "dead_after",
        "prune_after",
        "keep_for",
        "lease_ttl",
    )
)


def render_settings(settings: Settings) -> str:
    """Return every effective setting as ``key = value  # source`` lines under ``[section]`` headers.

    Durations show as ``"30d"``, the password as ``"<redacted>"``, the URL through
    ``redact_url``; unset optional keys show as ``# key = (unset)``.
    """
    sources = settings.sources
    config_source = sources.get("config_path", "default")
    lines = [
        "# effective settings; precedence: default < actinia < file < env < flag",
        f"# config file: {settings.config_path or '(none)'}  ({config_source})",
        _line("log_format", settings.log_format, sources.get("log_format", "default")),
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for name, value in _values(settings, section):
            source = sources.get(f"{section}.{name}", "default")
            lines.append(_line(name, value, source))
        if section == "retention":
            source = sources.get("retention.rules", "default")
            lines += _rules(settings.retention.rules, source)
    return "\n".join(lines) + "\n"


def _values(settings: Settings, section: str) -> list[tuple[str, object]]:
    if section == "schedule":
        return [(task, s.text) for task, s in settings.schedule.items()]
    part = getattr(settings, section)
    shown: list[tuple[str, object]] = []
    for item in fields(part):
        value = getattr(part, item.name)
        if item.name == "rules":
            continue
        if item.name in _DURATIONS:
            value = format_duration(value)
        elif section == "redis":
            value = _redis_value(item.name, value)
        elif item.name == "budget" and value is not None:
            value = format_budget(cast("tuple[str, float]", value))
        shown.append((item.name, value))
    return shown


def _redis_value(name: str, value: object) -> object:
    if name == "password":
        return None if value is None else REDACTED
    if name == "url":
        return redact_url(cast("str", value))
    if name == "sentinels":
        pairs = cast("tuple[tuple[str, int], ...]", value)
        return tuple(format_host_port(host, port) for host, port in pairs)
    return value


def _rules(rules: tuple[RetentionRule, ...], source: str) -> list[str]:
    if not rules:
        return [f"# [[retention.rules]]: none  # {source}"]
    lines: list[str] = []
    for rule in rules:
        lines += ["", f"[[retention.rules]]  # retention.rules[{rule.index}], {source}"]
        lines.append(f"queues = {_toml(rule.queues)}")
        for state, age in rule.ages.items():
            lines.append(f"{state} = {_toml(format_duration(age))}")
        if rule.keep_last is not None:
            lines.append(f"keep_last = {rule.keep_last}")
    return lines


def _line(name: str, value: object, source: str) -> str:
    if value is None:
        return f"# {name} = (unset)  # {source}"
    return f"{name} = {_toml(value)}  # {source}"


def _toml(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
