"""The transaction ID in the OTel Context, the ``transaction()`` edge scope, and ``current_*()``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from random import getrandbits
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from .._config import (
    TRANSACTION_ID_PATTERN,
    ConfigurationError,
    Settings,
    get_settings,
    new_transaction_id,
)
from . import diagnostics, semconv

TRANSACTION_KEY: Final = otel_context.create_key("hoptrace.transaction_id")
SENT_NS_KEY: Final = otel_context.create_key("hoptrace.sent_ns")
HOP_KEY: Final = otel_context.create_key("hoptrace.hop")


def _runtime_context_var() -> ContextVar[Context] | None:
    # OTel's default runtime context keeps the current Context in one ContextVar. Reading it
    # directly saves two Python calls per lookup on every hop; any other runtime context
    # (chosen with OTEL_PYTHON_CONTEXT) goes through the public API.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar):
        return var
    return None


_CONTEXT_VAR = _runtime_context_var()
#: Return the current OTel Context (the fast equivalent of ``opentelemetry.context.get_current``).
get_current: Callable[[], Context] = (
    _CONTEXT_VAR.get if _CONTEXT_VAR is not None else otel_context.get_current
)


def attach(ctx: Context) -> object:
    """Make ``ctx`` current; return the token that :func:`detach` takes."""
    if _CONTEXT_VAR is not None:
        return _CONTEXT_VAR.set(ctx)
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    """Restore the Context that was current before :func:`attach` returned ``token``."""
    try:
        if _CONTEXT_VAR is not None:
            _CONTEXT_VAR.reset(token)  # type: ignore[arg-type]
        else:
            otel_context.detach(token)  # type: ignore[arg-type]
    except Exception as exc:
        diagnostics.internal_error("detach", exc)


def restore(token: object) -> bool:
    """Make current again the Context found when :func:`attach` returned ``token``.

    Whatever was attached since and never detached (a handler's leaked context) goes with
    it. Returns False, restoring nothing, when ``token`` belongs to another thread or task
    or was used already.
    """
    if _CONTEXT_VAR is not None:
        try:
            _CONTEXT_VAR.reset(token)  # type: ignore[arg-type]
            return True
        except (ValueError, RuntimeError):
            return False
    detach(token)
    return True


def _discover_key(ctx: Context) -> str:
    (key,) = ctx.keys()
    return key


# The OTel API keeps the keys under which it stores the current span and the baggage private.
# Learn them once from the public setters so a context can be built with one dict copy.
SPAN_KEY: Final = _discover_key(trace.set_span_in_context(INVALID_SPAN, Context()))
BAGGAGE_KEY: Final = _discover_key(otel_baggage.set_baggage("k", "v", Context()))

_SAMPLED_OFF: Final = TraceFlags(0)
_TRACER_VERSION = "0.1.0"

TFunc = TypeVar("TFunc", bound=Callable[..., Any])


_provider_seen: list[object] = [None, False]  # [provider, is it a real SDK]


def _global_provider() -> object:
    # trace.get_tracer_provider() reads os.environ on every call while none is set (~1 µs).
    # The module global it reads is stable across OTel 1.x; fall back to the public call.
    try:
        return trace._TRACER_PROVIDER
    except AttributeError:  # pragma: no cover - a future OTel API without it
        provider = trace.get_tracer_provider()
        return None if isinstance(provider, ProxyTracerProvider) else provider


def sdk_installed() -> bool:
    """Return whether a real tracer provider (an OTel SDK) is installed globally."""
    provider = _global_provider()
    if provider is None:
        return False
    seen = _provider_seen
    if provider is not seen[0]:
        seen[1] = not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))
        seen[0] = provider
    return bool(seen[1])


_tracer_cache: list[object] = [None, None]  # [provider, tracer]


def tracer() -> trace.Tracer:
    """Return hoptrace's tracer from the global tracer provider (cached per provider)."""
    provider = _global_provider()
    cache = _tracer_cache
    if provider is None or provider is not cache[0]:
        cache[1] = trace.get_tracer("hoptrace", _TRACER_VERSION, schema_url=semconv.SCHEMA_URL)
        cache[0] = provider
    return cache[1]  # type: ignore[return-value]


def mint_span_context(trace_id: int | None = None) -> SpanContext:
    """Return a fresh W3C-valid, unsampled span context (a new trace unless ``trace_id`` given)."""
    tid = trace_id if trace_id else getrandbits(128) or 1
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
            # (A baggage already at its member limit is kept whole; hoptrace's own headers
            # still carry the ID.)
            values[BAGGAGE_KEY] = {**baggage, key: transaction_id}  # type: ignore[dict-item]
            return
    if baggage is not None:
        values[BAGGAGE_KEY] = baggage


def describe(exc: BaseException) -> str:
    """``Type: message`` for a span status; the type alone when ``str(exc)`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def end_span(span: Span, exc: BaseException | None, where: str) -> None:
    """End ``span``, first recording ``exc`` as its error; the span is ended whatever happens."""
    try:
        if exc is not None and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, describe(exc)))
            span.record_exception(exc)
    except Exception as err:  # an exception whose __str__ or __repr__ raises, say
        diagnostics.internal_error(where, err)
    finally:
        try:
            span.end()
        except Exception as err:
            diagnostics.internal_error(where, err)


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


class transaction:
    """Open an edge scope: a new transaction ID and a span, as a context manager or decorator.

    The span is a child of any span already active (an HTTP server span, say), else the root
    of a new trace. Without an OTel SDK, or in propagation-only mode, a W3C-valid unsampled
    trace and span ID are minted so every log line still shares a trace ID.
    """

    __slots__ = ("_attributes", "_fixed_id", "_name", "_span", "_token", "_transaction_id")

    def __init__(
        self,
        name: str | None = None,
        transaction_id: str | None = None,
        *,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise ConfigurationError(f"name must be a str or None, got {type(name).__name__}")
        if transaction_id is not None:
            validate_transaction_id(transaction_id)
        self._name = name
        self._fixed_id = transaction_id
        self._transaction_id = transaction_id
        self._attributes = attributes
        self._token: object | None = None
        self._span: Span | None = None

    @property
    def transaction_id(self) -> str | None:
        """The transaction ID of this scope once entered."""
        return self._transaction_id

    @property
    def span(self) -> Span | None:
        """The span this scope started (a non-recording one without an SDK)."""
        return self._span

    def __enter__(self) -> transaction:
        if self._token is not None:
            raise RuntimeError(
                "this hoptrace.transaction is already open; create a new hoptrace.transaction() "
                "for a nested transaction"
            )
        settings = get_settings()
        if not settings.enabled:
            return self
        try:
            tx = self._fixed_id or generate_transaction_id()
            self._transaction_id = tx
            parent = get_current()
            span: Span
            if settings.propagation_only or not sdk_installed():
                active = span_in(parent)
                if active is not None and active.get_span_context().is_valid:
                    span = NonRecordingSpan(mint_span_context(active.get_span_context().trace_id))
                else:
                    span = NonRecordingSpan(mint_span_context())
            else:
                attrs: dict[str, AttributeValue] = {semconv.TRANSACTION_ID: tx}
                if self._attributes:
                    attrs.update(self._attributes)
                from .spans import start_span  # spans imports this module

                span = start_span(self._name or "transaction", parent, SpanKind.INTERNAL, attrs)
            self._span = span
            entries = parent.get(BAGGAGE_KEY)
            if settings.baggage_mirror and not entries:  # the common case, in one dict build
                values: dict[str, object] = {
                    **parent, SPAN_KEY: span, TRANSACTION_KEY: tx,
                    BAGGAGE_KEY: {settings.baggage_key: tx},
                }
            else:
                values = {**parent, SPAN_KEY: span}
                bind_transaction(values, tx, entries, settings)
            self._token = attach(Context(values))
        except Exception as exc:
            diagnostics.internal_error("transaction.enter", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        span, self._span = self._span, None
        if span is not None and span.is_recording():
            end_span(span, exc, "transaction.exit")
        if token is not None and not restore(token):
            diagnostics.count("scope.closed_elsewhere")

    async def __aenter__(self) -> transaction:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: TFunc) -> TFunc:
        """Decorate a sync or async function so each call runs in its own new transaction."""
        name = self._name or getattr(func, "__qualname__", None) or "transaction"
        fixed_id = self._transaction_id
        attributes = self._attributes

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with transaction(name, fixed_id, attributes=attributes):
                    return await func(*args, **kwargs)

            return cast(TFunc, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with transaction(name, fixed_id, attributes=attributes):
                return func(*args, **kwargs)

        return cast(TFunc, wrapper)
