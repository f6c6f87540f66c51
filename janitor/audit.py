"""The two log streams: the audit log (contract events as JSON lines) and the operational log."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, cast, overload

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
        "registry_entry_removed",
        "dead_id_removed",
        "index_entry_removed",
        "ready_job_enqueued",
        "dependent_enqueued",
        "deferred_canceled",
        "rate_limit_slot_released",
        "rate_limited_job_promoted",
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


_encode = json.encoder.encode_basestring_ascii
"""What ``json.dumps`` (ensure_ascii, as structlog's renderer uses it) does to a string."""
_CONSTANTS = {True: "true", False: "false", None: "null"}
_PLAIN_RENDERERS: dict[type, Callable[[Any], str]] = {str: _encode, int: int.__repr__}
"""How a value of exactly this type renders in JSON (bool is not int here)."""
_FIELD_NAMES: dict[str, str] = {}
"""Each field name as it renders before its value (``', "queue": '``): they repeat."""
_MAX_FIELD_NAMES = 1000


class EventRows(Sequence[tuple[str, Mapping[str, object]]]):
    """Many audit events of one kind with the same fields, as rows of values in ``names``' order.

    A run may delete hundreds of thousands of jobs: the audit log renders these without
    a dictionary per event. As a sequence they are ordinary ``(event, fields)`` pairs.
    """

    __slots__ = ("event", "names", "rows")

    def __init__(
        self, event: str, names: tuple[str, ...], rows: list[tuple[object, ...]]
    ) -> None:
        """Events ``event`` whose fields are ``names``, one row of values per event."""
        self.event, self.names, self.rows = event, names, rows

    def __len__(self) -> int:
        """How many events."""
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> tuple[str, Mapping[str, object]]: ...

    @overload
    def __getitem__(
        self, index: slice
    ) -> Sequence[tuple[str, Mapping[str, object]]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> tuple[str, Mapping[str, object]] | Sequence[tuple[str, Mapping[str, object]]]:
        """The event(s) at ``index``, as ``(event, fields)``."""
        if isinstance(index, slice):
            return EventRows(self.event, self.names, self.rows[index])
        return self.event, dict(zip(self.names, self.rows[index], strict=True))


def _timestamp() -> str:
    """Now, as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it."""
    return dt.datetime.now(tz=dt.UTC).isoformat().replace("+00:00", "Z")


class AuditLog:
    """Writes the contract's audit events, one JSON object per line, to a file or stdout.

    Each run binds ``run_id``, ``task`` and ``dry_run`` once; every event then carries
    them. Payload fields never reach here: the tasks only hand over the contract's fields.
    Lines are rendered as structlog's ``TimeStamper`` + ``_contract_order`` +
    ``JSONRenderer`` chain would, without its per-line overhead (a run may write
    hundreds of thousands), and each call's lines reach the stream in one write and flush.
    """

    def __init__(self, stream: TextIO, *, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._render = structlog.processors.JSONRenderer()
        self._context: dict[str, object] = {}
        self._leading: dict[str, object] = {}
        self._context_json = ""
        self._taken: frozenset[str] = frozenset(_LEADING_KEYS)
        """Field names the fast rendering leaves to the renderer (they collide)."""

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
        self._set_leading()
        try:
            yield
        finally:
            self._context = saved
            self._set_leading()

    def _set_leading(self) -> None:
        """The bound context in the contract's order, and as it renders in every line."""
        ordered = {k: self._context[k] for k in _LEADING_KEYS if k in self._context}
        ordered.update(self._context)
        self._leading = ordered
        self._taken = frozenset((*_LEADING_KEYS, *ordered))
        rendered = cast("str", self._render(None, "info", dict(ordered)))
        self._context_json = ", " + rendered[1:-1] if ordered else ""

    def _line(self, event: str, fields: Mapping[str, object], stamp: str) -> str:
        if event not in AUDIT_EVENTS:
            msg = f"{event!r} is not an audit event of the contract"
            raise ValueError(msg)
        fast = self._fast_line(event, fields, stamp)
        if fast is not None:
            return fast
        line = {"event": event, "timestamp": stamp, **self._leading, **fields}
        line["event"], line["timestamp"] = event, stamp
        return cast("str", self._render(None, "info", line)) + "\n"

    def _fast_line(
        self, event: str, fields: Mapping[str, object], stamp: str
    ) -> str | None:
        """The same line as ``JSONRenderer``'s, built directly when every field is plain.

        Strings, ints, booleans and None render exactly as ``json.dumps`` renders them;
        anything else, or a field named like a leading one, takes the renderer.
        """
        parts = ['{"event": ', _encode(event), ', "timestamp": ', _encode(stamp)]
        parts.append(self._context_json)
        names, taken = _FIELD_NAMES, self._taken
        for key, value in fields.items():
            if key in taken:
                return None
            if isinstance(value, str):
                rendered = _encode(value)
            elif value is None or isinstance(value, bool):
                rendered = _CONSTANTS[value]
            elif isinstance(value, int):
                rendered = int.__repr__(value)
            else:
                return None
            name = names.get(key)
            if name is None:
                if len(names) >= _MAX_FIELD_NAMES:
                    return None
                name = names[key] = ", " + _encode(key) + ": "
            parts += (name, rendered)
        parts.append("}\n")
        return "".join(parts)

    def emit(self, event: str, **fields: object) -> None:
        """Write one audit event with the bound context and the event's own fields."""
        self._write([self._line(event, fields, _timestamp())])

    def emit_many(self, events: Iterable[tuple[str, Mapping[str, object]]]) -> None:
        """Write several audit events (``(event, fields)`` pairs) in one write.

        They are written at the same moment, so they share one timestamp.
        """
        stamp = _timestamp()
        if isinstance(events, EventRows):
            self._write(self._rows(events, stamp))
        else:
            self._write([self._line(event, fields, stamp) for event, fields in events])

    def _rows(self, events: EventRows, stamp: str) -> list[str]:
        """The lines of ``events``: the same as ``_line``'s, from one template per batch."""
        event, names = events.event, events.names
        if event not in AUDIT_EVENTS or any(name in self._taken for name in names):
            return [self._line(event, fields, stamp) for event, fields in events]
        head = '{"event": ' + _encode(event) + ', "timestamp": ' + _encode(stamp)
        template = (head + self._context_json).replace("%", "%%")
        for name in names:
            template += (", " + _encode(name) + ": ").replace("%", "%%") + "%s"
        template += "}\n"
        lines: list[str] = []
        render = _PLAIN_RENDERERS
        for row in events.rows:
            try:
                values = tuple([render[type(value)](value) for value in row])
            except KeyError:  # not a plain str or int: as the generic path renders it
                lines.append(
                    self._line(event, dict(zip(names, row, strict=True)), stamp)
                )
            else:
                lines.append(template % values)
        return lines

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._stream.write("".join(lines))
            self._stream.flush()

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
    """Return the operational logger for a module (structlog, bound to ``module=name``)."""
    # Lazy: the proxy resolves after configure_logging() ran, whenever the module was imported.
    return cast("FilteringBoundLogger", structlog.get_logger(module=name))
