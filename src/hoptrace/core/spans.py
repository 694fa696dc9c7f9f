"""Start hoptrace's own spans: always through the tracer's own ``start_span``.

With the OTel SDK's tracer, :mod:`hoptrace.core._sdk_spans` adds two things around that call:
a span ID fixed in advance (:func:`start_span`'s ``span_id``), and, with ``fast_spans`` on,
the sampling shortcuts: a span the sampler provably drops is the SDK's ``NonRecordingSpan``,
made without building its attributes (:func:`dropped_child`, :func:`start_span_lazy`).
Any other tracer (a vendor SDK, a proxy, an SDK whose shape hoptrace does not know) gets the
plain ``tracer.start_span`` call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any, Final

from opentelemetry import trace as _trace_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.util.types import AttributeValue

from . import diagnostics
from . import settings as _settings
from .otel_shims import PROVIDER_GLOBAL, _tracer_cache, tracer
from .settings import get_settings

#: [tracer, its _sdk_spans.Starter or None] for the tracer last seen.
_starter_cache: list[Any] = [None, None]
#: [the module _sdk_spans] once imported (its dropped_child_of: the C module's, when built).
#: Changed in place, never rebound: the C module holds this list (as it does _fast_cache).
_sdk_dropped: list[Any] = [None]
_logger = logging.getLogger("hoptrace")
#: Whether the debug line saying fixed span IDs are not honoured was logged.
_unfixed_logged: list[bool] = [False]


def _starter_for(current: object) -> Any:
    cache = _starter_cache
    if cache[0] is not current:
        starter = None
        if type(current).__module__ == "opentelemetry.sdk.trace":
            try:
                from . import _sdk_spans

                starter = _sdk_spans.starter_for(current)  # probes once per tracer
                _sdk_dropped[0] = _sdk_spans
            except ImportError as exc:  # an SDK without the names hoptrace needs
                _logger.debug("hoptrace: spans go through tracer.start_span alone: %s", exc)
            except Exception as exc:
                diagnostics.internal_error("spans.starter", exc)
        cache[0], cache[1] = current, starter
    return cache[1]


def start_span(
    name: str,
    context: Context,
    kind: SpanKind,
    attributes: dict[str, AttributeValue],
    links: Sequence[Link] | None = None,
    start_time: int | None = None,
    span_id: int | None = None,
) -> Span:
    """Start one of hoptrace's spans as a child of the span in ``context`` (if any).

    ``span_id`` fixes the new span's ID, for a span another process must be able to link to
    before it ends (a delivery that may die unacknowledged). The SDK's tracer honours it,
    whatever ``fast_spans`` says, and then does not ask its ID generator for one; with a
    tracer hoptrace does not know, the ID is the tracer's own (said once, at debug level).
    """
    current = tracer()
    if span_id is not None:
        cache = _starter_cache  # the tracer last seen and its starter: no call when it holds
        starter = cache[1] if cache[0] is current else _starter_for(current)
        if starter is not None and starter.fixed_ids:
            return starter.start(  # type: ignore[no-any-return]
                name, context, kind, attributes, links, start_time, span_id)
        if not _unfixed_logged[0]:
            _unfixed_logged[0] = True
            _logger.debug("hoptrace: this tracer (%s) cannot take a fixed span ID: a "
                          "redelivery links to no first attempt", type(current).__qualname__)
    return current.start_span(
        name, context=context, kind=kind, attributes=attributes, links=links,
        start_time=start_time,
    )


def start_span_lazy(
    name: str,
    context: Context,
    kind: SpanKind,
    attributes: Callable[[], dict[str, AttributeValue]],
) -> Span:
    """:func:`start_span`, calling ``attributes()`` only when the sampler may read them.

    With ``fast_spans`` and the SDK's tracer, a span its sampler is known to drop without
    reading them (a root under ``ParentBased(TraceIdRatioBased(r))`` whose trace ID falls
    outside the ratio, a child of an unsampled parent under static delegates) is the SDK's
    ``NonRecordingSpan``, made without building them. Anything else gets
    ``tracer.start_span``.
    """
    span = lazy_span(name, context, kind, attributes)
    if span is not None:
        return span
    return tracer().start_span(
        name, context=context, kind=kind, attributes=attributes(), links=None,
        start_time=None)  # (as start_span passes them)


def sdk_starter() -> Any:
    """The current tracer's :class:`~hoptrace.core._sdk_spans.Starter`, or None.

    Not None only for the OTel SDK's tracer (so an SDK is installed). Whether its sampling
    shortcuts may run is ``fast_spans``: the caller's to check.
    """
    # (tracer(): its cache read here, no call, while the provider holds)
    provider = (_trace_api._TRACER_PROVIDER if PROVIDER_GLOBAL
                else getattr(_trace_api, "_TRACER_PROVIDER", None))
    cached = _tracer_cache
    current: Any = cached[1] if provider is cached[0] and provider is not None else tracer()
    cache = _starter_cache
    return cache[1] if cache[0] is current else _starter_for(current)


#: [settings, provider, :func:`fast_starter`'s answer] for the settings and provider last seen.
#: Changed in place, never rebound: the C module holds this list.
_fast_cache: list[Any] = [None, None, None]


def fast_starter() -> Any:
    """The Starter whose sampling shortcuts apply now (``fast_spans`` on, the SDK's tracer),
    else None. Cached for the settings and global provider in force (each replaced, never
    changed, when they change), so it is asked again as soon as either changes."""
    provider = (_trace_api._TRACER_PROVIDER if PROVIDER_GLOBAL
                else getattr(_trace_api, "_TRACER_PROVIDER", None))
    cache = _fast_cache
    settings = _settings._current
    if settings is cache[0] and provider is cache[1] and provider is not None:
        return cache[2]
    starter = sdk_starter() if get_settings().fast_spans else None
    cache[0], cache[1], cache[2] = _settings._current, provider, starter
    return starter


def dropped_child(parent: Span | SpanContext, span_id: int | None = None) -> Span | None:
    """The span a child of ``parent`` (a span, or its span context) gets when the sampler is
    known to drop it.

    None when that is not known (``fast_spans`` off, a tracer or sampler hoptrace does not
    know, a decision that records): then the caller starts the span with :func:`start_span`,
    attributes and all. The span is the one :func:`start_span` would return. (In C when the
    module is built: ``_speedups.dropped_span``, the same steps.)
    """
    if type(parent) is not SpanContext:
        parent = parent.get_span_context()  # type: ignore[union-attr]
    starter = fast_starter()
    if starter is None:
        return None
    sdk = _sdk_dropped[0]
    if sdk is None:  # pragma: no cover - a starter comes from _starter_for, which sets it
        return starter.dropped_child(parent, span_id)  # type: ignore[no-any-return]
    return sdk.dropped_child_of(starter, parent, span_id)  # type: ignore[no-any-return]


def lazy_span(
    name: str,
    context: Context,
    kind: SpanKind,
    attributes: Callable[[], dict[str, AttributeValue]],
) -> Span | None:
    """:func:`start_span_lazy` when a Starter's shortcuts apply now (:func:`fast_starter`),
    else None (the caller then starts the span its own way). In C when the module is built:
    ``_speedups.lazy_span``, the same steps."""
    starter = fast_starter()
    if starter is None:
        return None
    sdk = _sdk_dropped[0]
    if sdk is None:  # pragma: no cover - a starter comes from _starter_for, which sets it
        return starter.start_lazy(name, context, kind, attributes)  # type: ignore[no-any-return]
    return sdk.start_lazy_of(  # type: ignore[no-any-return]
        starter, name, context, kind, attributes)


#: The Python :func:`dropped_child` and :func:`lazy_span` (the tests compare the C module's
#: with them).
python_entries: Final = (dropped_child, lazy_span)


def use_c_entries(failed: Span) -> Callable[..., Span | None] | None:
    """Make :func:`dropped_child` and :func:`lazy_span` the C module's ``dropped_span`` and
    ``lazy_span`` (the same steps in one call), when it is built and allowed (not
    ``HOPTRACE_PURE_PYTHON``) and ``SpanContext`` is the 6-tuple; return its ``dropped_hop``
    (``hop._dropped_child``, whose failures give ``failed``), else None.

    Called once, by hop.py at its import (the C module comes from propagation.py, which
    imports modules that import this one). Callers read both functions from this module at
    each call, so they see the swap.
    """
    global dropped_child, lazy_span
    from .ids import TUPLE_LAYOUT
    from .propagation import _speedups

    if getattr(_speedups, "dropped_hop", None) is None or not TUPLE_LAYOUT:
        return None
    _speedups.configure_spans(sys.modules[__name__], _settings, _trace_api, SpanContext,
                              diagnostics.internal_error, failed, _fast_cache, _sdk_dropped)
    dropped_child, lazy_span = _speedups.dropped_span, _speedups.lazy_span
    return _speedups.dropped_hop  # type: ignore[no-any-return]


def describe(exc: BaseException) -> str:
    """``Type: message`` for a span status; the type alone when ``str(exc)`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _does_nothing(method: object) -> bool:
    """Whether ``method`` is a plain function whose body only returns None (reads no name)."""

    def model(self: object, end_time: int | None = None) -> None:
        pass

    if type(method) is not FunctionType:
        return False
    code = method.__code__
    return (code.co_code == model.__code__.co_code and code.co_consts[:1] == (None,)
            and not code.co_names)


#: ``NonRecordingSpan.end`` while it is the API's own, which does nothing (else None). A scope
#: that ends a span of exactly that class, with no error to record, while the class's ``end``
#: is still this one, need not call :func:`end_span`: it would only call that ``end``. (An
#: ``end`` set on one span instance itself is not looked for: reading the instance's
#: ``__dict__`` would cost about what the skip saves.)
NRS_END: Final = (NonRecordingSpan.__dict__.get("end")
                  if _does_nothing(NonRecordingSpan.__dict__.get("end")) else None)


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


__all__: Final = [
    "NRS_END", "describe", "dropped_child", "end_span", "fast_starter", "lazy_span", "sdk_starter",
    "start_span", "start_span_lazy",
]
