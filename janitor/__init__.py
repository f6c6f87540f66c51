"""rq-janitor: maintenance and garbage collection for RQ data in Redis and Valkey."""

from janitor.__about__ import __version__

__all__ = ["__version__"]
