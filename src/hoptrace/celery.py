"""Celery: one trace and one transaction ID through every task, canvas and retry.

Call :func:`instrument` once in every process that publishes or runs tasks (the producer,
each worker, beat)::

    import hoptrace.celery
    hoptrace.celery.instrument(app)

Producer side: every task message (``delay``, ``apply_async``, ``send_task``, canvas, retries,
beat) gets a ``send {task}`` PRODUCER span and carries the context in its protocol-2 message
headers. The headers are written after Celery has merged the caller's own ``headers=``, so a
retry never re-sends the context of the attempt before it.

Worker side (``hoptrace._celery_signals``): ``task_prerun`` opens a ``process {task}``
CONSUMER scope and ``task_postrun`` closes it, so the scope covers the task body and Celery's
own ``Task ... succeeded`` / ``raised`` log lines. The scope lives on the task's request
object, never in a global map.

Retries (``hoptrace._celery_retry``): attempt N+1 is a sibling of attempt N (both children of
the original ``send`` span) with a span ID of its own, linked to attempt N's ``process`` span, with
``messaging.message.retry.count`` = N+1. Only the first attempt gets the span ID derived from
the ``send`` span (for the killed-worker redelivery link); a retry, redelivered or not, links
to the attempt it retries.

Eager calls (``task.apply()``, ``task_always_eager``) run inside the caller's context: the
``process`` span is a child of the caller's span and the transaction ID is the caller's.

Beat: each scheduled publish starts a new transaction (a ``beat {entry}`` span).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context

from . import _celery_retry, _celery_signals
from ._celery_retry import RETRY_OF_HEADER
from ._config import ConfigurationError, get_settings
from .core import diagnostics, metrics, semconv
from .core import settings as _settings
from .core.context import get_current, sdk_installed, transaction
from .core.hop import AttachedSend, produce_scope
from .core.hop import dropped_send_entry as dropped_send
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher
from .core.propagation import inject, render

#: OpenTelemetry contrib's instrumentation of Celery, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "celery", "opentelemetry.instrumentation.celery",
    "CeleryInstrumentor", "celery",
    "opentelemetry-instrumentation-celery",
)

_lock = threading.Lock()
_patcher = Patcher("celery")
_active = False


# --------------------------------------------------------------------------- producer


def _destination_of(kwargs: dict[str, Any]) -> str | None:
    queue = kwargs.get("queue")
    if queue is not None:
        return queue if isinstance(queue, str) else getattr(queue, "name", None)
    routing_key = kwargs.get("routing_key")
    return routing_key if isinstance(routing_key, str) else None


def _prepare_retry(headers: dict[str, Any]) -> None:
    """Point a retry's context at the original parent and name the attempt it follows."""
    _celery_retry.prepare_retry(headers, _celery_signals.current_scope(headers.get("id")))


def _wrap_sender(send: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one app's ``amqp.send_task_message`` so every task message carries the context."""

    def send_task_message(producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return send(producer, name, message, *args, **kwargs)
        settings = _settings._current or get_settings()  # (get_settings' common case inline)
        if not settings.enabled:
            return send(producer, name, message, *args, **kwargs)
        scope: produce_scope | AttachedSend | None = None
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
                if headers.get("retries") or RETRY_OF_HEADER in headers:
                    scope = _prepare_message(headers, name, settings, kwargs)  # a retry's steps
                elif not settings.propagation_only and (extra := dropped_send(headers)) is not None:
                    # A send span the sampler drops: the scope's headers and context (the
                    # publish runs the app's signal receivers), without the scope. (``extra``
                    # reused: a local of its own would cost every publish its frame slot.)
                    # Asked first with spans on: it answers None, having done nothing, with
                    # no SDK or metrics on, so the SDK check below is made only then.
                    scope = extra[1]
                elif (settings.propagation_only or not sdk_installed()) and not metrics.enabled():
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
    if (settings.propagation_only or not sdk_installed()) and not metrics.enabled():
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
    from celery._state import _get_active_apps  # type: ignore[import-untyped]
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
        _celery_signals.connect()
        _active = True


def uninstrument() -> None:
    """Stop tracing Celery in this process and put every patched method back (idempotent)."""
    global _active
    with _lock:
        _active = False
        _celery_signals.disconnect()
        _patcher.restore()


def is_instrumented() -> bool:
    """Return whether :func:`instrument` is in force in this process."""
    return _active


def running_executions() -> int:
    """Return how many task executions in this process have a process scope open right now."""
    return len(_celery_signals.running)


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
