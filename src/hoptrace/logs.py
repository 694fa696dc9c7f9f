"""Put the transaction ID, trace ID and hop details on every log record.

Four ways in, pick one:

* :func:`install` wraps the log-record factory, so every record from every logger carries
  ``transaction_id``, ``trace_id``, ``span_id``, ``messaging_system``,
  ``messaging_destination`` and ``messaging_message_id`` (None outside a trace or hop).
  ``extra=`` with one of those names still works: the caller's value wins.
* :class:`TransactionFilter` does the same for the handlers you attach it to.
* :func:`structlog_processor` adds the same keys (when set) to a structlog event dict.
* :func:`loguru_patcher` adds the same keys (when set) to a loguru record's ``extra``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, MutableMapping
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final

from .core.context import HOP_KEY, SPAN_KEY, current_transaction_id, get_current

if TYPE_CHECKING:
    from loguru import Record

#: Record attributes hoptrace sets.
FIELDS = (
    "transaction_id",
    "trace_id",
    "span_id",
    "messaging_system",
    "messaging_destination",
    "messaging_message_id",
)
_FIELD_SET: Final = frozenset(FIELDS)
_NO_IDS: Final = (None, None, None, None, None, None)


def _ids() -> tuple[Any, Any, Any, Any, Any, Any]:
    ctx = get_current()
    tx = current_transaction_id(ctx)
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


def _fill_unset(record: logging.LogRecord) -> None:
    # Set the fields that are missing or None, keeping any value the caller gave (extra=).
    try:
        values = _ids()
    except Exception:
        values = _NO_IDS
    attrs = record.__dict__
    for name, value in zip(FIELDS, values, strict=True):
        if attrs.get(name) is None:
            attrs[name] = value


# -- install(): the record factory and Logger.makeRecord, both chained -------------------------


class _Hook:
    """One function hoptrace put on top of a chain, what was below it, and whether it works.

    A hook that is no longer on top of its chain cannot be taken out without breaking whatever
    was stacked on it, so :func:`uninstall` turns it inert (a pass-through) instead.
    """

    __slots__ = ("active", "below", "function", "previous")

    def __init__(self, below: Any, previous: Callable[..., logging.LogRecord]) -> None:
        self.below = below  # what the chain held before us, to compare and to restore
        self.previous = previous  # the same, as a plain callable
        self.active = True
        self.function: object = None


def _record_factory(hook: _Hook) -> Callable[..., logging.LogRecord]:
    def hoptrace_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = hook.previous(*args, **kwargs)
        if hook.active:
            annotate(record)
        return record

    return hoptrace_record_factory


def _make_record(hook: _Hook) -> Callable[..., logging.LogRecord]:
    # logging.Logger.makeRecord refuses an extra= key already on the record, and the factory
    # has just put our fields there. Keep ours out of the original's way, then let the
    # caller's values win. Every other key goes through the original unchanged.
    def makeRecord(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Mapping[str, object] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        make = hook.previous
        if extra is None or not hook.active or _FIELD_SET.isdisjoint(extra):
            return make(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        rest = {key: extra[key] for key in extra if key not in _FIELD_SET}
        record = make(self, name, level, fn, lno, msg, args, exc_info, func, rest, sinfo)
        for key in FIELDS:
            if key in extra:
                record.__dict__[key] = extra[key]
        return record

    makeRecord.__doc__ = logging.Logger.makeRecord.__doc__
    return makeRecord


def _as_method(below: Any) -> Callable[..., logging.LogRecord]:
    # What Logger.__dict__ held, as a plain function taking the logger first.
    if isinstance(below, FunctionType):
        return below

    def bound_call(self: logging.Logger, *args: Any) -> logging.LogRecord:
        return below.__get__(self, type(self))(*args)  # type: ignore[no-any-return]

    return bound_call


def _as_factory(below: Any) -> Callable[..., logging.LogRecord]:
    return below  # type: ignore[no-any-return]


def _get_make_record() -> Any:
    return logging.Logger.__dict__["makeRecord"]


def _set_make_record(method: Any) -> None:
    logging.Logger.makeRecord = method  # type: ignore[method-assign]


class _Chain:
    """A chain we put a hook on: how to read and replace its top, and how to build our hook."""

    __slots__ = ("as_callable", "build", "get_top", "hook", "set_top")

    def __init__(
        self,
        get_top: Callable[[], Any],
        set_top: Callable[[Any], None],
        as_callable: Callable[[Any], Callable[..., logging.LogRecord]],
        build: Callable[[_Hook], Callable[..., logging.LogRecord]],
    ) -> None:
        self.get_top = get_top
        self.set_top = set_top
        self.as_callable = as_callable
        self.build = build
        self.hook: _Hook | None = None

    def install(self) -> None:
        top = self.get_top()
        hook = self.hook
        if hook is None:
            hook = _Hook(top, self.as_callable(top))
            hook.function = self.build(hook)
            self.hook = hook
            self.set_top(hook.function)
            return
        hook.active = True
        if top is not hook.function and top is hook.below:
            # What was stacked on ours restored what was below ours: ours is out of the chain.
            self.set_top(hook.function)
        # Otherwise ours is on top, or under something that calls it: re-enabled in place.

    def uninstall(self) -> None:
        hook = self.hook
        if hook is None:
            return
        if self.get_top() is hook.function:
            self.set_top(hook.below)
            self.hook = None
        else:
            hook.active = False


_lock = threading.Lock()
_factory_chain = _Chain(
    logging.getLogRecordFactory, logging.setLogRecordFactory, _as_factory, _record_factory
)
_make_record_chain = _Chain(_get_make_record, _set_make_record, _as_method, _make_record)


def install() -> None:
    """Make every new log record carry hoptrace's fields (idempotent; ``extra=`` still wins)."""
    with _lock:
        _factory_chain.install()
        _make_record_chain.install()
    _quiet_otel_none_warnings()


def uninstall() -> None:
    """Undo :func:`install`: unwrap where ours is on top, else leave a pass-through in place."""
    with _lock:
        _make_record_chain.uninstall()
        _factory_chain.uninstall()


# -- the OTel SDK's LoggingHandler before 1.33 ------------------------------------------------


class _OtelNoneAttributeFilter(logging.Filter):
    """Drop the OTel SDK's warning about a None value for one of hoptrace's fields.

    OpenTelemetry SDKs before 1.33 accept no None log attribute: they drop it (what we want
    outside a transaction) and log a warning per field per record, which a ``LoggingHandler``
    on the root logger exports again, recursing until ``RecursionError``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except that warning about one of our fields."""
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) >= 2
            and args[0] == "NoneType"
            and args[1] in _FIELD_SET
            and isinstance(record.msg, str)
            and record.msg.startswith("Invalid type %s for attribute")
        )


_otel_filter = _OtelNoneAttributeFilter()


def _quiet_otel_none_warnings() -> None:
    logger = logging.getLogger("opentelemetry.attributes")
    if _otel_filter not in logger.filters:
        logger.addFilter(_otel_filter)


# -- the other ways in ------------------------------------------------------------------------


class TransactionFilter(logging.Filter):
    """A logging filter that adds hoptrace's fields to each record it sees; never drops one."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        _quiet_otel_none_warnings()

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the fields the factory or the caller's ``extra=`` left unset, and keep it."""
        if record.__dict__.get("transaction_id") is None:
            _fill_unset(record)
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


def loguru_patcher(record: Record) -> None:
    """A loguru patcher that adds hoptrace's fields that are set to ``record["extra"]``."""
    try:
        extra = record["extra"]
        for name, value in zip(FIELDS, _ids(), strict=True):
            if value is not None:
                extra.setdefault(name, value)
    except Exception:
        pass


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line, with hoptrace's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as a JSON line."""
        if "transaction_id" not in record.__dict__:
            _fill_unset(record)
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
