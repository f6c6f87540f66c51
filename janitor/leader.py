"""The leader lease: one janitor writes at a time, and a writer that lost the lease stops."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import redis
from redis.exceptions import LockError

from janitor.errors import LeadershipLost


@dataclass(frozen=True, slots=True)
class Fence:
    """The leader lease a write must still hold: checked inside each write script."""

    key: bytes
    token: bytes


class Lease:
    """A lease on ``[daemon] lease_key`` with a random token, over redis-py's ``Lock``.

    The token is shared between threads (``thread_local=False``): the daemon renews it
    from one thread and writes from another. Every write script checks the token itself
    (see ``janitor.scripts``), so a janitor paused past its lease writes nothing more.
    """

    def __init__(self, client: redis.Redis, key: str, ttl_s: int) -> None:
        self.key = key
        self.ttl_s = ttl_s
        self._lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; return whether this janitor now holds it."""
        return bool(self._lock.acquire(blocking=False))

    def confirm(self) -> None:
        """Renew the lease to its full TTL, proving it is still held.

        Raises:
            LeadershipLost: the lease expired or another janitor holds it now.
        """
        try:
            self._lock.reacquire()
        except LockError as err:
            msg = f"the lease {self.key!r} is no longer held by this janitor"
            raise LeadershipLost(msg) from err

    @property
    def fence(self) -> Fence:
        """The lease key and token that write scripts check."""
        token = self._lock.local.token
        if token is None:
            msg = f"the lease {self.key!r} is not held"
            raise LeadershipLost(msg)
        return Fence(
            self.key.encode(),
            token if isinstance(token, bytes) else str(token).encode(),
        )

    def release(self) -> None:
        """Give the lease up if still held; a lease that already lapsed is left alone."""
        with contextlib.suppress(LockError):
            self._lock.release()
