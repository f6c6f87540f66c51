"""A pub/sub client in a test, typed alike under every redis-py release (``pubsub`` is untyped in some)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.client import PubSub


def new_pubsub(r: redis.Redis) -> PubSub:
    """A pubsub client of ``r``."""
    make: Callable[[], PubSub] = r.pubsub
    return make()


def listen(r: redis.Redis, channel: bytes) -> PubSub:
    """A client of ``r`` subscribed to ``channel``, as a live worker (or its orphaned horse) is."""
    pubsub = new_pubsub(r)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)
    return pubsub
