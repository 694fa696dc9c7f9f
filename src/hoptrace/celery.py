"""Celery: one trace and one transaction ID through every task, canvas and retry.

Call :func:`instrument` once in every process that publishes or runs tasks (the producer,
each worker, beat)::

    import hoptrace.celery
    hoptrace.celery.instrument(app)

Producer side: every task message (``delay``, ``apply_async``, ``send_task``, canvas, retries,
beat) gets a ``send {task}`` PRODUCER span and carries the context in its protocol-2 message
headers. The headers are written after Celery has merged the caller's own ``headers=``, so a
retry never re-sends the context of the attempt before it.

Worker side: ``task_prerun`` opens a ``process {task}`` CONSUMER scope and ``task_postrun``
closes it, so the scope covers the task body and Celery's own ``Task ... succeeded`` /
``raised`` log lines. The scope lives on the task's request object, never in a global map.

Retries: attempt N+1 is a sibling of attempt N (both children of the original ``send`` span)
with a span ID of its own, linked to attempt N's ``process`` span, with
``messaging.message.retry.count`` = N+1. Only the first attempt gets the span ID derived from
the ``send`` span (for the killed-worker redelivery link); a retry, redelivered or not, links
to the attempt it retries.

Eager calls (``task.apply()``, ``task_always_eager``) run inside the caller's context: the
``process`` span is a child of the caller's span and the transaction ID is the caller's.

Beat: each scheduled publish starts a new transaction (a ``beat {entry}`` span).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

from ._config import ConfigurationError, get_settings
from .core import diagnostics, semconv
from .core.context import current_transaction_id, get_current, sdk_installed, transaction
from .core.hop import consume_scope, produce_scope
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher
from .core.propagation import inject, render

#: Message header naming the ``process`` span of the attempt a retry follows (traceparent form).
RETRY_OF_HEADER: Final = "x-hoptrace-retry-of"

_REQUEST_ATTRIBUTE: Final = "_hoptrace_execution"
_SIGNAL_UID: Final = "hoptrace.celery"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch

#: OpenTelemetry contrib's instrumentation of Celery, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "celery", "opentelemetry.instrumentation.celery",
    "CeleryInstrumentor", "celery",
    "opentelemetry-instrumentation-celery",
)

_lock = threading.Lock()
_patcher = Patcher("celery")
_active = False
#: id() of every execution whose process scope is open in this process (empty when idle).
_running: set[int] = set()


class _Execution:
    """One task run's process scope and outcome, kept on the task's request object."""

    __slots__ = ("error", "scope")

    def __init__(self, scope: consume_scope) -> None:
        self.scope = scope
        self.error: BaseException | None = None


# --------------------------------------------------------------------------- producer


def _destination_of(kwargs: dict[str, Any]) -> str | None:
    queue = kwargs.get("queue")
    if queue is not None:
        return queue if isinstance(queue, str) else getattr(queue, "name", None)
    routing_key = kwargs.get("routing_key")
    return routing_key if isinstance(routing_key, str) else None


def _format_traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{'01' if sc.trace_flags & 1 else '00'}"


def _prepare_retry(headers: dict[str, Any]) -> None:
    """Point a retry's context at the original parent and name the attempt it follows."""
    from celery._state import get_current_worker_task  # type: ignore[import-untyped]

    task = get_current_worker_task()
    if task is None:
        return
    request = task.request
    if request.id != headers.get("id"):
        return
    execution = request.__dict__.get(_REQUEST_ATTRIBUTE)
    if not isinstance(execution, _Execution):
        return
    scope = execution.scope
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


def _wrap_sender(send: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one app's ``amqp.send_task_message`` so every task message carries the context."""

    def send_task_message(producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return send(producer, name, message, *args, **kwargs)
        settings = get_settings()
        if not settings.enabled:
            return send(producer, name, message, *args, **kwargs)
        scope: produce_scope | None = None
        try:
            headers = message[0]
            if type(headers) is not dict or type(message[2]) is dict:
                diagnostics.warn(
                    "celery.protocol1",
                    "hoptrace: Celery message protocol 1 carries no context; set "
                    "task_protocol=2 (task %s is sent untraced)",
                    name,
                )
            else:
                extra = kwargs.get("headers")
                if extra:
                    # Celery merges these after building the message; merge first so the
                    # context written below wins over one copied from an earlier attempt.
                    headers.update(extra)
                    kwargs["headers"] = None
                if (
                    (settings.propagation_only or not sdk_installed())
                    and not headers.get("retries")
                    and RETRY_OF_HEADER not in headers
                ):
                    # The common propagation-only publish: headers only, no span.
                    render(get_current(), settings, headers)
                else:
                    scope = _prepare_message(headers, name, settings, kwargs)
        except Exception as exc:
            diagnostics.internal_error("celery.send_task_message", exc)
        if scope is None:
            return send(producer, name, message, *args, **kwargs)
        try:
            result = send(producer, name, message, *args, **kwargs)
        except BaseException as exc:
            scope.close(exc)
            raise
        scope.close()
        return result

    send_task_message._hoptrace_celery_sender = True  # type: ignore[attr-defined]
    return send_task_message


def _prepare_message(
    headers: dict[str, Any], name: str, settings: Any, kwargs: dict[str, Any]
) -> produce_scope | None:
    """Write the context into a protocol-2 message's headers; return the open send scope."""
    retrying = bool(headers.get("retries"))
    scope: produce_scope | None = None
    if settings.propagation_only or not sdk_installed():
        inject(headers)
    else:
        attributes: dict[str, Any] = {semconv.CELERY_TASK_NAME: name}
        destination = _destination_of(kwargs)
        if destination:
            attributes[semconv.MESSAGING_DESTINATION_NAME] = destination
        if retrying:
            attributes[semconv.MESSAGING_RETRY_COUNT] = headers["retries"]
        task_id = headers.get("id")
        scope = produce_scope(
            headers,
            name,
            semconv.SYSTEM_CELERY,
            message_id=task_id if isinstance(task_id, str) else None,
            attributes=attributes,
        ).open()
    try:
        if retrying:
            _prepare_retry(headers)
        elif RETRY_OF_HEADER in headers:
            del headers[RETRY_OF_HEADER]
    except Exception as exc:
        diagnostics.internal_error("celery.retry_headers", exc)
    return scope


def _wrap_create_task_sender(original: Callable[..., Any]) -> Callable[..., Any]:
    def _create_task_sender(self: Any) -> Any:
        return _wrap_sender(original(self))

    return _create_task_sender


def _wrap_beat_apply_async(original: Callable[..., Any]) -> Callable[..., Any]:
    def apply_async(self: Any, entry: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active or not get_settings().enabled:
            return original(self, entry, *args, **kwargs)
        token = otel_context.attach(otel_context.Context())
        try:
            with transaction(f"beat {getattr(entry, 'name', 'entry')}"):
                return original(self, entry, *args, **kwargs)
        finally:
            otel_context.detach(token)

    return apply_async


# --------------------------------------------------------------------------- worker


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


def _on_task_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        if task is None:
            return
        request = task.request
        values = request.__dict__
        if values.get(_REQUEST_ATTRIBUTE) is not None:
            return
        carrier: Any
        links: list[Link] | None = None
        if request.is_eager:
            # Run in the caller's context: keep its transaction; its span becomes the parent.
            tx = current_transaction_id()
            carrier = {get_settings().transaction_header: tx} if tx else {}
        else:
            carrier = values
        name = getattr(task, "name", None) or str(sender)
        attributes: dict[str, Any] = {semconv.CELERY_TASK_NAME: name}
        retries = request.retries
        retry = isinstance(retries, int) and retries > 0 and not request.is_eager
        delivery = values.get("delivery_info")
        redelivered: bool | None = None
        if isinstance(delivery, dict):
            routing_key = delivery.get("routing_key")
            if isinstance(routing_key, str) and routing_key:
                attributes[semconv.MESSAGING_DESTINATION_NAME] = routing_key
            flag = delivery.get("redelivered")
            if type(flag) is bool and not request.is_eager and not retry:
                # acks_late tasks whose worker died come back redelivered: link the first try.
                # Not for a retry: it carries the original send's context, so the span ID
                # derived from that send is the first attempt's, not this one's.
                redelivered = flag
        if retry:
            attributes[semconv.MESSAGING_RETRY_COUNT] = retries
            previous = _parse_span_context(values.get(RETRY_OF_HEADER))
            if previous is not None:
                links = [Link(previous, {semconv.LINK_REASON: "retry"})]
        scope = consume_scope(
            carrier,
            name,
            semconv.SYSTEM_CELERY,
            message_id=task_id if isinstance(task_id, str) else None,
            attributes=attributes,
            links=links,
            redelivered=redelivered,
        )
        execution = _Execution(scope)
        values[_REQUEST_ATTRIBUTE] = execution
        _running.add(id(execution))
        scope.open()
    except Exception as exc:
        diagnostics.internal_error("celery.task_prerun", exc)


def _execution_of(task: Any) -> _Execution | None:
    if task is None:
        return None
    execution = task.request.__dict__.get(_REQUEST_ATTRIBUTE)
    return execution if isinstance(execution, _Execution) else None


def _on_task_failure(sender: Any = None, exception: Any = None, **_: Any) -> None:
    try:
        execution = _execution_of(sender)
        if execution is not None and isinstance(exception, BaseException):
            execution.error = exception
    except Exception as exc:
        diagnostics.internal_error("celery.task_failure", exc)


def _on_task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    try:
        execution = _execution_of(sender)
        if execution is None:
            return
        span = execution.scope.span
        if span is None or not span.is_recording():
            return
        cause = getattr(reason, "exc", None)
        if isinstance(cause, BaseException):
            span.record_exception(cause)
    except Exception as exc:
        diagnostics.internal_error("celery.task_retry", exc)


def _on_task_postrun(sender: Any = None, task: Any = None, state: Any = None, **_: Any) -> None:
    try:
        if task is None:
            return
        execution = task.request.__dict__.pop(_REQUEST_ATTRIBUTE, None)
        if not isinstance(execution, _Execution):
            return
        _running.discard(id(execution))
        if isinstance(state, str):
            execution.scope.set_attribute(semconv.CELERY_TASK_STATE, state)
        execution.scope.close(execution.error)
    except Exception as exc:
        diagnostics.internal_error("celery.task_postrun", exc)


# --------------------------------------------------------------------------- public API


def _check_protocol(app: Any) -> None:
    protocol = app.conf.task_protocol
    if protocol != 2:
        raise ConfigurationError(
            f"hoptrace.celery needs Celery message protocol 2; app {app.main!r} has "
            f"task_protocol={protocol!r}. Set app.conf.task_protocol = 2."
        )


def instrument(app: Any = None) -> None:
    """Trace every task publish and execution in this process (idempotent)."""
    global _active
    from celery import signals  # type: ignore[import-untyped]
    from celery._state import _get_active_apps
    from celery.app.amqp import AMQP  # type: ignore[import-untyped]
    from celery.beat import Scheduler  # type: ignore[import-untyped]

    if app is not None:
        _check_protocol(app)
    take_over(_CONTRIB, is_instrumented)
    with _lock:
        _patcher.wrap(AMQP, "_create_task_sender", _wrap_create_task_sender)
        _patcher.wrap(Scheduler, "apply_async", _wrap_beat_apply_async)
        # Apps that already built their sender cache it: wrap the cached one too.
        for existing in list(_get_active_apps()):
            amqp = existing.__dict__.get("amqp")
            if amqp is None:
                continue
            cached = amqp.__dict__.get("send_task_message")
            if cached is not None and not getattr(cached, "_hoptrace_celery_sender", False):
                _patcher.wrap(amqp, "send_task_message", _wrap_sender)
        signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid=_SIGNAL_UID)
        signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid=_SIGNAL_UID)
        signals.task_failure.connect(_on_task_failure, weak=False, dispatch_uid=_SIGNAL_UID)
        signals.task_retry.connect(_on_task_retry, weak=False, dispatch_uid=_SIGNAL_UID)
        _active = True


def uninstrument() -> None:
    """Stop tracing Celery in this process and put every patched method back (idempotent)."""
    global _active
    with _lock:
        _active = False
        try:
            from celery import signals
        except ImportError:  # pragma: no cover - celery uninstalled meanwhile
            return
        for signal in (
            signals.task_prerun,
            signals.task_postrun,
            signals.task_failure,
            signals.task_retry,
        ):
            signal.disconnect(dispatch_uid=_SIGNAL_UID)
        _patcher.restore()


def is_instrumented() -> bool:
    """Return whether :func:`instrument` is in force in this process."""
    return _active


def running_executions() -> int:
    """Return how many task executions in this process have a process scope open right now."""
    return len(_running)


class CeleryInstrumentor(ClientInstrumentor):
    """hoptrace's Celery instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("celery >= 5.3, < 6",)

    def _instrument(self, **kwargs: Any) -> None:
        instrument(kwargs.get("app"))

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()


__all__ = [
    "RETRY_OF_HEADER",
    "CeleryInstrumentor",
    "instrument",
    "is_instrumented",
    "running_executions",
    "uninstrument",
]
