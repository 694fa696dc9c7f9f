"""Start hoptrace's own spans: through a lean recorder when the OTel SDK is installed.

With the SDK's own tracer, hoptrace starts its spans through
:mod:`hoptrace.core._sdk_spans`: ``Tracer.start_span`` step by step, making the SDK's own span
class with the same sampler, ID generator, resource, span limits and span processors, but
with a table lookup for the default sampler and without re-checking the plain attribute
values hoptrace builds itself. Exporters, processors and samplers see what
``tracer.start_span`` would give them.

Any other tracer (a vendor SDK, a proxy, an SDK whose shape the recorder does not know, or
``fast_spans=False``) gets the plain ``tracer.start_span`` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import diagnostics
from .otel_shims import tracer
from .settings import get_settings

#: [tracer, recorder or None] for the tracer last seen.
_recorder_cache: list[Any] = [None, None]
_logger = logging.getLogger("hoptrace")
_import_failure_logged: list[bool] = [False]


class UncheckedAttributes:
    """Mixin for spans that take hoptrace's own, already valid attribute values as they are."""

    __slots__ = ()

    def set_unchecked_attribute(self, key: str, value: AttributeValue) -> None:  # pragma: no cover
        """Set an attribute whose value hoptrace built (a str, bool, int or float)."""
        raise NotImplementedError


def _recorder_for(current: object) -> Any:
    cache = _recorder_cache
    if cache[0] is not current:
        recorder = None
        if type(current).__module__ == "opentelemetry.sdk.trace":
            try:
                from . import _sdk_spans

                recorder = _sdk_spans.recorder_for(current)  # probes once per tracer
            except ImportError as exc:  # an SDK without the names the recorder needs
                if not _import_failure_logged[0]:
                    _import_failure_logged[0] = True
                    _logger.debug("hoptrace: spans go through tracer.start_span: %s", exc)
            except Exception as exc:
                diagnostics.internal_error("spans.recorder", exc)
        cache[0], cache[1] = current, recorder
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
    before it ends (a delivery that may die unacknowledged). Only the lean recorder honours
    it (and then does not ask the ID generator for one); with any other tracer the ID is the
    ID generator's.
    """
    current = tracer()
    recorder = None
    if get_settings().fast_spans:
        cache = _recorder_cache  # the tracer last seen and its recorder: no call when it holds
        recorder = cache[1] if cache[0] is current else _recorder_for(current)
    if recorder is not None:
        return recorder.start(name, context, kind, attributes, links, start_time, span_id)  # type: ignore[no-any-return]
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

    With the lean recorder, a span its sampler is known to drop without reading them (a
    root under ``ParentBased(TraceIdRatioBased(r))`` whose trace ID falls outside the ratio,
    a child of an unsampled parent under static delegates) is the SDK's ``NonRecordingSpan``,
    made without building them. Any other tracer gets ``tracer.start_span`` as usual.
    """
    current = tracer()
    recorder = None
    if get_settings().fast_spans:
        cache = _recorder_cache
        recorder = cache[1] if cache[0] is current else _recorder_for(current)
    if recorder is not None:
        return recorder.start_lazy(name, context, kind, attributes)  # type: ignore[no-any-return]
    return current.start_span(name, context=context, kind=kind, attributes=attributes(),
                              links=None, start_time=None)  # (as start_span passes them)


def dropped_child(parent: SpanContext, span_id: int | None = None) -> Span | None:
    """The span a child of ``parent`` gets when the lean recorder knows the sampler drops it.

    None when that is not known (``fast_spans`` off, a tracer or sampler the recorder does not
    know, a decision that records): then the caller starts the span with :func:`start_span`,
    attributes and all. The span is the one :func:`start_span` would return.
    """
    if not get_settings().fast_spans:
        return None
    current = tracer()
    cache = _recorder_cache
    recorder = cache[1] if cache[0] is current else _recorder_for(current)
    if recorder is None:
        return None
    return recorder.dropped_child(parent, span_id)  # type: ignore[no-any-return]


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


__all__: Final = ["UncheckedAttributes", "describe", "dropped_child", "end_span", "start_span",
                  "start_span_lazy"]
