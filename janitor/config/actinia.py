"""Reads actinia's INI ``[QUEUE]`` section, plus actinia's own env overrides, as actinia itself would; never imports actinia.

actinia-core's ``Configuration.read`` uses a plain ``configparser.ConfigParser`` (option
names case-insensitive, ``[QUEUE]`` case-sensitive, BasicInterpolation, no inline-comment
stripping); a legacy ``redis_queue_*`` option counts only when its ``kvdb_queue_*`` twin is
absent; afterwards the environment (``KVDB_QUEUE_SERVER_URL/PORT/PW``, legacy
``REDIS_QUEUE_SERVER_*`` only when the new one is unset or empty) overrides the file.
Unlike actinia, the literal ``"None"`` (which actinia's own ``write()`` produces) and ``""``
count as unset here, and the port must be an integer.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass, field

from janitor.errors import ConfigError

SECTION = "QUEUE"
"""The INI section actinia keeps its RQ settings in (case-sensitive)."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "job_queue"
_UNSET = ("", "None")
_MAX_PORT = 65_535

# attribute -> (option, legacy option, env var, legacy env var)
_OPTIONS: Mapping[str, tuple[str, str, str | None, str | None]] = {
    "host": (
        "kvdb_queue_server_url",
        "redis_queue_server_url",
        "KVDB_QUEUE_SERVER_URL",
        "REDIS_QUEUE_SERVER_URL",
    ),
    "port": (
        "kvdb_queue_server_port",
        "redis_queue_server_port",
        "KVDB_QUEUE_SERVER_PORT",
        "REDIS_QUEUE_SERVER_PORT",
    ),
    "password": (
        "kvdb_queue_server_password",
        "redis_queue_server_password",
        "KVDB_QUEUE_SERVER_PW",
        "REDIS_QUEUE_SERVER_PW",
    ),
    "job_ttl": ("kvdb_queue_job_ttl", "redis_queue_job_ttl", None, None),
    "worker_queue_prefix": ("worker_queue_prefix", "worker_queue_prefix", None, None),
    "queue_type": ("queue_type", "queue_type", None, None),
}


@dataclass(frozen=True, slots=True)
class ActiniaQueue:
    """The RQ side of an actinia deployment: where its queue server is and how its queues are named."""

    path: str
    host: str = DEFAULT_HOST
    """A host name, despite actinia's ``kvdb_queue_server_url`` option name."""
    port: int = DEFAULT_PORT
    password: str | None = field(default=None, repr=False)
    worker_queue_prefix: str = DEFAULT_PREFIX
    queue_type: str | None = None
    """``local`` | ``kvdb`` | ``per_job`` | ``per_user`` (``redis`` is silently broken on actinia >= 6)."""
    job_ttl: str | None = None
    """``kvdb_queue_job_ttl`` as written; actinia hands it to RQ as ``ttl`` and ``result_ttl``."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Attribute -> ``"actinia <path>"`` or ``"env KVDB_QUEUE_SERVER_URL"``."""

    @property
    def redis_url(self) -> str:
        """The URL actinia's RQ connection uses: ``redis://host:port/0`` (actinia has no DB option)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def queue_globs(self) -> tuple[str, ...]:
        """The allowlist covering every RQ queue actinia creates: ``("<prefix>_*",)``."""
        return (f"{self.worker_queue_prefix}_*",)


def read_actinia_queue(path: str, env: Mapping[str, str], where: str) -> ActiniaQueue:
    """Read ``path``'s ``[QUEUE]`` section and apply actinia's env overrides from ``env``.

    ``where`` names the setting that pointed here (``"janitor.toml: [actinia] config"``);
    a missing or unreadable file raises ConfigError naming it and the path.
    """
    parser = _parse(path, where)
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    wheres: dict[str, str] = {}
    for attr, (option, legacy, env_var, legacy_env) in _OPTIONS.items():
        name = option if parser.has_option(SECTION, option) else legacy
        raw = _from_ini(parser, path, name)
        if raw is not None:
            values[attr], sources[attr] = raw, f"actinia {path}"
            wheres[attr] = f"{path}: [{SECTION}] {name}"
        for var in (env_var, legacy_env):
            raw = env.get(var, "") if var else ""
            if raw not in _UNSET:
                values[attr], sources[attr], wheres[attr] = (
                    raw,
                    f"env {var}",
                    f"env {var}",
                )
                break
    return ActiniaQueue(
        path=path,
        host=values.get("host", DEFAULT_HOST),
        port=_port(values.get("port"), wheres.get("port", path)),
        password=values.get("password"),
        worker_queue_prefix=values.get("worker_queue_prefix", DEFAULT_PREFIX),
        queue_type=values.get("queue_type"),
        job_ttl=values.get("job_ttl"),
        sources={attr: sources.get(attr, f"actinia {path}") for attr in _OPTIONS},
    )


def _parse(path: str, where: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:  # noqa: PTH123 - plain str paths throughout
            parser.read_file(handle, source=path)
    except OSError as err:
        msg = f"{where}: cannot read actinia config {path!r}: {err.strerror}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"{path}: cannot read actinia config: not UTF-8 text"
        raise ConfigError(msg) from None
    # The parser's own messages quote the bad lines, which may hold a password.
    except configparser.MissingSectionHeaderError as err:
        msg = (
            f"{path}: invalid actinia INI: line {err.lineno} comes before any [section]"
        )
        raise ConfigError(msg) from None
    except configparser.ParsingError as err:
        lines = ", ".join(str(lineno) for lineno, _ in err.errors)
        msg = f"{path}: invalid actinia INI: cannot parse line {lines}"
        raise ConfigError(msg) from None
    except configparser.Error as err:
        msg = f"{path}: invalid actinia INI: {err.message}"
        raise ConfigError(msg) from None
    return parser


def _from_ini(parser: configparser.ConfigParser, path: str, name: str) -> str | None:
    """Return the option's value as actinia reads it, or None when absent, ``""`` or ``"None"``."""
    if not parser.has_option(SECTION, name):
        return None
    try:
        raw = parser.get(SECTION, name)
    except configparser.InterpolationError:
        # The parser's message quotes the value, which may be a password.
        msg = f"{path}: [{SECTION}] {name}: bad '%' interpolation (write a literal '%' as '%%')"
        raise ConfigError(msg) from None
    return None if raw in _UNSET else raw


def _port(raw: str | None, where: str) -> int:
    if raw is None:
        return DEFAULT_PORT
    text = raw.strip()
    if text.isascii() and text.isdigit() and 0 < int(text) <= _MAX_PORT:
        return int(text)
    msg = f"{where}: expected an integer port, got {raw!r}"
    raise ConfigError(msg)
