"""``transaction()``: the edge scope that starts a new transaction ID and its span."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from . import diagnostics, semconv
from . import spans as _spans
from .context import TRANSACTION_KEY, bind_transaction
from .hop import _Scope
from .ids import generate_transaction_id, mint_span_context, validate_transaction_id
from .otel_shims import BAGGAGE_KEY, SPAN_KEY, get_current, sdk_installed
from .settings import ConfigurationError, Settings, get_settings, new_transaction_id
from .spans import start_span_lazy

TFunc = TypeVar("TFunc", bound=Callable[..., Any])

#: ``SpanKind.INTERNAL``, read once: an enum member read costs ~0.9k instructions per call.
_INTERNAL: Final = SpanKind.INTERNAL


class transaction(_Scope):
    """Open an edge scope: a new transaction ID and a span, as a context manager or decorator.

    The span is a child of any span already active (an HTTP server span, say), else the root
    of a new trace. Without an OTel SDK, or in propagation-only mode, a W3C-valid unsampled
    trace and span ID are minted so every log line still shares a trace ID.
    """

    __slots__ = ("_attributes", "_fixed_id", "_name", "transaction_id")

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
        _Scope.__init__(self)
        self._name = name
        self._fixed_id = transaction_id
        self._attributes = attributes
        #: The transaction ID of this scope once entered (or the one given).
        self.transaction_id: str | None = transaction_id

    def open(self) -> transaction:
        """Start the span, attach it with the transaction ID; ``close()`` ends both."""
        if self._token is not None:
            raise RuntimeError(
                "this hoptrace.transaction is already open; create a new hoptrace.transaction() "
                "for a nested transaction"
            )
        self._closed = False  # the same object may be entered again once closed
        # (_Scope.open, without its call: every edge of every message opens one.)
        settings = get_settings()
        if settings.enabled:
            try:
                self._open(settings)
            except Exception as exc:
                diagnostics.internal_error(self._opening, exc)
        return self

    #: ``with transaction(...)``: :meth:`open` itself.
    __enter__ = open

    def _open(self, settings: Settings) -> None:
        tx = self._fixed_id
        if not tx:
            # generate_transaction_id(), with the settings in hand
            tx = (new_transaction_id() if settings.transaction_id_generator is new_transaction_id
                  else generate_transaction_id())
        self.transaction_id = tx
        parent = get_current()
        span = self.span = self._start_span(parent, tx, settings)
        entries = parent.get(BAGGAGE_KEY)
        if settings.baggage_mirror and not entries:  # the common case, in one dict build
            values: dict[str, object] = {
                **parent, SPAN_KEY: span, TRANSACTION_KEY: tx,
                BAGGAGE_KEY: {settings.baggage_key: tx},
            }
        else:
            values = {**parent, SPAN_KEY: span}
            bind_transaction(values, tx, entries, settings)
        self._attach(Context(values))

    def _start_span(self, parent: Context, tx: str, settings: Settings) -> Span:
        if not settings.propagation_only:
            # The attributes are built only for a span the sampler may keep (or read them for).
            # The SDK's tracer with its shortcuts on (start_span_lazy, without its call)
            span = _spans.lazy_span(self._name or "transaction", parent, _INTERNAL,
                                    self._span_attributes)
            if span is not None:
                return span
            if sdk_installed():
                return start_span_lazy(self._name or "transaction", parent, _INTERNAL,
                                       self._span_attributes)
        active: Span | None = parent.get(SPAN_KEY)  # type: ignore[assignment]  # (span_in)
        if active is not None and active.get_span_context().is_valid:
            return NonRecordingSpan(mint_span_context(active.get_span_context().trace_id))
        return NonRecordingSpan(mint_span_context())

    def _span_attributes(self) -> dict[str, AttributeValue]:
        tx = cast(str, self.transaction_id)  # set by _open before the span starts
        attrs: dict[str, AttributeValue] = {semconv.TRANSACTION_ID: tx}
        if self._attributes:
            attrs.update(self._attributes)
        return attrs

    async def __aenter__(self) -> transaction:
        return self.open()

    def __call__(self, func: TFunc) -> TFunc:
        """Decorate a sync or async function so each call runs in its own new transaction."""
        name = self._name or getattr(func, "__qualname__", None) or "transaction"
        fixed_id = self.transaction_id
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


__all__: Final = ["transaction"]
