"""The transaction ID in the OTel Context, and ``current_*()``.

Also the import path of the names that moved out to focused modules (the OTel-internals
shims in :mod:`.otel_shims`, new IDs in :mod:`.ids`, span ending in :mod:`.spans` and the
``transaction()`` scope in :mod:`.transaction`), so existing imports keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, Span

from .ids import generate_transaction_id, mint_span_context, validate_transaction_id
from .otel_shims import (
    BAGGAGE_KEY,
    SPAN_KEY,
    attach,
    detach,
    get_current,
    restore,
    sdk_installed,
    tracer,
)
from .settings import TRANSACTION_ID_PATTERN, Settings, get_settings
from .spans import describe, end_span

if TYPE_CHECKING:
    from .transaction import transaction

TRANSACTION_KEY: Final = otel_context.create_key("hoptrace.transaction_id")
SENT_NS_KEY: Final = otel_context.create_key("hoptrace.sent_ns")
HOP_KEY: Final = otel_context.create_key("hoptrace.hop")


def current_transaction_id(context: Context | None = None) -> str | None:
    """Return the active transaction ID, or None outside any transaction.

    The ID hoptrace restored, else a valid ``transaction.id`` entry of the W3C baggage, so a
    handler reached through another OpenTelemetry instrumentation still finds it.
    """
    ctx = context if context is not None else get_current()
    value = ctx.get(TRANSACTION_KEY)
    if value is not None:
        return value if isinstance(value, str) else None
    entries = ctx.get(BAGGAGE_KEY)
    if not entries:
        return None
    mirrored = entries.get(get_settings().baggage_key)  # type: ignore[attr-defined]
    if isinstance(mirrored, str) and TRANSACTION_ID_PATTERN.fullmatch(mirrored):
        return mirrored
    return None


def bind_transaction(
    values: dict[str, object], transaction_id: str, baggage: object, settings: Settings
) -> None:
    """Put ``transaction_id`` into context ``values``: its own key and the baggage entry.

    ``baggage`` is the baggage to carry on (a mapping, or None). With ``baggage_mirror`` on,
    the baggage gains the ``transaction.id`` entry, so every OTel baggage propagator carries
    the ID and anyone can read it with ``opentelemetry.baggage.get_baggage``.
    """
    values[TRANSACTION_KEY] = transaction_id
    if settings.baggage_mirror:
        key = settings.baggage_key
        if not baggage:
            values[BAGGAGE_KEY] = {key: transaction_id}
            return
        if baggage.get(key) != transaction_id and (  # type: ignore[attr-defined]
            key in baggage or len(baggage) < settings.max_baggage_members  # type: ignore[operator, arg-type]
        ):
            # (A baggage already at its member limit is kept whole; hoptrace's writer makes
            # room for the entry, or writes the transaction header.)
            values[BAGGAGE_KEY] = {**baggage, key: transaction_id}  # type: ignore[dict-item]
            return
    if baggage is not None:
        values[BAGGAGE_KEY] = baggage


def plain_span_init() -> Any:
    """``NonRecordingSpan.__init__`` if ``NonRecordingSpan(sc)`` is ``object.__new__`` plus
    ``_context = sc`` alone (checked on a probe), else None.

    A caller that finds the class's ``__init__`` still to be this one may then make the span
    without the class call (``object.__new__`` and the one store).
    """
    init = NonRecordingSpan.__dict__.get("__init__")
    try:
        if (init is None or init.__code__.co_names != ("_context",)
                or NonRecordingSpan.__new__ is not object.__new__
                or getattr(NonRecordingSpan, "__abstractmethods__", None)):
            return None
        made: Any = object.__new__(NonRecordingSpan)
        made._context = INVALID_SPAN_CONTEXT
        called = NonRecordingSpan(INVALID_SPAN_CONTEXT)
        same = vars(made) == vars(called) == {"_context": INVALID_SPAN_CONTEXT}
        return init if same and made.get_span_context() is INVALID_SPAN_CONTEXT else None
    except Exception:  # another OTel API's span type: the class call
        return None


def span_in(context: Context) -> Span | None:
    """Return the span stored in ``context``, or None."""
    return cast("Span | None", context.get(SPAN_KEY))


def current_trace_id(context: Context | None = None) -> str | None:
    """Return the active trace ID as 32 lowercase hex characters, or None."""
    span = span_in(context if context is not None else get_current())
    if span is None:
        return None
    sc = span.get_span_context()
    return f"{sc.trace_id:032x}" if sc.is_valid else None


def current_span_id(context: Context | None = None) -> str | None:
    """Return the active span ID as 16 lowercase hex characters, or None."""
    span = span_in(context if context is not None else get_current())
    if span is None:
        return None
    sc = span.get_span_context()
    return f"{sc.span_id:016x}" if sc.is_valid else None


def set_transaction_id(transaction_id: str, context: Context | None = None) -> Context:
    """Return a context carrying ``transaction_id`` (validated; raises ValueError if malformed)."""
    validate_transaction_id(transaction_id)
    return otel_context.set_value(TRANSACTION_KEY, transaction_id, context)


def __getattr__(name: str) -> Any:
    # ``transaction`` lives in .transaction, which imports the hop scopes that import this
    # module: it is loaded on first use.
    if name == "transaction":
        from .transaction import transaction

        return transaction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__: Final = [
    "BAGGAGE_KEY",
    "HOP_KEY",
    "SENT_NS_KEY",
    "SPAN_KEY",
    "TRANSACTION_KEY",
    "attach",
    "bind_transaction",
    "current_span_id",
    "current_trace_id",
    "current_transaction_id",
    "describe",
    "detach",
    "end_span",
    "generate_transaction_id",
    "get_current",
    "mint_span_context",
    "plain_span_init",
    "restore",
    "sdk_installed",
    "set_transaction_id",
    "span_in",
    "tracer",
    "transaction",
    "validate_transaction_id",
]
