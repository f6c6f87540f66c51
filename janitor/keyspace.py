"""Every Redis key name of RQ (1.16 to 3.x) and of the janitor, and how to read them back.

This is the only module that knows key templates. RQ builds all of its names as
``<prefix>:<kind>:<name>`` with prefix ``rq`` (RQ 3 takes ``RQ_KEY_PREFIX``), except for
the dependencies set, whose template has a double colon in every version:
``rq:job::<id>:dependencies``. Keys are ``bytes`` because job ids and queue names are
free-form before RQ 2.8 and the client is a bytes client.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import redis

JANITOR_PREFIX = "janitor"
"""The janitor's own keys live under this prefix, never under RQ's."""


def to_bytes(value: str | bytes) -> bytes:
    """Encode a name for use in a key (UTF-8, as redis-py would)."""
    return value if isinstance(value, bytes) else value.encode()


def to_text(value: bytes | str) -> str:
    """Decode a name read from Redis for logs and globs; undecodable bytes are escaped."""
    if isinstance(value, str):
        return value
    return value.decode("utf-8", errors="backslashreplace")


QUEUE_REGISTRIES = (
    "started",
    "finished",
    "failed",
    "deferred",
    "scheduled",
    "canceled",
    "ready",
)
"""Every per-queue registry (a sorted set) of RQ 1.16 to 3.x, by ``Keyspace`` method name."""


class Layout(enum.Enum):
    """The generation of RQ's data layout found in a database."""

    RQ1 = "1.x"
    RQ2 = "2.x"
    RQ2_OR_LATER = "2.x or 3.x"
    """Job data as RQ 2.0 and later write it, and nothing only 3.x writes."""
    RQ3 = "3.x"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Builds RQ's key names for one key prefix (``[rq] key_prefix``)."""

    prefix: str = "rq"

    def _key(self, *parts: str | bytes) -> bytes:
        return b":".join([to_bytes(self.prefix), *(to_bytes(part) for part in parts)])

    def glob(self, *parts: str) -> bytes:
        """A SCAN pattern under RQ's prefix, e.g. ``glob("results", "*")``."""
        return self._key(*parts)

    # -- queues and their registries ------------------------------------------------
    def queues(self) -> bytes:
        """``rq:queues``: the set of queue keys RQ knows."""
        return self._key("queues")

    def queue(self, name: str | bytes) -> bytes:
        """``rq:queue:<q>``: the list of queued job ids."""
        return self._key("queue", name)

    def intermediate(self, name: str | bytes) -> bytes:
        """``rq:queue:<q>:intermediate``: jobs between dequeue and start (RQ 1.15+)."""
        return self.queue(name) + b":intermediate"

    def queue_name_from_key(self, key: bytes) -> bytes | None:
        """Return the queue name of a ``rq:queue:<q>`` member of ``rq:queues``, else None."""
        head = self._key("queue", "")
        return (
            key[len(head) :] if key.startswith(head) and len(key) > len(head) else None
        )

    def started(self, name: str | bytes) -> bytes:
        """``rq:wip:<q>``: the started registry."""
        return self._key("wip", name)

    def finished(self, name: str | bytes) -> bytes:
        """``rq:finished:<q>``: the finished registry."""
        return self._key("finished", name)

    def failed(self, name: str | bytes) -> bytes:
        """``rq:failed:<q>``: the failed registry (failed and stopped jobs)."""
        return self._key("failed", name)

    def canceled(self, name: str | bytes) -> bytes:
        """``rq:canceled:<q>``: the canceled registry (RQ 1.10+)."""
        return self._key("canceled", name)

    def deferred(self, name: str | bytes) -> bytes:
        """``rq:deferred:<q>``: jobs waiting on dependencies."""
        return self._key("deferred", name)

    def scheduled(self, name: str | bytes) -> bytes:
        """``rq:scheduled:<q>``: jobs waiting for their time."""
        return self._key("scheduled", name)

    def ready(self, name: str | bytes) -> bytes:
        """``rq:ready:<q>``: RQ 3's ready-to-enqueue registry."""
        return self._key("ready", name)

    def registry_of_key(self, key: bytes) -> tuple[str, bytes] | None:
        """(registry, queue name) for a key shaped like a per-queue registry or intermediate list.

        The registry is a ``QUEUE_REGISTRIES`` name or ``intermediate``. Read off the
        builders' templates, so a queue name with ``:`` in it stays whole. One shape is
        ambiguous: ``rq:queue:<x>:intermediate`` is also the list of a queue named
        ``<x>:intermediate``; callers that can tell (it is a member of ``rq:queues``) must.
        """
        for kind, head, tail in _queue_key_shapes(self):
            if key.startswith(head) and key.endswith(tail):
                name = key[len(head) : len(key) - len(tail)]
                if name:
                    return kind, name
        return None

    def compact_glob(self) -> bytes:
        """``rq:queue:_compact:*``: the lists ``Queue.compact()`` renames a queue to while it runs."""
        return self._key("queue", "_compact", "*")

    def suspended(self) -> bytes:
        """``rq:suspended``: while it exists, every worker pauses (``rq suspend``)."""
        return self._key("suspended")

    def scheduler_lock(self, name: str | bytes) -> bytes:
        """``rq:scheduler-lock:<q>``: held (61 s TTL) while a scheduler serves the queue."""
        return self._key("scheduler-lock", name)

    def cleaning_marker(self, name: str | bytes) -> bytes:
        """``rq:clean_registries:<q>``: the workers' maintenance lock for a queue."""
        return self._key("clean_registries", name)

    # -- jobs -------------------------------------------------------------------------
    def job(self, job_id: str | bytes) -> bytes:
        """``rq:job:<id>``: the job hash."""
        return self._key("job", job_id)

    def dependents(self, job_id: str | bytes) -> bytes:
        """``rq:job:<id>:dependents``: ids of the jobs waiting on this one."""
        return self.job(job_id) + b":dependents"

    def dependencies(self, job_id: str | bytes) -> bytes:
        """``rq:job::<id>:dependencies``: ids this job waits on (RQ's double colon)."""
        return self._key("job", "", job_id) + b":dependencies"

    def results(self, job_id: str | bytes) -> bytes:
        """``rq:results:<id>``: the job's result stream (RQ 1.12+)."""
        return self._key("results", job_id)

    def executions(self, job_id: str | bytes) -> bytes:
        """``rq:executions:<id>``: the job's execution registry (RQ 2.0+)."""
        return self._key("executions", job_id)

    def execution(self, job_id: str | bytes, execution_id: str | bytes) -> bytes:
        """``rq:execution:<id>:<exec>``: one execution's hash (RQ 2.0+)."""
        return self._key("execution", job_id, execution_id)

    def execution_of_member(self, member: str | bytes) -> bytes:
        """``rq:execution:<id>:<exec>`` named by ``<id>:<exec>``, a member of a worker's executions set."""
        return self._key("execution", member)

    def group(self, name: str | bytes) -> bytes:
        """``rq:group:<name>``: a group's set of job ids (RQ 2.0+)."""
        return self._key("group", name)

    def groups(self) -> bytes:
        """``rq:groups``: the set of group names (RQ 2.0+)."""
        return self._key("groups")

    def cron_schedulers(self) -> bytes:
        """``rq:cron_schedulers``: cron scheduler names by last heartbeat (RQ 2.6+)."""
        return self._key("cron_schedulers")

    def cron_scheduler(self, name: str | bytes) -> bytes:
        """``rq:cron_scheduler:<name>``: a cron scheduler's hash (RQ 2.6+; a 120 s TTL)."""
        return self._key("cron_scheduler", name)

    def rate_limit_keys(self) -> bytes:
        """``rq:rl-keys``: the set of rate-limit keys in use (RQ 3.0+)."""
        return self._key("rl-keys")

    def rate_limit(self, key: str | bytes) -> bytes:
        """``rq:rl:<key>``: a rate limit's config hash (``concurrency``; RQ 3.0+)."""
        return self._key("rl", key)

    def rate_limit_allowed(self, key: str | bytes) -> bytes:
        """``rq:rl:<key>:allowed``: ids holding one of the limit's slots (RQ 3.0+)."""
        return self.rate_limit(key) + b":allowed"

    def rate_limit_waiting(self, key: str | bytes) -> bytes:
        """``rq:rl:<key>:rate_limited``: ids waiting for a slot, oldest first (RQ 3.0+)."""
        return self.rate_limit(key) + b":rate_limited"

    # -- workers ----------------------------------------------------------------------
    def worker(self, name: str | bytes) -> bytes:
        """``rq:worker:<w>``: a worker's hash."""
        return self._key("worker", name)

    def workers(self, queue: str | bytes | None = None) -> bytes:
        """``rq:workers`` or, for a queue, ``rq:workers:<q>``: sets of worker keys."""
        return self._key("workers") if queue is None else self._key("workers", queue)

    def worker_executions(self, name: str | bytes) -> bytes:
        """``rq:worker:<w>:executions``: RQ 3's set of a worker's executions."""
        return self.worker(name) + b":executions"

    def worker_name_from_key(self, key: bytes) -> bytes | None:
        """Return the name in a ``rq:worker:<w>`` key (what the worker sets hold), else None.

        Only the prefix is stripped: names may contain ``:``, so whether a key is a
        worker hash or RQ 3's ``:executions`` set is decided by its TYPE, not here.
        """
        head = self._key("worker", "")
        return (
            key[len(head) :] if key.startswith(head) and len(key) > len(head) else None
        )

    def queue_name_from_workers_key(self, key: bytes) -> bytes | None:
        """Return the queue name of a per-queue worker set ``rq:workers:<q>``, else None."""
        head = self._key("workers", "")
        return (
            key[len(head) :] if key.startswith(head) and len(key) > len(head) else None
        )

    def pubsub_channel(self, name: str | bytes) -> bytes:
        """``rq:pubsub:<w>``: the channel a live worker (RQ 1.6+) listens on; not a key."""
        return self._key("pubsub", name)

    # -- members ----------------------------------------------------------------------
    @staticmethod
    def started_member(job_id: bytes, execution_id: bytes | None) -> bytes:
        """The started-registry member of a job: ``<id>`` (1.x) or ``<id>:<exec>`` (2.0+)."""
        return job_id if execution_id is None else job_id + b":" + execution_id

    @staticmethod
    def parse_started_member(
        member: bytes, layout: Layout
    ) -> tuple[bytes, bytes | None]:
        """Split a started-registry member into job id and execution id.

        RQ 1.x stores the plain id, which may itself contain ``:``; from 2.0 on the member
        is ``<id>:<exec>``, split on the last colon as RQ's ``parse_composite_key`` does.
        """
        if layout in (Layout.RQ1, Layout.UNKNOWN) or b":" not in member:
            return member, None
        job_id, _, execution_id = member.rpartition(b":")
        return job_id, execution_id

    # -- the janitor's own keys -------------------------------------------------------
    @staticmethod
    def janitor_key(*parts: str | bytes) -> bytes:
        """A key of the janitor's own state, ``janitor:<parts>``."""
        return b":".join([JANITOR_PREFIX.encode(), *(to_bytes(part) for part in parts)])

    @staticmethod
    def abandoned_suspects(queue: str | bytes) -> bytes:
        """``janitor:suspects:<q>``: started-registry members seen abandoned once, awaiting a second look."""
        return Keyspace.janitor_key("suspects", queue)

    def queue_empty_since(self, name: str | bytes) -> bytes:
        """``janitor:prune_queues:empty_since:<prefix>:<q>``: when a queue was first seen empty.

        One key per queue (not a hash field) so each expires on its own; the RQ prefix
        keeps equally named queues of two RQ prefixes in one database apart.
        """
        return self.janitor_key("prune_queues", "empty_since", self.prefix, name)

    def unlisted_scan_cursor(self) -> bytes:
        """``janitor:unlisted:cursor:<prefix>``: where the SCAN for unlisted queues resumes."""
        return self.janitor_key("unlisted", "cursor", self.prefix)

    def unlisted_record(self) -> bytes:
        """``janitor:unlisted:queues:<prefix>``: sorted set of unlisted queues found, by when last seen."""
        return self.janitor_key("unlisted", "queues", self.prefix)

    def worker_scan_cursor(self) -> bytes:
        """``janitor:prune_workers:cursor:<prefix>``: where prune_workers' keyspace SCAN resumes."""
        return self.janitor_key("prune_workers", "cursor", self.prefix)

    def orphan_scan_cursor(self) -> bytes:
        """``janitor:sweep_orphans:cursor:<prefix>``: where sweep_orphans' keyspace SCAN resumes."""
        return self.janitor_key("sweep_orphans", "cursor", self.prefix)

    @staticmethod
    def memo(*parts: str) -> bytes:
        """``janitor:memo:<parts>``: a write script's remembered reply (120-second TTL)."""
        return Keyspace.janitor_key("memo", *parts)

    def scheduled_sighting(self, job_id: str | bytes) -> bytes:
        """``janitor:clean_registries:scheduled:<prefix>:<id>``: a dangling scheduled id's first sighting.

        Keyed by job id alone: RQ has one job hash per id, so an id is in one queue.
        """
        return self.janitor_key("clean_registries", "scheduled", self.prefix, job_id)

    def stuck_sighting(self, job_id: str | bytes) -> bytes:
        """``janitor:clean_registries:stuck:<prefix>:<id>``: when a deferred job was first seen stuck, and on what."""
        return self.janitor_key("clean_registries", "stuck", self.prefix, job_id)

    def parse_execution_key(self, key: bytes) -> tuple[bytes, bytes] | None:
        """Split ``rq:execution:<id>:<exec>`` into job and execution id, else None.

        The tail is RQ's composite ``<id>:<exec>``, split as RQ splits it (last colon);
        execution ids are RQ-made hex strings without a colon.
        """
        head = self._key("execution", b"")
        if not key.startswith(head):
            return None
        job_id, execution_id = self.parse_started_member(key[len(head) :], Layout.RQ2)
        return (job_id, execution_id) if job_id and execution_id else None


_SLOT = b"\x00"
"""Stands in for the id when a key template is read off its builder."""


@functools.cache
def _queue_key_shapes(keys: Keyspace) -> tuple[tuple[str, bytes, bytes], ...]:
    """(registry, head, tail) of every per-queue key ``registry_of_key`` knows, read off the builders once."""
    builders = [(kind, getattr(keys, kind)) for kind in QUEUE_REGISTRIES]
    shapes = []
    for kind, build in [*builders, ("intermediate", keys.intermediate)]:
        head, _, tail = build(_SLOT).partition(_SLOT)
        shapes.append((kind, head, tail))
    return tuple(shapes)


def id_in(build: Callable[[bytes], bytes], key: bytes) -> bytes | None:
    """Return the ``<id>`` in ``key`` if it has the shape ``build`` makes, else None.

    ``build`` is a one-id builder such as ``Keyspace.results``; its template (head and
    tail around the id) is read off the builder itself, so parsing cannot drift from
    building, and nothing is split on ``:``, which ids may contain before RQ 2.1.
    """
    head, _, tail = build(_SLOT).partition(_SLOT)
    if len(key) > len(head) + len(tail) and key.startswith(head) and key.endswith(tail):
        return key[len(head) : len(key) - len(tail)]
    return None


def iter_queue_names(
    client: redis.Redis, keys: Keyspace, *, count: int = 1000
) -> Iterable[bytes]:
    """Yield the names of the queues listed in ``rq:queues`` (SSCAN, no duplicates kept)."""
    seen: set[bytes] = set()
    for member in client.sscan_iter(keys.queues(), count=count):
        name = keys.queue_name_from_key(cast("bytes", member))
        if name is not None and name not in seen:
            seen.add(name)
            yield name


def _any_key(
    client: redis.Redis, pattern: bytes, *, type_: str | None, max_calls: int
) -> bool:
    """Return whether SCAN finds a key matching ``pattern`` within ``max_calls`` calls."""
    cursor = 0
    for _ in range(max_calls):
        cursor, found = client.scan(
            cursor=cursor, match=pattern, count=1000, _type=type_
        )
        if found:
            return True
        if cursor == 0:
            return False
    return False


def detect_layout(
    client: redis.Redis, keys: Keyspace, *, max_scan_calls: int = 50
) -> Layout:
    """Guess RQ's data layout from live evidence, reading only (for ``janitor check``).

    Worker hashes carry RQ's ``version``. Without workers: a key prefix other than ``rq``
    (only RQ 3 honours ``RQ_KEY_PREFIX``) or a key only RQ 3 writes (``rq:clean_groups``,
    every worker's maintenance; ``rq:rl-keys``; a ready registry; a worker's executions
    set) means 3.x; an ``executions`` key means 2.x or later, and so does a job hash with
    the ``group_id`` field RQ 2.0 and later write into every job (the data of finished
    and failed jobs alone looks the same in 2.x and 3.x); any other RQ key means 1.x.
    The SCANs are bounded, so on a huge keyspace the answer may be ``unknown``.
    """
    majors: list[int] = []
    for worker_key in client.sscan_iter(keys.workers(), count=100):
        raw = client.hget(cast("bytes", worker_key), "version")
        head = to_text(cast("bytes", raw)).split(".", 1)[0] if raw else ""
        if head.isdigit():
            majors.append(int(head))
        if len(majors) >= 5:  # noqa: PLR2004 - a few agreeing workers are evidence enough
            break
    if majors:
        return {1: Layout.RQ1, 2: Layout.RQ2}.get(max(majors), Layout.RQ3)
    if keys.prefix != "rq" or client.exists(
        keys.glob("clean_groups"), keys.glob("rl-keys")
    ):
        return Layout.RQ3
    shapes = (
        (keys.glob("ready", "*"), "zset", Layout.RQ3),
        (keys.glob("worker", "*"), "set", Layout.RQ3),  # only 3.x's :executions sets
        (keys.glob("executions", "*"), "zset", Layout.RQ2_OR_LATER),
    )
    for pattern, type_, layout in shapes:
        if _any_key(client, pattern, type_=type_, max_calls=max_scan_calls):
            return layout
    if _jobs_have(client, keys, b"group_id", max_calls=max_scan_calls):
        return Layout.RQ2_OR_LATER
    if _any_key(client, keys.glob("*"), type_=None, max_calls=max_scan_calls):
        return Layout.RQ1
    return Layout.UNKNOWN


def _jobs_have(
    client: redis.Redis, keys: Keyspace, field: bytes, *, max_calls: int
) -> bool:
    """Whether the first job hashes SCAN finds (at most ten) have ``field``."""
    cursor, found = 0, []
    for _ in range(max_calls):
        cursor, page = client.scan(
            cursor=cursor, match=keys.glob("job", "*"), count=1000, _type="hash"
        )
        found += cast("list[bytes]", page)
        if len(found) >= 10 or cursor == 0:  # noqa: PLR2004 - a few jobs suffice
            break
    pipe = client.pipeline(transaction=False)
    for key in found[:10]:
        pipe.hexists(key, cast("str", field))
    return any(pipe.execute()) if found else False
