"""Many terminal jobs at once, through RQ's own API (Job.create, save, registry add), pipelined."""

from __future__ import annotations

import datetime as dt

import redis
from rq.job import Job, JobStatus

from janitor.keyspace import Keyspace
from tests import funcs

CHUNK = 2_000


def fill_finished(
    client: redis.Redis, queue: str, count: int, *, age_s: float = 2 * 86_400
) -> list[str]:
    """Create ``count`` finished jobs of ``queue``, ended ``age_s`` ago, kept forever by RQ (result_ttl=-1)."""
    keys = Keyspace()
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    ids = [f"{queue}-{number}" for number in range(count)]
    for start in range(0, count, CHUNK):
        with client.pipeline() as pipe:
            for job_id in ids[start : start + CHUNK]:
                job = Job.create(
                    funcs.ok,
                    connection=client,
                    id=job_id,
                    origin=queue,
                    status=JobStatus.FINISHED,
                    result_ttl=-1,
                )
                job.ended_at = ended
                job.save(pipeline=pipe)
                pipe.zadd(keys.finished(queue), {job_id: float("inf")})
                pipe.xadd(keys.results(job_id), {"type": "1"})
            pipe.sadd(keys.queues(), keys.queue(queue))
            pipe.execute()
    return ids
