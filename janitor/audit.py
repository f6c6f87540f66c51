"""The two log streams: the audit log (contract events as JSON lines) and the operational log."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

AUDIT_EVENTS = frozenset(
    {
        "job_deleted",
        "job_abandoned",
        "worker_pruned",
        "queue_pruned",
        "marker_refreshed",
        "orphan_deleted",
        "task_failed",
        "run_finished",
    }
)
"""The contract's audit events; nothing else is written to the audit log."""

_LEADING_KEYS = ("event", "timestamp", "run_id", "task", "dry_run")


def _contract_order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put the fields every audit line has first, in the contract's order."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


class AuditLog:
    """Writes the contract's audit events, one JSON object per line, to a file or stdout.

    Each run binds ``run_id``, ``task`` and ``dry_run`` once; every event then carries
    them. Payload fields never reach here: the tasks only hand over the contract's fields.
    """

    def __init__(self, stream: TextIO, *, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._logger = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                _contract_order,
                structlog.processors.JSONRenderer(),
            ],
            context_class=dict,
        )
        self._context: dict[str, object] = {}

    @classmethod
    def open(cls, path: str) -> AuditLog:
        """Open the audit log at ``[audit] path``: ``-`` is stdout, else a file appended to."""
        if path == "-":
            return cls(sys.stdout)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return cls(target.open("a", encoding="utf-8", buffering=1), owns_stream=True)

    @contextmanager
    def bound(self, **context: object) -> Iterator[None]:
        """Add ``context`` (``run_id``, ``task``, ``dry_run``) to every event inside the block."""
        saved = dict(self._context)
        self._context.update(context)
        try:
            yield
        finally:
            self._context = saved

    def emit(self, event: str, **fields: object) -> None:
        """Write one audit event with the bound context and the event's own fields."""
        if event not in AUDIT_EVENTS:
            msg = f"{event!r} is not an audit event of the contract"
            raise ValueError(msg)
        self._logger.info(event, **self._context, **fields)

    def close(self) -> None:
        """Close the file behind the log (stdout is left open)."""
        if self._owns_stream:
            self._stream.close()


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(log_format: str = "auto", *, level: int = logging.INFO) -> None:
    """Set up the operational log on stderr: JSON, or a console rendering on a terminal.

    ``auto`` renders for humans when stderr is a terminal and as JSON otherwise. The
    standard library's loggers (apscheduler, redis) are routed through the same renderer.
    """
    use_console = log_format == "console" or (
        log_format == "auto" and sys.stderr.isatty()
    )
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _drop_color_message,
    ]
    structlog.configure(
        processors=[
            *shared,
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def get_logger(name: str) -> FilteringBoundLogger:
    """Return the operational logger for a module (structlog, bound to ``logger=name``)."""
    return cast("FilteringBoundLogger", structlog.get_logger().bind(logger=name))
