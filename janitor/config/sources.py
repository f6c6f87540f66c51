"""Reads each configuration source (TOML file, env, CLI flags, actinia INI) into a flat layer of validated values.

A layer maps a dotted key (``"retention.failed"``) to an :class:`Entry`: the typed value,
the short source shown by ``janitor config`` and the human location used in error messages.
``janitor.config`` stacks the layers by precedence; this module knows nothing of the
settings' shapes beyond the schema it is handed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from janitor.config.actinia import read_actinia_queue
from janitor.config.secret import Secret
from janitor.config.values import Validator, suggest, valid_redis_url
from janitor.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Entry:
    """One effective value with its origin."""

    value: object
    source: str
    """Short origin for ``janitor config``: ``"default"``, ``"file /etc/janitor.toml"``, ``"env X"``."""
    where: str
    """Location for error messages: ``"janitor.toml: [redis] url"``, ``"env JANITOR_REDIS_URL"``."""


Layer = dict[str, Entry]
"""Dotted key -> entry; one per source."""


@dataclass(frozen=True, slots=True)
class TableArray:
    """Schema for an array of tables such as ``[[retention.rules]]``: keys, required keys, builder."""

    keys: Mapping[str, Validator]
    required: tuple[str, ...]
    build: Callable[[int, Mapping[str, object]], object]
    """(position in file order, validated values) -> one element of the resulting tuple."""


Schema = Mapping[str, Mapping[str, Validator | TableArray]]
"""Section -> key -> validator (or a nested array of tables)."""


def read_toml_layer(path: str, schema: Schema) -> Layer:
    """Read and validate a TOML file against ``schema``; unknown sections and keys are errors."""
    data = _load_toml(path)
    source = f"file {path}"
    _check_known(data, list(schema), f"{path}: unknown section [", "]")
    layer: Layer = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            kind = type(table).__name__  # not the value: it might hold a password
            msg = f"{path}: [{section}] must be a table, got a {kind}"
            raise ConfigError(msg)
        keys = schema[section]
        _check_known(table, list(keys), f"{path}: unknown key [{section}] ")
        for key, raw in table.items():
            spec = keys[key]
            if isinstance(spec, TableArray):
                where = f"{path}: [[{section}.{key}]]"
                value: object = _table_array(raw, spec, path, f"[[{section}.{key}]]")
            else:
                where = f"{path}: [{section}] {key}"
                value = spec(raw, where)
            layer[f"{section}.{key}"] = Entry(value, source, where)
    return layer


def read_env_layer(
    env: Mapping[str, str], table: Mapping[str, tuple[str, Validator]]
) -> Layer:
    """Read the variables named in ``table`` (var -> (dotted key, validator)); empty ones count as unset."""
    layer: Layer = {}
    for var, (key, validate) in table.items():
        raw = env.get(var, "")
        if raw:
            where = f"env {var}"
            layer[key] = Entry(validate(raw, where), where, where)
    return layer


def read_flag_layer(flags: Mapping[str, tuple[str, str | None, Validator]]) -> Layer:
    """Read CLI flag values (flag -> (dotted key, value or None, validator)); None means not given."""
    layer: Layer = {}
    for flag, (key, raw, validate) in flags.items():
        if raw is not None:
            where = f"flag {flag}"
            layer[key] = Entry(validate(raw, where), where, where)
    return layer


def read_actinia_layer(setting: Entry | None, env: Mapping[str, str]) -> Layer:
    """Read the actinia INI named by the ``actinia.config`` entry: Redis URL, password, queue allowlist.

    Returns an empty layer when no actinia config is set.
    """
    if setting is None or setting.value is None:
        return {}
    queue = read_actinia_queue(str(setting.value), env, setting.where)
    where = f"{queue.path}: [QUEUE]"
    url_source = " + ".join(dict.fromkeys(queue.sources[a] for a in ("host", "port")))
    prefix_source = queue.sources["worker_queue_prefix"]
    layer: Layer = {
        "redis.url": Entry(valid_redis_url(queue.redis_url, where), url_source, where),
        "rq.queues": Entry(queue.queue_globs, prefix_source, where),
    }
    if queue.password is not None:
        secret = Secret(queue.password)
        layer["redis.password"] = Entry(secret, queue.sources["password"], where)
    return layer


def merge_layers(layers: list[Layer]) -> Layer:
    """Stack layers, lowest precedence first: a later layer's entry replaces an earlier one's."""
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    return merged


def resolve_password_file(merged: Layer) -> None:
    """Read the effective ``redis.password_file`` into ``redis.password``, keeping its source."""
    entry = merged["redis.password_file"]
    if entry.value is not None:
        secret = Secret(read_secret_file(str(entry.value), entry.where))
        merged["redis.password"] = Entry(secret, entry.source, entry.where)


def pair_exclusive(layer: Layer, first: str, second: str) -> None:
    """Make ``first`` and ``second`` travel together: setting one unsets the other at the same level.

    Setting both in one layer is ambiguous and raises ConfigError naming both places.
    """
    one, two = layer.get(first), layer.get(second)
    if one is not None and two is not None:
        msg = f"{one.where} and {two.where} are both set; set only one of them"
        raise ConfigError(msg)
    if one is not None:
        layer[second] = Entry(None, one.source, one.where)
    elif two is not None:
        layer[first] = Entry(None, two.source, two.where)


def read_secret_file(path: str, where: str) -> str:
    """Return a secret file's text without its trailing newline; errors name ``where`` and the path."""
    try:
        with open(path, encoding="utf-8") as handle:  # noqa: PTH123 - plain str paths throughout
            text = handle.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        msg = f"{where}: cannot read password file {path!r}: {reason}"
        raise ConfigError(msg) from None
    if not text:
        msg = f"{where}: password file {path!r} is empty"
        raise ConfigError(msg)
    return text


def _load_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - plain str paths throughout
            return tomllib.load(handle)
    except OSError as err:
        msg = f"{path}: cannot read config file: {err.strerror}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as err:
        msg = f"{path}: invalid TOML: {err}"
        raise ConfigError(msg) from None


def _check_known(
    table: Mapping[str, object], known: list[str], before: str, after: str = ""
) -> None:
    for name in table:
        if name not in known:
            msg = f"{before}{name}{after}{suggest(name, known)}"
            raise ConfigError(msg)


def _table_array(
    raw: object, spec: TableArray, path: str, label: str
) -> tuple[object, ...]:
    where = f"{path}: {label}"
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        kind = type(raw).__name__
        msg = f"{where}: expected an array of tables ([[...]] entries), got a {kind}"
        raise ConfigError(msg)
    items: list[object] = []
    for index, table in enumerate(raw):
        here = f"{where}[{index}]"
        _check_known(table, list(spec.keys), f"{path}: unknown key {label}[{index}] ")
        for key in spec.required:
            if key not in table:
                msg = f"{here}: missing required key {key!r}"
                raise ConfigError(msg)
        values = {
            key: validate(table[key], f"{here} {key}")
            for key, validate in spec.keys.items()
            if key in table
        }
        items.append(spec.build(index, values))
    return tuple(items)
