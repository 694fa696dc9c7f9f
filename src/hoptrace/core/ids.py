"""New IDs: transaction IDs from the configured generator, and minted W3C span contexts."""

from __future__ import annotations

from random import getrandbits
from types import FunctionType
from typing import Final

from opentelemetry.trace import DEFAULT_TRACE_STATE, SpanContext, TraceFlags

from . import diagnostics
from .settings import (
    TRANSACTION_ID_PATTERN,
    ConfigurationError,
    get_settings,
    new_transaction_id,
)

_SAMPLED_OFF: Final = TraceFlags(0)
_TRACE_ID_MAX: Final = (1 << 128) - 1
_tuple_new = tuple.__new__


def _tuple_layout() -> bool:
    """Whether SpanContext is the 6-tuple (trace_id, span_id, is_remote, flags, state, valid)."""
    if type(SpanContext.__dict__.get("__new__")) not in (FunctionType, staticmethod):
        return False
    flags = TraceFlags(1)
    made = SpanContext(1, 2, is_remote=False, trace_flags=flags, trace_state=DEFAULT_TRACE_STATE)
    invalid = SpanContext(1, 0, is_remote=True)
    return (isinstance(made, tuple) and tuple(made) == (1, 2, False, flags, DEFAULT_TRACE_STATE,
                                                        True)
            and tuple(invalid) == (1, 0, True, TraceFlags(0), DEFAULT_TRACE_STATE, False)
            and made.is_valid and not made.is_remote and made.span_id == 2
            and SpanContext(1, 2, False)[4] is DEFAULT_TRACE_STATE)


#: Whether a SpanContext can be built as its tuple directly (what ``SpanContext.__new__``
#: builds, without its checks, for IDs already known to be valid).
TUPLE_LAYOUT: Final = _tuple_layout()


def mint_span_context(trace_id: int | None = None) -> SpanContext:
    """Return a fresh W3C-valid, unsampled span context (a new trace unless ``trace_id`` given)."""
    tid = trace_id if trace_id else getrandbits(128) or 1
    if TUPLE_LAYOUT and 0 < tid <= _TRACE_ID_MAX:  # both IDs valid: SpanContext's own tuple
        return _tuple_new(SpanContext, (tid, getrandbits(64) or 1, False, _SAMPLED_OFF,
                                        DEFAULT_TRACE_STATE, True))
    return SpanContext(tid, getrandbits(64) or 1, False, _SAMPLED_OFF)


def generate_transaction_id() -> str:
    """Return a new transaction ID from the configured generator (validated)."""
    generator = get_settings().transaction_id_generator
    if generator is new_transaction_id:
        return new_transaction_id()
    try:
        value = generator()
        if isinstance(value, str) and TRANSACTION_ID_PATTERN.fullmatch(value):
            return value
        diagnostics.warn(
            "internal_error.transaction_id_generator",
            "hoptrace: transaction_id_generator returned an invalid ID %r; using a random one",
            value,
        )
    except Exception as exc:
        diagnostics.internal_error("transaction_id_generator", exc)
    return new_transaction_id()


def validate_transaction_id(transaction_id: object) -> str:
    """Return ``transaction_id`` if it is a valid ID, else raise ValueError saying why."""
    if not isinstance(transaction_id, str):
        raise ConfigurationError(
            f"transaction_id must be a str, got {type(transaction_id).__name__}"
        )
    if not TRANSACTION_ID_PATTERN.fullmatch(transaction_id):
        raise ConfigurationError(
            f"transaction_id {transaction_id!r} is invalid: use 1-128 characters from "
            "[A-Za-z0-9._:-]"
        )
    return transaction_id


__all__: Final = [
    "generate_transaction_id",
    "mint_span_context",
    "new_transaction_id",
    "validate_transaction_id",
]
