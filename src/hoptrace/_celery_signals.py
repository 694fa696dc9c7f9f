"""Celery worker signals: a ``process {task}`` scope from ``task_prerun`` to ``task_postrun``.

The scope covers the task body and Celery's own ``Task ... succeeded`` / ``raised`` log lines.
It lives on the task's request object, never in a global map.

Celery's task tracer sends ``task_prerun`` and ``task_postrun`` through
``celery.app.trace.send_prerun`` / ``send_postrun``. While hoptrace's handler is the only one
connected to the signal, :func:`connect` makes those call it directly: the same call at the
same point of the tracer, without the signal's per-send receiver lookup (its lock, its sender
filter, a list built and walked), which cost about as much as the process scope. With any
other receiver connected (the application's, another tool's) the signal dispatches as usual,
so every receiver still runs in the order it was connected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MethodType
from typing import Any, Final

from opentelemetry.trace import Link

from . import _celery_retry
from ._config import get_settings
from .core import diagnostics, metrics, semconv
from .core.context import current_transaction_id
from .core.hop import consume_scope

#: The request attribute that holds a task run's open process scope.
REQUEST_ATTRIBUTE: Final = "_hoptrace_execution"
#: The request attribute that holds the exception a task run failed with (``task_failure``).
ERROR_ATTRIBUTE: Final = "_hoptrace_error"
_SIGNAL_UID: Final = "hoptrace.celery"

#: id() of every process scope open in this process (empty when idle).
running: set[int] = set()


def current_scope(task_id: object) -> consume_scope | None:
    """Return the process scope of the task running here if its ID is ``task_id``, else None."""
    from celery._state import get_current_worker_task  # type: ignore[import-untyped]

    task = get_current_worker_task()
    if task is None or task.request.id != task_id:
        return None
    scope = task.request.__dict__.get(REQUEST_ATTRIBUTE)
    return scope if isinstance(scope, consume_scope) else None


def on_task_prerun(
    sender: Any = None, task_id: Any = None, task: Any = None, **named: Any
) -> None:
    """``task_prerun``: open the task's process scope."""
    _open(sender, task_id, task, named)


def _open(sender: Any, task_id: Any, task: Any, named: dict[str, Any]) -> None:
    try:
        if task is None:
            return
        request = task.request
        values = request.__dict__
        if values.get(REQUEST_ATTRIBUTE) is not None:
            return
        carrier: Any
        links: list[Link] | None = None
        eager = request.is_eager
        if eager:
            # Run in the caller's context: keep its transaction; its span becomes the parent.
            tx = current_transaction_id()
            carrier = {get_settings().read_transaction_header: tx} if tx else {}
        else:
            carrier = values
        name = getattr(task, "name", None) or str(sender)
        attributes: dict[str, Any] = {semconv.CELERY_TASK_NAME: name}
        retries = request.retries
        retry = isinstance(retries, int) and retries > 0 and not eager
        delivery = values.get("delivery_info")
        redelivered: bool | None = None
        if isinstance(delivery, dict):
            routing_key = delivery.get("routing_key")
            if isinstance(routing_key, str) and routing_key:
                attributes[semconv.MESSAGING_DESTINATION_NAME] = routing_key
            flag = delivery.get("redelivered")
            if type(flag) is bool and not eager and not retry:
                # acks_late tasks whose worker died come back redelivered: link the first try.
                # Not for a retry: it carries the original send's context, so the span ID
                # derived from that send is the first attempt's, not this one's.
                redelivered = flag
        if retry:
            attributes[semconv.MESSAGING_RETRY_COUNT] = retries
            links = _celery_retry.retry_links(values)
        scope = consume_scope(
            carrier,
            name,
            semconv.SYSTEM_CELERY,
            message_id=task_id if isinstance(task_id, str) else None,
            attributes=attributes,
            links=links,
            redelivered=redelivered,
        )
        values[REQUEST_ATTRIBUTE] = scope
        running.add(id(scope))
        scope.open()
    except Exception as exc:
        diagnostics.internal_error("celery.task_prerun", exc)


def _scope_of(task: Any) -> consume_scope | None:
    if task is None:
        return None
    scope = task.request.__dict__.get(REQUEST_ATTRIBUTE)
    return scope if isinstance(scope, consume_scope) else None


def on_task_failure(sender: Any = None, exception: Any = None, **_: Any) -> None:
    try:
        if _scope_of(sender) is not None and isinstance(exception, BaseException):
            sender.request.__dict__[ERROR_ATTRIBUTE] = exception
    except Exception as exc:
        diagnostics.internal_error("celery.task_failure", exc)


def on_task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    """``task_retry``: count the retry and record its cause on the attempt's span."""
    try:
        scope = _scope_of(sender)
    except Exception as exc:
        diagnostics.internal_error("celery.task_retry", exc)
        return
    if scope is not None:
        _celery_retry.on_retry(scope, reason)


def on_task_postrun(
    sender: Any = None, task_id: Any = None, task: Any = None, **named: Any
) -> None:
    """``task_postrun``: record the task's state and close its process scope."""
    _close(sender, task_id, task, named)


def _close(sender: Any, task_id: Any, task: Any, named: dict[str, Any]) -> None:
    try:
        if task is None:
            return
        values = task.request.__dict__
        scope = values.pop(REQUEST_ATTRIBUTE, None)
        if not isinstance(scope, consume_scope):
            return
        running.discard(id(scope))
        error = values.pop(ERROR_ATTRIBUTE, None) if ERROR_ATTRIBUTE in values else None
        state = named.get("state")
        if isinstance(state, str):
            if scope.span is not None:  # (set_attribute's own check, without its call)
                scope.set_attribute(semconv.CELERY_TASK_STATE, state)
            if state == "REJECTED" and getattr(named.get("retval"), "requeue", True) is False:
                metrics.dead_lettered(scope.metrics_record, "rejected")
        scope.close(error)
    except Exception as exc:
        diagnostics.internal_error("celery.task_postrun", exc)


#: A handler's body: (sender, task_id, task, the signal's other arguments).
_Body = Callable[[Any, Any, Any, dict[str, Any]], None]


def _direct(
    signal: Any, receiver: Callable[..., None], body: _Body, original: Callable[..., Any],
) -> Callable[..., Any]:
    """The tracer's ``send_<signal>``: ``body`` itself while ``receiver`` is the only receiver
    connected to ``signal``, else ``original`` (the signal's dispatch to every receiver)."""

    # What Signal.send returns, (receiver, response) pairs, made once: the tracer ignores it.
    responses = ((receiver, None),)

    def send(
        sender: Any, task_id: Any = None, task: Any = None, **named: Any
    ) -> Sequence[tuple[Any, Any]]:
        receivers = signal.receivers
        try:  # (the list may shrink from another thread meanwhile)
            alone = len(receivers) == 1 and receivers[0][1] is receiver
        except IndexError:
            alone = False
        if alone:
            body(sender, task_id, task, named)
            return responses
        # (The tracer passes task_id and task to both signals: nothing added here.)
        return original(  # type: ignore[no-any-return]
            sender=sender, task_id=task_id, task=task, **named
        )

    send.__wrapped__ = original  # type: ignore[attr-defined]
    return send


#: The tracer's send functions replaced by :func:`connect`: name -> (Celery's, hoptrace's).
_replaced: dict[str, tuple[Any, Any]] = {}


def _install_direct(
    trace: Any, name: str, signal: Any, receiver: Callable[..., None], body: _Body
) -> None:
    """Replace ``trace.<name>`` (Celery's ``signal.send``) with :func:`_direct`.

    Not hoptrace's :class:`~hoptrace.core.patching.Patcher`: its pass-through layer re-packs
    the keyword arguments of every call, and this replacement needs no switch: once our
    receiver is disconnected it is never alone, and the signal dispatches as before. Left
    alone when the name is missing or already someone else's (or ours, from an earlier call).
    """
    current = getattr(trace, name, None)
    # Celery's own bound method only: never a proxy that passes for it (type(), not ==).
    signal_type: Any = type(signal)
    if type(current) is not MethodType or current.__self__ is not signal or (
        current.__func__ is not signal_type.send
    ):
        return
    ours = _direct(signal, receiver, body, current)
    setattr(trace, name, ours)
    _replaced[name] = (current, ours)


def connect() -> None:
    """Connect the worker signal handlers (idempotent: one connection per signal), and let
    Celery's tracer call the prerun and postrun handlers directly while they are alone."""
    from celery import signals  # type: ignore[import-untyped]
    from celery.app import trace  # type: ignore[import-untyped]

    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_failure.connect(on_task_failure, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_retry.connect(on_task_retry, weak=False, dispatch_uid=_SIGNAL_UID)
    for name, signal, receiver, body in (
        ("send_prerun", signals.task_prerun, on_task_prerun, _open),
        ("send_postrun", signals.task_postrun, on_task_postrun, _close),
    ):
        _install_direct(trace, name, signal, receiver, body)


def disconnect() -> None:
    """Disconnect the worker signal handlers."""
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
    from celery.app import trace

    for name, (original, ours) in list(_replaced.items()):
        if getattr(trace, name, None) is ours:  # else another tool wrapped ours: it passes on
            setattr(trace, name, original)
        del _replaced[name]
