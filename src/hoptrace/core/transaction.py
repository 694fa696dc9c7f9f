"""``transaction()``: the edge scope that starts a new transaction ID and its span."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from random import getrandbits as _getrandbits
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from opentelemetry.context import Context
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from . import diagnostics, metrics, semconv
from . import hop as _hop
from . import settings as _settings
from . import spans as _spans
from .context import TRANSACTION_KEY, bind_transaction, plain_span_init
from .hop import _Scope
from .ids import TUPLE_LAYOUT, generate_transaction_id, mint_span_context, validate_transaction_id
from .otel_shims import (
    _CONTEXT_VAR,
    BAGGAGE_KEY,
    SPAN_KEY,
    attach,
    get_current,
    restore,
    sdk_installed,
)
from .settings import ConfigurationError, Settings, get_settings, new_transaction_id
from .spans import start_span_lazy

TFunc = TypeVar("TFunc", bound=Callable[..., Any])

#: ``SpanKind.INTERNAL``, read once: an enum member read costs ~0.9k instructions per call.
_INTERNAL: Final = SpanKind.INTERNAL
_SAMPLED_OFF: Final = TraceFlags(0)
#: ``NonRecordingSpan.__init__`` while ``NonRecordingSpan(sc)`` may be made without the class
#: call (:func:`~hoptrace.core.context.plain_span_init`), else None.
_NRS_INIT: Final = plain_span_init()
_new_tuple = tuple.__new__
_new_object = object.__new__
#: The ContextVar's own ``reset`` (what :func:`restore` calls), or None under another runtime
#: context.
_reset: Final = _CONTEXT_VAR.reset if _CONTEXT_VAR is not None else None


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
        if type(name) is not str and name is not None and not isinstance(name, str):
            raise ConfigurationError(f"name must be a str or None, got {type(name).__name__}")
        if transaction_id is not None:
            validate_transaction_id(transaction_id)
        # _Scope.__init__'s fields, set without its call (tests/unit/test_transaction_inline.py
        # checks that they are the same)
        self.span: Span | None = None
        self._token: object | None = None
        self._attached: Context | None = None
        self._closed = False
        self.metrics_record = None
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
        # _Scope.open and its _open, in one frame: every edge of every message opens one.
        settings = _settings._current  # get_settings(), without its call once they are made
        if settings is None:
            settings = get_settings()
        if not settings.enabled:
            return self
        try:
            tx = self._fixed_id
            if not tx:
                tx = (  # generate_transaction_id(); the default's random.randbytes(16), inline
                    _getrandbits(128).to_bytes(16, "little").hex()
                    if settings.transaction_id_generator is new_transaction_id
                    else generate_transaction_id())
            self.transaction_id = tx
            parent = get_current()
            span: Span | None
            if not settings.propagation_only:
                # The attributes are built only for a span the sampler may keep (or read
                # them for): the SDK's tracer with its shortcuts on (start_span_lazy's first
                # step), else _span_without_shortcut.
                span = _spans.lazy_span(self._name or "transaction", parent, _INTERNAL,
                                        self._span_attributes)
                if span is None:
                    span = self._span_without_shortcut(parent, settings)
            elif (parent.get(SPAN_KEY) is None and TUPLE_LAYOUT
                  and NonRecordingSpan.__init__ is _NRS_INIT):
                # NonRecordingSpan(mint_span_context()), inline: the same draws, the same span
                span = _new_object(NonRecordingSpan)
                span._context = _new_tuple(
                    SpanContext, (_getrandbits(128) or 1, _getrandbits(64) or 1, False,
                                  _SAMPLED_OFF, DEFAULT_TRACE_STATE, True))
            else:
                span = self._span_without_shortcut(parent, settings)
            self.span = span
            entries = parent.get(BAGGAGE_KEY)
            if settings.baggage_mirror and not entries:  # the common case, in one dict build
                values: dict[str, object] = {
                    **parent, SPAN_KEY: span, TRANSACTION_KEY: tx,
                    BAGGAGE_KEY: {settings.baggage_key: tx},
                }
            else:
                values = {**parent, SPAN_KEY: span}
                bind_transaction(values, tx, entries, settings)
            ctx = Context(values)
            self._token = attach(ctx)  # (_attach, inline)
            self._attached = ctx
        except Exception as exc:
            diagnostics.internal_error(self._opening, exc)
        return self

    #: ``with transaction(...)``: :meth:`open` itself.
    __enter__ = open

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # _Scope.__exit__, its _close(exc, nested=True) and _release's restore, in one frame:
        # every edge of every message closes one. (A ``with`` block always restores.)
        if self._closed:
            return
        self._closed = True
        if exc is not None and isinstance(exc, GeneratorExit):
            exc = None  # a generator closed by its consumer (break) is a normal end
        record = self.metrics_record
        if record is not None:
            metrics.closed(record, exc)
        span = self.span
        self.span = None
        # (a dropped span's end does nothing: no end_span call for it, spans.NRS_END)
        if span is not None and (exc is not None or type(span) is not NonRecordingSpan or (
                NonRecordingSpan.end is not _spans.NRS_END)):
            # (hop's end_span, read from hop as _Scope's close reads it)
            _hop.end_span(span, exc, self._where)  # type: ignore[attr-defined]
        token = self._token
        self._token = self._attached = None
        if token is None:
            return
        if _reset is not None:
            try:  # restore(token), inline
                _reset(token)  # type: ignore[arg-type]
                return
            except (ValueError, RuntimeError):
                pass
        elif restore(token):
            return
        diagnostics.count("scope.closed_elsewhere")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _span_without_shortcut(self, parent: Context, settings: Settings) -> Span:
        """The span when no sampling shortcut made it: the tracer's (an SDK installed, spans
        on), else a minted unsampled one (in the active span's trace, if valid)."""
        if not settings.propagation_only and sdk_installed():
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
