"""The daemon's side of the leader lease: connect, then hold, renew or seek the lease, and say so.

One ``Leadership`` per daemon. Its ``tick()`` runs on a thread of its own every third of
the lease TTL, so a slow task never delays a renewal. A follower that finds the lease
about to lapse comes back right at the lapse, so it takes over within one TTL of the
leader's death. Safety does not depend on any of this timing: every write script checks
the lease token atomically (``janitor.scripts``).
"""

from __future__ import annotations

import threading
import time

import redis

from janitor.audit import get_logger
from janitor.config import Settings, redact_url
from janitor.connection import connect, server_info
from janitor.errors import LeadershipLost, RedisUnavailable
from janitor.leader import Lease

RENEWALS_PER_TTL = 3
"""The leader renews, and a follower retries, this many times per lease TTL."""

TAKEOVER_MARGIN_S = 0.05
"""A follower retries this long after the lease's remaining TTL, so the key is gone."""

_PTTL_NO_KEY = -2
"""What PTTL answers for a key that does not exist."""

log = get_logger(__name__)


class StoppableLease(Lease):
    """The daemon's lease: once the daemon is stopping, a running task ends after its current batch.

    The engine confirms the lease before every batch; refusing that confirmation is how
    a stop reaches a task between two batches without the engine knowing about signals.
    """

    def __init__(
        self, client: redis.Redis, key: str, ttl_s: int, stopping: threading.Event
    ) -> None:
        super().__init__(client, key, ttl_s)
        self._stopping = stopping

    def confirm(self) -> None:
        """Renew the lease before a batch, unless the daemon is stopping.

        Raises:
            LeadershipLost: the daemon is stopping, or the lease is no longer held.
        """
        if self._stopping.is_set():
            msg = "the janitor is stopping; the task ends after its current batch"
            raise LeadershipLost(msg)
        super().confirm()

    def renew(self) -> None:
        """Renew the lease to its full TTL (the lease thread's heartbeat).

        Raises:
            LeadershipLost: the lease lapsed or another janitor holds it now.
        """
        super().confirm()


class Leadership:
    """Whether this replica may write, and the client and lease it writes with.

    Args:
        settings: the ``[redis]`` and ``[daemon]`` settings are used.
        stopping: set once the daemon stops; the lease then refuses new batches.
    """

    def __init__(self, settings: Settings, stopping: threading.Event) -> None:
        self._settings = settings
        self._stopping = stopping
        self.key = settings.daemon.lease_key
        self.ttl_s = settings.daemon.lease_ttl
        self.renew_s = self.ttl_s / RENEWALS_PER_TTL
        self.client: redis.Redis | None = None
        self.lease: StoppableLease | None = None
        # Ticks run on the lease thread, lose() on the task thread.
        self._lock = threading.Lock()
        self._leader = False
        # Monotonic end of the lease by our last renewal: a renewal that stalls (a hung
        # Redis) ends our leadership locally when the lease lapses in Redis.
        self._valid_until = 0.0
        self._failures = 0
        self._down_since: float | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the lease, by its last renewal (no Redis call)."""
        return self._leader and time.monotonic() < self._valid_until

    @property
    def connected(self) -> bool:
        """Whether the last call to Redis succeeded."""
        return self.client is not None and self._down_since is None

    def tick(self) -> float | None:
        """Connect if need be, then renew the lease, or try to take it.

        Returns:
            The delay in seconds before the next tick when it should not be the usual
            ``renew_s``: shorter to be there when the lease lapses, longer to back off
            from an unreachable Redis.

        Raises:
            ConfigError: the ``[redis]`` settings cannot work at all (a fatal error).
        """
        if self._stopping.is_set():
            return None
        client = self.client or self._connect()
        if client is None:
            return self._backoff()
        try:
            delay = self._step(client)
        except redis.RedisError as err:
            self._unreachable(err)
            return self._backoff()
        self._reachable()
        return delay

    def lose(self, reason: str) -> None:
        """Stop counting as leader (a task found the lease gone); the next tick may regain it."""
        with self._lock:
            if self._leader:
                self._leader = False
                log.warning("leadership_lost", lease_key=self.key, reason=reason)

    def release(self) -> None:
        """Give the lease up at shutdown, so a successor need not wait for the TTL."""
        with self._lock:
            was_leader, self._leader = self._leader, False
        if self.lease is None:
            return
        try:
            self.lease.release()
        except redis.RedisError as err:
            log.warning("lease_not_released", lease_key=self.key, error=str(err))
            return
        if was_leader:
            log.info("leadership_released", lease_key=self.key)

    def _connect(self) -> redis.Redis | None:
        try:
            client = connect(self._settings.redis)
        except RedisUnavailable as err:
            self._unreachable(err)
            return None
        try:
            info = server_info(client)
        except redis.RedisError:
            info = {}
        log.info("redis_connected", url=redact_url(self._settings.redis.url), **info)
        self.lease = StoppableLease(client, self.key, self.ttl_s, self._stopping)
        self.client = client
        return client

    def _step(self, client: redis.Redis) -> float | None:
        lease = self.lease
        assert lease is not None, "set together with the client"
        started = time.monotonic()
        try:
            lease.renew()
        except LeadershipLost:
            self.lose("the lease lapsed or another janitor holds it")
        else:
            self._held(started)
            return None
        if lease.acquire():
            self._held(started)
            return None
        # A follower: come back right when the lease lapses if that is before the next
        # regular tick, so a dead leader is replaced within one TTL, not TTL + 1/3.
        remaining_ms = int(client.pttl(self.key))
        if remaining_ms == _PTTL_NO_KEY:  # lapsed since our SET NX: try again at once
            return 0.0
        if 0 <= remaining_ms < self.renew_s * 1000:
            return remaining_ms / 1000 + TAKEOVER_MARGIN_S
        return None

    def _held(self, started: float) -> None:
        with self._lock:
            self._valid_until = started + self.ttl_s
            if not self._leader:
                self._leader = True
                log.info("leadership_acquired", lease_key=self.key, ttl_s=self.ttl_s)

    def _unreachable(self, err: Exception) -> None:
        self._failures += 1
        self.lose("Redis is unreachable")
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "redis_disconnected",
                error=str(err),
                retry_every_s=f"{self.renew_s:g} to {self.ttl_s:g}",
            )
        else:
            log.debug("redis_still_unreachable", error=str(err))

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.info(
                "redis_reconnected",
                down_s=round(time.monotonic() - self._down_since, 3),
            )
        self._down_since = None
        self._failures = 0

    def _backoff(self) -> float | None:
        # Double the pause after each failure, from the usual pace up to one TTL: N
        # replicas do not hammer a Redis that is restarting, and once it is back the
        # leader resumes (and a follower takes over) within one TTL, as after a death.
        delay = min(self.renew_s * 2 ** max(self._failures - 1, 0), float(self.ttl_s))
        return None if delay <= self.renew_s else delay
