"""Build the one Redis client the janitor uses, check it answers, and summarise the server.

``connect()`` is the only place in the project that creates a ``redis.Redis``: plain,
TLS and unix-socket URLs, a password from the settings, Sentinel, timeouts, a bounded
retry on transient errors and a ``PING`` before the client is handed out.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import Connection
from redis.retry import Retry
from redis.sentinel import Sentinel

from janitor.config import RedisSettings, redact_url
from janitor.errors import ConfigError, RedisUnavailable

SOCKET_TIMEOUT_S = 10.0  # how long one command may wait for its reply
SOCKET_CONNECT_TIMEOUT_S = 5.0  # how long opening a connection may take
HEALTH_CHECK_INTERVAL_S = 30  # an idle pooled connection is PINGed before reuse
RETRIES = 3  # retries after a connection error or timeout: four tries in all
RETRY_BACKOFF_BASE_S = 0.1  # exponential backoff 0.2 s, 0.4 s, 0.8 s ...
RETRY_BACKOFF_CAP_S = 1.0  # ... never longer than this

_TRANSIENT: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_NOT_FOR_SENTINEL = ("host", "port", "path", "connection_class")
_AUTH_HINT = " (no password given: set JANITOR_REDIS_PASSWORD or [redis] password_file)"
_SUMMARY = (
    "maxmemory",
    "maxmemory_policy",
    "used_memory_human",
    "connected_clients",
    "dbsize",
)


def connect(settings: RedisSettings, *, client_name: str = "rq-janitor") -> redis.Redis:
    """Return a bytes client for ``settings``, after one successful ``PING``.

    Args:
        settings: the ``[redis]`` settings; ``password`` and the ``ssl_*`` options
            override the same values in the URL, the URL's user name is kept.
        client_name: the name the server shows for this client in ``CLIENT LIST``.

    Returns:
        A ``redis.Redis`` with ``decode_responses=False``; with ``sentinels`` set, a
        client for the master that Sentinel names.

    Raises:
        ConfigError: the URL is malformed or has unknown options, ``ssl_*`` options
            come with a URL that is not ``rediss://``, or Sentinel lacks a master name.
        RedisUnavailable: the server (or Sentinel) cannot be reached or refuses us.
    """
    client = _client(settings, client_name)
    # redis-py nests retries (connect inside command); the first PING is one try, so
    # a dead or hung server fails within the timeouts, not after minutes.
    retry = client.get_retry()
    client.set_retry(Retry(NoBackoff(), 0))
    try:
        client.ping()
    except TypeError as err:  # an option in the URL's query that redis-py does not know
        client.close()
        msg = f"[redis] url {redact_url(settings.url)!r} has an unknown option: {err}"
        raise ConfigError(msg) from None
    except (redis.RedisError, OSError) as err:
        client.close()
        secret = client.connection_pool.connection_kwargs.get("password")
        reason = str(err) or type(err).__name__
        if secret:
            reason = reason.replace(secret, "***")
        if isinstance(err, redis.AuthenticationError):
            reason = f"authentication failed{'' if secret else _AUTH_HINT}: {reason}"
        msg = f"cannot reach Redis at {_where(settings)}: {reason}"
        if secret and secret in "".join(traceback.format_exception(err)):
            raise RedisUnavailable(msg) from None
        raise RedisUnavailable(msg) from err
    if retry is not None:
        client.set_retry(retry)
    return client


def server_info(client: redis.Redis) -> dict[str, str]:
    """Return a read-only summary of the server, for ``janitor check`` and the logs.

    Keys: ``flavour`` (redis or valkey), ``version``, ``redis_mode``, ``maxmemory``,
    ``maxmemory_policy``, ``used_memory_human``, ``connected_clients``, ``dbsize``.
    A value a managed server refuses to tell (INFO section, CONFIG GET or DBSIZE
    disabled or not permitted) is ``"unknown"``; connection errors propagate.
    """
    info: dict[str, Any] = {}
    readers: tuple[Callable[[], Mapping[Any, Any]], ...] = (
        lambda: client.info("server"),
        lambda: client.info("memory"),
        lambda: client.info("clients"),
        lambda: {"dbsize": client.dbsize()},
        lambda: {} if "maxmemory_policy" in info else client.config_get("maxmemory*"),
    )
    for read in readers:
        with contextlib.suppress(redis.ResponseError):
            info.update({str(k).replace("-", "_"): v for k, v in read().items()})
    flavour = info.get("server_name") or (
        "valkey" if "valkey_version" in info else "redis"
    )
    summary = {
        "flavour": flavour,
        "version": info.get("valkey_version") or info.get("redis_version"),
        "redis_mode": info.get("redis_mode") or info.get("server_mode"),  # Valkey 8
        **{k: info.get(k) for k in _SUMMARY},
    }
    return {k: "unknown" if v is None else str(v) for k, v in summary.items()}


def checkout(client: redis.Redis) -> Connection:
    """Take a connection from ``client``'s pool for the caller alone; ``pool.release`` gives it back.

    redis-py before 5.3 requires a command name here (and ignores it); from 5.3 on, passing
    one is deprecated. The signature tells which release this is.
    """
    pool = client.connection_pool
    takes_name = inspect.signature(pool.get_connection).parameters.get("command_name")
    if takes_name is not None and takes_name.default is inspect.Parameter.empty:
        conn: Connection = pool.get_connection("_")
    else:
        conn = pool.get_connection()
    return conn


def _client(settings: RedisSettings, client_name: str) -> redis.Redis:
    """Build the client (not yet connected) for a URL, or for a Sentinel master."""
    overrides: dict[str, Any] = {k: getattr(settings, k) for k in _SSL_OPTIONS}
    if settings.password is not None:
        overrides["password"] = settings.password.reveal()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    retry = Retry(
        ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S),
        RETRIES,
        supported_errors=_TRANSIENT,
    )
    try:
        pool = redis.ConnectionPool.from_url(
            settings.url,
            client_name=client_name,
            decode_responses=False,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=retry,
            retry_on_error=list(_TRANSIENT),
        )
    except ValueError as err:
        msg = f"[redis] url {redact_url(settings.url)!r} is invalid: {err}"
        raise ConfigError(msg) from None
    tls = issubclass(pool.connection_class, redis.SSLConnection)
    if not tls and (misplaced := sorted(set(overrides) & set(_SSL_OPTIONS))):
        msg = f"[redis] {misplaced[0]} is set, but [redis] url is not a rediss:// URL"
        raise ConfigError(msg)
    pool.connection_kwargs.update(overrides)  # from_url lets the URL win over kwargs
    if settings.sentinels:
        return _sentinel_client(settings, pool)
    return redis.Redis.from_pool(pool)


def _sentinel_client(
    settings: RedisSettings, pool: redis.ConnectionPool
) -> redis.Redis:
    """Return a client for the Sentinel-managed master, with the pool's options."""
    if not settings.sentinel_master:
        msg = "[redis] sentinel_master is required when [redis] sentinels is set"
        raise ConfigError(msg)
    if issubclass(pool.connection_class, redis.UnixDomainSocketConnection):
        msg = "[redis] sentinels need a redis:// or rediss:// url, not unix://"
        raise ConfigError(msg)
    options = {
        k: v for k, v in pool.connection_kwargs.items() if k not in _NOT_FOR_SENTINEL
    }
    options["ssl"] = issubclass(pool.connection_class, redis.SSLConnection)
    pool.disconnect()
    # Typed from redis-py 8.2 on, untyped before: through a Callable both type-check alike.
    make_sentinel: Callable[..., Any] = Sentinel
    sentinel = make_sentinel(
        list(settings.sentinels),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
    )
    client: redis.Redis = sentinel.master_for(settings.sentinel_master, **options)
    return client


def _where(settings: RedisSettings) -> str:
    """Return the URL for messages: its password, or one from the settings, as ``***``."""
    url = redact_url(settings.url)
    if settings.password is not None and ":***@" not in url:
        scheme, sep, rest = url.partition("://")
        user, _, host = rest.rpartition("@")
        url = f"{scheme}{sep}{user}:***@{host}"
    if settings.sentinels:
        via = ",".join(f"{name}:{port}" for name, port in settings.sentinels)
        url += f" (sentinel master {settings.sentinel_master!r} via {via})"
    return url
