"""Validators for single config values: each takes a value and its human location and returns the typed value.

Every validator raises :class:`janitor.errors.ConfigError` with a message that starts with
the location (``"janitor.toml: [retention] failed"``, ``"env JANITOR_REDIS_URL"``) and never
contains a password.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from janitor.errors import ConfigError

DURATION_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
"""Duration suffixes and their length in seconds (``w`` = week, an extra to the contract's four)."""

REDIS_SCHEMES = ("redis", "rediss", "unix")
"""URL schemes redis-py's ``from_url`` accepts."""

REDACTED = "<redacted>"
"""What a password shows as in messages and in ``janitor config``."""

Validator = Callable[[object, str], object]
"""A validator: (raw value, human location) -> typed value, or raise ConfigError."""

_DURATION = re.compile(r"(\d+)([smhdw])")
_EVERY = re.compile(r"every\s+(\S+)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)
_MAX_PORT = 65_535
_CRON_FIELDS = 5


def parse_duration(value: object, where: str) -> int:
    """Return seconds for ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` or non-negative integer seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            return int(value)
        match = _DURATION.fullmatch(value)
        if match:
            return int(match.group(1)) * DURATION_UNITS[match.group(2)]
    msg = f"{where}: expected a duration like '30d' or integer seconds, got {value!r}"
    raise ConfigError(msg)


def format_duration(seconds: int) -> str:
    """Return the shortest exact ``"30d"`` / ``"1h"`` / ``"90s"`` spelling of a number of seconds."""
    for unit in ("d", "h", "m"):
        size = DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_schedule_text(
    value: object, where: str
) -> tuple[str, int | None, str | None]:
    """Validate ``"every <duration>"`` or a 5-field cron line; return (text, interval_s, cron)."""
    if not isinstance(value, str):
        msg = f"{where}: expected a schedule like 'every 5m' or '0 3 * * *', got {value!r}"
        raise ConfigError(msg)
    every = _EVERY.fullmatch(value.strip())
    if every:
        seconds = parse_duration(every.group(1), where)
        if seconds <= 0:
            msg = f"{where}: an interval must be longer than 0s, got {value!r}"
            raise ConfigError(msg)
        return value, seconds, None
    fields = value.split()
    if len(fields) != _CRON_FIELDS:
        msg = f"{where}: expected 'every <duration>' or a 5-field cron line, got {value!r}"
        raise ConfigError(msg)
    cron = " ".join(fields)
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(cron, timezone="UTC")
    except ValueError as err:
        msg = f"{where}: invalid cron line {value!r}: {err}"
        raise ConfigError(msg) from None
    return value, None, cron


def redact_url(url: str) -> str:
    """Replace the password in a redis/rediss/unix URL (userinfo or ``password=`` query) with ``***``.

    Errs on the side of hiding too much: everything between the first ``:`` of the
    userinfo and the last ``@`` goes, so a password with unescaped ``/`` or ``@`` is hidden
    too. A ``password=`` value ends at the next ``&``, as redis-py parses the query.
    """
    text = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        rest = f"{user}:***@{hostpart}"
    return f"{scheme}{sep}{rest}"


def string(value: object, where: str) -> str:
    """Return a non-empty string."""
    if isinstance(value, str) and value:
        return value
    msg = f"{where}: expected a non-empty string, got {value!r}"
    raise ConfigError(msg)


def secret_string(value: object, where: str) -> str:
    """Return a non-empty string; the message on error never shows the value."""
    if isinstance(value, str) and value:
        return value
    kind = (
        "an empty string" if value == "" else f"a {type(value).__name__} ({REDACTED})"
    )
    msg = f"{where}: expected a non-empty string, got {kind}"
    raise ConfigError(msg)


def choice(allowed: tuple[str, ...]) -> Callable[[object, str], str]:
    """Return a validator that accepts exactly one of ``allowed``."""

    def validate(value: object, where: str) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        options = " | ".join(repr(a) for a in allowed)
        msg = f"{where}: expected one of {options}, got {value!r}"
        raise ConfigError(msg)

    return validate


def globs(value: object, where: str) -> tuple[str, ...]:
    """Return a non-empty list of non-empty glob strings as a tuple."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, str) and item for item in value)
    ):
        return tuple(str(item) for item in value)
    msg = f'{where}: expected a non-empty list of queue globs like ["job_queue_*"], got {value!r}'
    raise ConfigError(msg)


def positive_int(value: object, where: str) -> int:
    """Return an integer greater than zero (bools are not integers here)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    msg = f"{where}: expected a positive integer, got {value!r}"
    raise ConfigError(msg)


def positive_duration(value: object, where: str) -> int:
    """Return a duration longer than zero seconds."""
    seconds = parse_duration(value, where)
    if seconds <= 0:
        msg = f"{where}: expected a duration longer than 0s, got {value!r}"
        raise ConfigError(msg)
    return seconds


def host_port(value: object, where: str) -> tuple[str, int]:
    """Return (host, port) from ``"host:port"`` or ``"[v6addr]:port"``; port 0-65535."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if (
            sep
            and host
            and port.isascii()
            and port.isdigit()
            and int(port) <= _MAX_PORT
        ):
            return host, int(port)
    msg = f"{where}: expected 'host:port', got {value!r}"
    raise ConfigError(msg)


def format_host_port(host: str, port: int) -> str:
    """Return ``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_address(value: object, where: str) -> str:
    """Return a validated ``"host:port"`` listen address as given."""
    host_port(value, where)
    assert isinstance(value, str)
    return value


def sentinel_list(value: object, where: str) -> tuple[tuple[str, int], ...]:
    """Return sentinel addresses from a list of ``"host:port"`` strings."""
    if not isinstance(value, list):
        msg = f"{where}: expected a list of 'host:port' strings, got {value!r}"
        raise ConfigError(msg)
    return tuple(host_port(item, where) for item in value)


def sentinel_csv(value: object, where: str) -> tuple[tuple[str, int], ...]:
    """Return sentinel addresses from ``"host:port,host:port"`` (the env form)."""
    text = string(value, where)
    return sentinel_list([part.strip() for part in text.split(",")], where)


def valid_redis_url(value: object, where: str) -> str:
    """Return a redis://, rediss:// or unix:// URL; errors show it redacted."""
    if isinstance(value, str):
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            pass
        else:
            if parts.scheme in REDIS_SCHEMES and (parts.netloc or parts.path):
                return value
        shown = repr(redact_url(value))
    else:
        shown = f"a {type(value).__name__}"
    msg = f"{where}: expected a redis://, rediss:// or unix:// URL, got {shown}"
    raise ConfigError(msg)


def suggest(name: str, known: list[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest known name, or the list of known names."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}"


_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def memory_budget(value: object, where: str) -> tuple[str, float]:
    """``"80%"`` (of ``maxmemory``, 1 to 100) or a size (``"512MB"``, ``"2GB"``; units of 1024).

    Returns ``("percent", 80.0)`` or ``("bytes", 536870912.0)``.
    """
    text = value.strip().upper() if isinstance(value, str) else ""
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if 0 < percent <= 100:  # noqa: PLR2004 - a percentage
                return "percent", percent
        else:
            unit = next(
                (u for u in ("TB", "GB", "MB", "KB", "B") if text.endswith(u)), ""
            )
            amount = float(text[: len(text) - len(unit)]) if unit else -1.0
            if amount > 0:
                return "bytes", amount * _SIZE_UNITS[unit]
    except ValueError:
        pass
    msg = f'{where}: expected a share of maxmemory like "80%" or a size like "512MB" or "2GB", got {value!r}'
    raise ConfigError(msg)


def format_budget(budget: tuple[str, float]) -> str:
    """``memory_budget``'s value as written in a config file."""
    kind, amount = budget
    if kind == "percent":
        return f"{amount:g}%"
    for unit in ("TB", "GB", "MB", "KB"):
        if amount >= _SIZE_UNITS[unit] and amount % _SIZE_UNITS[unit] == 0:
            return f"{int(amount // _SIZE_UNITS[unit])}{unit}"
    return f"{int(amount)}B"
