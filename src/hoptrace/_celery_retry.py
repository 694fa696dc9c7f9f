"""Celery retries: attempt N+1 is a sibling of attempt N, linked to it.

Both attempts are children of the original ``send`` span. The retry's message carries the
original parent's context plus :data:`RETRY_OF_HEADER`, the ``process`` span of the attempt
it follows; the worker links the new attempt to that span and counts the retry.
"""

from __future__ import annotations

import re
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

from .core import diagnostics, metrics, semconv
from .core.hop import consume_scope
from .core.propagation import inject

#: Message header naming the ``process`` span of the attempt a retry follows (traceparent form).
RETRY_OF_HEADER: Final = "x-hoptrace-retry-of"

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch


def _format_traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{'01' if sc.trace_flags & 1 else '00'}"


def prepare_retry(headers: dict[str, Any], scope: consume_scope | None) -> None:
    """Point a retry's context at the original parent and name the attempt it follows.

    ``scope`` is the process scope of the attempt being retried (None if not known here).
    """
    if scope is None:
        return
    attempt = scope.span_context
    incoming = scope.incoming.span_context if scope.incoming is not None else None
    parent = incoming if incoming is not None else attempt
    if parent is not None:
        ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.get_current())
        inject(headers, context=ctx)
    if attempt is not None and attempt.is_valid:
        headers[RETRY_OF_HEADER] = _format_traceparent(attempt)
    else:
        headers.pop(RETRY_OF_HEADER, None)


def _parse_span_context(value: object) -> SpanContext | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT(value)
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, True, TraceFlags(int(match.group(3), 16) & 1))


def retry_links(request_values: dict[str, Any]) -> list[Link] | None:
    """Return the link from a retry's attempt to the attempt it follows, if named."""
    previous = _parse_span_context(request_values.get(RETRY_OF_HEADER))
    return [Link(previous, {semconv.LINK_REASON: "retry"})] if previous is not None else None


def on_retry(scope: consume_scope, reason: Any) -> None:
    """Count a retry of the attempt in ``scope`` and record its cause on the span."""
    try:
        metrics.retried(scope.metrics_record)  # hoptrace.retries, kind=retry
        span = scope.span
        if span is None or not span.is_recording():
            return
        cause = getattr(reason, "exc", None)
        if isinstance(cause, BaseException):
            span.record_exception(cause)
    except Exception as exc:
        diagnostics.internal_error("celery.task_retry", exc)
