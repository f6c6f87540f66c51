"""A reusable producer of real RQ state for tests, under any RQ version in ``tests.rqenv.RQ_VERSIONS``.

``produce(redis_url, rq_version="1.16.2")`` runs ``produce.py`` in a virtualenv with that rq release and real
workers, and returns a ``Manifest`` of the job ids it created by category. See ``api.py`` and ``produce.py``.
"""

from tests.rqstate.api import (
    CATEGORIES,
    EXPECTED_STATUS,
    LIVE,
    MARKER,
    SECRET_ERROR,
    TERMINAL,
    Manifest,
    ProduceError,
    produce,
    running,
)

__all__ = [
    "CATEGORIES",
    "EXPECTED_STATUS",
    "LIVE",
    "MARKER",
    "SECRET_ERROR",
    "TERMINAL",
    "Manifest",
    "ProduceError",
    "produce",
    "running",
]
