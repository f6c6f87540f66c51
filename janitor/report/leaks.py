"""The report's leaks: RQ state nobody will ever clean, found by bounded reads.

Nine kinds (docs/keyspace.md, "Leaks RQ leaves"): keys without a TTL that should have
one, registry ids whose job is gone, dead workers still listed, failure result streams
without a TTL, queues no worker serves, queues no longer in ``rq:queues`` whose registries
stay (``janitor.unlisted``), lists of interrupted ``Queue.compact()`` runs, deferred jobs that can never run
(``janitor.dependencies``), and entries
of ``rq:groups`` and ``rq:cron_schedulers`` whose group or scheduler is gone
(``janitor.index_entries``). Workers come from ``rq:workers`` and the
per-queue sets of the reported queues (each read up to a bound); keys that no RQ index
lists (result streams, dependency sets, worker hashes outside the sets) from one SCAN of
the RQ prefix with COUNT, stopped after ``SCAN_CALLS`` calls. Only names, types, TTLs
and a worker's ``queues`` and ``last_heartbeat`` are read; never a stream's entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from janitor import dependencies, index_entries, liveness
from janitor.batches import chunks
from janitor.keyspace import to_text
from janitor.report.queues import QueueReport, Scope
from janitor.unlisted import queue_of

MAX_WORKERS = 10_000
"""Members of ``rq:workers`` read at most."""
SET_SAMPLE = 100
"""Members of each per-queue worker set read at most (SRANDMEMBER)."""
SCAN_COUNT = 1_000
"""Keys SCAN visits per call."""
SCAN_CALLS = 100
"""SCAN calls per report (about 100,000 keys); ``scan.complete`` says whether that was all."""
EXAMPLES = 10
"""Names listed per leak; the count covers the rest."""
PIPELINE = 1_000
DEFERRED_LIMIT = 1_000
"""Deferred jobs judged at most for the stuck-deferred leak."""
INDEX_LIMIT = 10_000
"""Dead index entries counted at most, per index."""


ADVICE = {
    "keys_without_ttl": "RQ never deletes these: canceled jobs, result_ttl=-1/failure_ttl=-1 jobs, "
    "orphaned-horse worker hashes, dependency sets of deleted jobs. expire_jobs deletes "
    "terminal jobs by [retention]; prune_workers zombie hashes; sweep_orphans the sets.",
    "dangling_registry_ids": "Harmless but growing: RQ removes expired finished/failed ids only "
    "from queues a worker serves, and never canceled/deferred/scheduled ones. "
    "clean_registries removes them.",
    "dead_workers_listed": "RQ drops a dead worker only from the sets of queues a live worker "
    "serves; prune_workers removes them everywhere.",
    "result_streams_without_ttl": "Failure results of jobs without failure_ttl never expire "
    "(every RQ version), nor results of result_ttl=-1 jobs. Set failure_ttl when enqueueing; "
    "sweep_orphans deletes those whose job is gone, expire_jobs deletes the others with their job.",
    "unlisted_queues": "Queue.delete() removed these queues from rq:queues but left their "
    "registries and jobs, which nothing lists. expire_jobs and clean_registries find them by "
    "a resumable SCAN and treat them like any queue no worker serves, within [rq] queues.",
    "interrupted_compactions": "rq:queue:_compact:<uuid> lists of a Queue.compact() that did "
    "not finish hold the only copy of the ids it had not pushed back. The janitor leaves them: "
    "RPUSH each live id to rq:queue:<origin> (its job hash's origin), then DEL the list.",
    "stuck_deferred_jobs": "Deferred jobs that can never run: a parent failed (and the job does not "
    "allow failure), was canceled or stopped, or every parent is gone. RQ keeps them deferred "
    "forever (rq#675, rq#743). Cancel or delete them, or requeue the parent; [deferred] stuck = "
    '"cancel" lets clean_registries cancel them as Job.cancel() would.',
    "dead_index_entries": "rq:groups members whose group set is gone and rq:cron_schedulers "
    "entries of cron schedulers that died without unregistering (their hash expired over "
    "10 minutes ago). Only a worker's maintenance cleans them in RQ; clean_registries "
    "removes them.",
    "unserved_queues": "RQ cleans a queue only from a worker that serves it: abandoned jobs stay "
    "started and expired registry ids stay. recover_abandoned and clean_registries do it "
    "for every queue in [rq] queues.",
}
"""What to do about each kind of leak."""


@dataclass(slots=True)
class Workers:
    """Who serves which queue, and which listed workers are dead."""

    listed: set[bytes] = field(default_factory=set)
    """Every worker key read from the sets."""
    served: set[str] = field(default_factory=set)
    """Queue names a live worker serves (its ``queues`` field or a per-queue set)."""
    live: int = 0
    gone: list[bytes] = field(default_factory=list)
    """Listed worker keys dead by ``liveness.judge`` whose hash is gone."""
    zombies: list[bytes] = field(default_factory=list)
    """Listed worker keys dead by ``liveness.judge`` as zombies."""
    exact: bool = True


def read_workers(scope: Scope, queues: Sequence[QueueReport]) -> Workers:
    """Read the worker sets (bounded) and classify every listed worker."""
    client, keys = scope.client, scope.keys
    listed: dict[bytes, set[str]] = {}
    found = Workers()
    for count, member in enumerate(client.sscan_iter(keys.workers(), count=1000)):
        if count >= MAX_WORKERS:
            found.exact = False
            break
        listed.setdefault(cast("bytes", member), set())
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.srandmember(keys.workers(queue.name), SET_SAMPLE)
        pipe.scard(keys.workers(queue.name))
    replies = pipe.execute(raise_on_error=False)
    for index, queue in enumerate(queues):
        members, size = replies[2 * index : 2 * index + 2]
        if isinstance(members, list):
            for member in members:
                listed.setdefault(member, set()).add(queue.name)
        found.exact &= not isinstance(size, int) or size <= SET_SAMPLE
    found.listed = set(listed)
    for chunk in chunks(list(listed), PIPELINE):
        _classify(scope, found, {key: listed[key] for key in chunk})
    return found


def _judge(
    scope: Scope, worker_keys: Iterable[bytes]
) -> dict[bytes, tuple[liveness.WorkerFacts, liveness.Verdict]]:
    return liveness.judge_worker_keys(
        scope.client,
        scope.keys,
        worker_keys,
        now=scope.now,
        dead_after=scope.settings.workers.dead_after,
    )


def _classify(scope: Scope, found: Workers, listed: dict[bytes, set[str]]) -> None:
    """Sort listed workers by ``liveness.judge``: dead ones by reason, the rest serve."""
    judged = _judge(scope, listed)
    for key, in_sets in listed.items():
        worker, verdict = judged[key]
        if verdict.dead:
            dead = (
                found.gone if verdict.reason == liveness.HASH_EXPIRED else found.zombies
            )
            dead.append(key)
            continue
        found.live += 1
        found.served |= in_sets
        if worker.queues:
            found.served |= set(to_text(worker.queues).split(","))


@dataclass(slots=True)
class ScanResult:
    """What the bounded SCAN of the RQ prefix found."""

    keys_seen: int = 0
    calls: int = 0
    complete: bool = False
    streams_without_ttl: list[bytes] = field(default_factory=list)
    streams_job_gone: int = 0
    zombie_hashes: list[bytes] = field(default_factory=list)
    orphan_sets: list[bytes] = field(default_factory=list)
    queue_names: set[bytes] = field(default_factory=set)
    """Names of queues whose registries or intermediate list were seen (``unlisted.queue_of``)."""
    compactions: list[bytes] = field(default_factory=list)
    """Lists of interrupted ``Queue.compact()`` runs (docs/keyspace.md, "Leaks RQ leaves", item 16)."""
    candidates: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    """Keys worth a closer look, for ``check_keys``."""


def scan_keys(scope: Scope) -> ScanResult:
    """SCAN the RQ prefix (bounded) for queues' registries and keys worth a closer look."""
    keys = scope.keys
    heads = {
        "stream": keys.results(b""),
        "worker": keys.worker(b""),
        "dependents": keys.job(b""),
        "dependencies": keys.job(b"") + b":",
        "compact": keys.compact_glob()[:-1],
    }
    result = ScanResult()
    cursor = 0
    while result.calls < SCAN_CALLS:
        cursor, page = scope.client.scan(cursor, match=keys.glob("*"), count=SCAN_COUNT)
        result.calls += 1
        result.keys_seen += len(page)
        for key in cast("list[bytes]", page):
            found = _candidate(heads, key)
            if found is not None:
                result.candidates.append(found)
            name = queue_of(keys, key)
            if name is not None:
                result.queue_names.add(name)
        if cursor == 0:
            result.complete = True
            break
    return result


def check_keys(scope: Scope, result: ScanResult, known_workers: set[bytes]) -> None:
    """Judge the keys the SCAN found worth a look (worker hashes: only those no set lists)."""
    candidates = [
        found
        for found in result.candidates
        if found[0] != "worker" or found[1] not in known_workers
    ]
    for chunk in chunks(candidates, PIPELINE):
        _check_candidates(scope, result, chunk)


def _candidate(heads: dict[str, bytes], key: bytes) -> tuple[str, bytes, bytes] | None:
    """(kind, key, owner: job id or b"") for a key worth a closer look, else None."""
    if key.startswith(heads["stream"]):
        return "stream", key, key[len(heads["stream"]) :]
    if key.startswith(heads["compact"]):
        return "compact", key, b""
    if key.startswith(heads["worker"]):
        return "worker", key, b""
    if key.startswith(heads["dependencies"]) and key.endswith(b":dependencies"):
        return "set", key, key[len(heads["dependencies"]) : -len(b":dependencies")]
    if key.startswith(heads["dependents"]) and key.endswith(b":dependents"):
        return "set", key, key[len(heads["dependents"]) : -len(b":dependents")]
    return None


def _check_candidates(
    scope: Scope, result: ScanResult, chunk: Sequence[tuple[str, bytes, bytes]]
) -> None:
    pipe = scope.client.pipeline(transaction=False)
    for kind, key, owner in chunk:
        pipe.type(key)
        pipe.pttl(key)
        pipe.exists(scope.keys.job(owner) if kind != "worker" else key)
    replies = pipe.execute(raise_on_error=False)
    workers: list[bytes] = []
    for index, (kind, key, _) in enumerate(chunk):
        type_, pttl, third = replies[3 * index : 3 * index + 3]
        if pttl != -1:
            continue  # has a TTL (or vanished meanwhile)
        if kind == "stream" and type_ == b"stream":
            result.streams_without_ttl.append(key)
            result.streams_job_gone += third == 0
        elif kind == "worker" and type_ == b"hash":
            workers.append(key)
        elif kind == "set" and type_ == b"set" and third == 0:
            result.orphan_sets.append(key)
        elif kind == "compact" and type_ == b"list":
            result.compactions.append(key)
    for key, (_, verdict) in _judge(scope, workers).items():
        if verdict.dead:
            result.zombie_hashes.append(key)


def _totals(queues: Iterable[QueueReport]) -> dict[str, int]:
    """Entries per collection, summed over ``queues`` (exact: ZCARD / LLEN)."""
    totals: dict[str, int] = {}
    for queue in queues:
        for kind, size in queue.totals.items():
            totals[kind] = totals.get(kind, 0) + size
    return totals


def _stuck_kinds(stuck: Sequence[tuple[str, dependencies.Deferred]]) -> dict[str, int]:
    """``by_kind`` of ``stuck_deferred_jobs``."""
    kinds = {"every_parent_gone": 0, "parent_ended_unaccepted": 0, "parents_done": 0}
    for _, job in stuck:
        if job.verdict is dependencies.Verdict.READY:
            kinds["parents_done"] += 1
        elif all(status is None for status in job.parents.values()):
            kinds["every_parent_gone"] += 1
        else:
            kinds["parent_ended_unaccepted"] += 1
    return kinds


def _stuck_deferred(
    scope: Scope, queues: Sequence[QueueReport]
) -> tuple[list[tuple[str, dependencies.Deferred]], bool]:
    """Deferred jobs read that can never run (``dependencies.verdict``), at most ``DEFERRED_LIMIT`` judged."""
    wanted = [(q.name, job_id) for q in queues for job_id in q.deferred]
    judged = wanted[:DEFERRED_LIMIT]
    found: list[tuple[str, dependencies.Deferred]] = []
    for chunk in chunks(judged, PIPELINE):
        names = {job_id: name for name, job_id in chunk}
        read = dependencies.read_deferred(
            scope.client, scope.keys, [job_id for _, job_id in chunk]
        )
        # READY while still deferred: the trigger (a parent's end) has passed, so nothing
        # will enqueue it either
        found += [
            (names[d.job_id], d)
            for d in read
            if d.verdict is not dependencies.Verdict.WAITING
        ]
    return found, len(judged) == len(wanted)


def leaks(
    scope: Scope, queues: Sequence[QueueReport], workers: Workers, scan: ScanResult
) -> list[dict[str, Any]]:
    """The report's ``leaks`` list (docs/report.md): one object per kind, always all seven."""
    keys = scope.keys
    sampled = all(q.exact for q in queues)
    no_ttl_jobs = [keys.job(j) for q in queues for j in q.no_ttl]
    dangling = [
        getattr(keys, kind)(q.name) + b" " + member
        for q in queues
        for kind, member in q.dangling
    ]
    unserved = [q.name for q in queues if q.name not in workers.served]
    stuck, stuck_exact = _stuck_deferred(scope, queues)
    dead_groups = index_entries.dead_groups(scope.client, keys, INDEX_LIMIT)
    dead_crons = index_entries.dead_cron_schedulers(
        scope.client, keys, scope.now, INDEX_LIMIT
    )
    items = [
        (
            "keys_without_ttl",
            [*no_ttl_jobs, *scan.zombie_hashes, *scan.orphan_sets],
            sampled and scan.complete,
            {
                "job_hash": len(no_ttl_jobs),
                "worker_hash": len(scan.zombie_hashes),
                "dependency_set": len(scan.orphan_sets),
            },
        ),
        ("dangling_registry_ids", dangling, sampled, None),
        (
            "dead_workers_listed",
            [*workers.gone, *workers.zombies],
            workers.exact,
            {"hash_gone": len(workers.gone), "zombie": len(workers.zombies)},
        ),
        (
            "result_streams_without_ttl",
            scan.streams_without_ttl,
            scan.complete,
            {
                "job_exists": len(scan.streams_without_ttl) - scan.streams_job_gone,
                "job_gone": scan.streams_job_gone,
            },
        ),
        ("unserved_queues", [n.encode() for n in unserved], workers.exact, None),
        (
            "unlisted_queues",
            [q.name.encode() for q in queues if not q.listed],
            scan.complete,
            _totals(q for q in queues if not q.listed),
        ),
        ("interrupted_compactions", scan.compactions, scan.complete, None),
        (
            "stuck_deferred_jobs",
            [f"{name} {to_text(d.job_id)}: {d.why}".encode() for name, d in stuck],
            sampled and stuck_exact,
            _stuck_kinds(stuck),
        ),
        (
            "dead_index_entries",
            [*dead_groups, *(name for name, _ in dead_crons)],
            len(dead_groups) < INDEX_LIMIT and len(dead_crons) < INDEX_LIMIT,
            {"groups": len(dead_groups), "cron_schedulers": len(dead_crons)},
        ),
    ]
    return [
        {
            "kind": kind,
            "count": len(found),
            "exact": exact,
            "by_kind": by_kind or {},
            "examples": [to_text(name) for name in found[:EXAMPLES]],
            "advice": ADVICE[kind],
        }
        for kind, found, exact, by_kind in items
    ]
