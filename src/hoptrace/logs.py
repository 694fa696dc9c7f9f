"""Put the transaction ID, trace ID and hop details on every log record.

Three ways in, pick one:

* :func:`install` wraps the log-record factory, so every record from every logger carries
  ``transaction_id``, ``trace_id``, ``span_id``, ``messaging_system``,
  ``messaging_destination`` and ``messaging_message_id`` (None outside a trace or hop).
* :class:`TransactionFilter` does the same for the handlers you attach it to.
* :func:`structlog_processor` adds the same keys (when set) to a structlog event dict.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from .core.context import HOP_KEY, SPAN_KEY, TRANSACTION_KEY, get_current

#: Record attributes hoptrace sets.
FIELDS = (
    "transaction_id",
    "trace_id",
    "span_id",
    "messaging_system",
    "messaging_destination",
    "messaging_message_id",
)

_lock = threading.Lock()
_installed: Callable[..., logging.LogRecord] | None = None
_previous: Callable[..., logging.LogRecord] | None = None


def _ids() -> tuple[Any, Any, Any, Any, Any, Any]:
    ctx = get_current()
    tx = ctx.get(TRANSACTION_KEY)
    span = ctx.get(SPAN_KEY)
    trace_id = span_id = None
    if span is not None:
        sc = span.get_span_context()  # type: ignore[attr-defined]
        if sc.is_valid:
            trace_id = f"{sc.trace_id:032x}"
            span_id = f"{sc.span_id:016x}"
    hop = ctx.get(HOP_KEY)
    if hop is not None:
        return tx, trace_id, span_id, hop[0], hop[1], hop[2]  # type: ignore[index]
    return tx, trace_id, span_id, None, None, None


def annotate(record: logging.LogRecord) -> logging.LogRecord:
    """Set hoptrace's fields on ``record`` from the active context and return it."""
    try:
        (
            record.transaction_id,
            record.trace_id,
            record.span_id,
            record.messaging_system,
            record.messaging_destination,
            record.messaging_message_id,
        ) = _ids()
    except Exception:
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, None)
    return record


def install() -> None:
    """Make every new log record carry hoptrace's fields (idempotent)."""
    global _installed, _previous
    with _lock:
        current = logging.getLogRecordFactory()
        if _installed is not None and current is _installed:
            return
        previous = current

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return annotate(previous(*args, **kwargs))

        _previous = previous
        _installed = factory
        logging.setLogRecordFactory(factory)


def uninstall() -> None:
    """Restore the log-record factory that :func:`install` replaced, if still in place."""
    global _installed, _previous
    with _lock:
        if _installed is not None and logging.getLogRecordFactory() is _installed:
            assert _previous is not None
            logging.setLogRecordFactory(_previous)
        _installed = None
        _previous = None


class TransactionFilter(logging.Filter):
    """A logging filter that adds hoptrace's fields to each record it sees; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record`` unless the factory already did, and keep it."""
        if not hasattr(record, "transaction_id") or record.transaction_id is None:
            annotate(record)
        return True


def structlog_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor that adds hoptrace's fields that are set (keeps existing keys)."""
    try:
        for name, value in zip(FIELDS, _ids(), strict=True):
            if value is not None:
                event_dict.setdefault(name, value)
    except Exception:
        pass
    return event_dict


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line, with hoptrace's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as a JSON line."""
        if not hasattr(record, "transaction_id"):
            annotate(record)
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                payload[name] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
