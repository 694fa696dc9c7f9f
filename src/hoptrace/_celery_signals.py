"""Celery worker signals: a ``process {task}`` scope from ``task_prerun`` to ``task_postrun``.

The scope covers the task body and Celery's own ``Task ... succeeded`` / ``raised`` log lines.
It lives on the task's request object, never in a global map.
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry.trace import Link

from . import _celery_retry
from ._config import get_settings
from .core import diagnostics, metrics, semconv
from .core.context import current_transaction_id
from .core.hop import consume_scope

#: The request attribute that holds a task run's :class:`_Execution`.
REQUEST_ATTRIBUTE: Final = "_hoptrace_execution"
_SIGNAL_UID: Final = "hoptrace.celery"

#: id() of every execution whose process scope is open in this process (empty when idle).
running: set[int] = set()


class _Execution:
    """One task run's process scope and outcome, kept on the task's request object."""

    __slots__ = ("error", "scope")

    def __init__(self, scope: consume_scope) -> None:
        self.scope = scope
        self.error: BaseException | None = None


def current_scope(task_id: object) -> consume_scope | None:
    """Return the process scope of the task running here if its ID is ``task_id``, else None."""
    from celery._state import get_current_worker_task  # type: ignore[import-untyped]

    task = get_current_worker_task()
    if task is None or task.request.id != task_id:
        return None
    execution = task.request.__dict__.get(REQUEST_ATTRIBUTE)
    return execution.scope if isinstance(execution, _Execution) else None


def on_task_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        if task is None:
            return
        request = task.request
        values = request.__dict__
        if values.get(REQUEST_ATTRIBUTE) is not None:
            return
        carrier: Any
        links: list[Link] | None = None
        if request.is_eager:
            # Run in the caller's context: keep its transaction; its span becomes the parent.
            tx = current_transaction_id()
            carrier = {get_settings().read_transaction_header: tx} if tx else {}
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
        execution = _Execution(scope)
        values[REQUEST_ATTRIBUTE] = execution
        running.add(id(execution))
        scope.open()
    except Exception as exc:
        diagnostics.internal_error("celery.task_prerun", exc)


def _execution_of(task: Any) -> _Execution | None:
    if task is None:
        return None
    execution = task.request.__dict__.get(REQUEST_ATTRIBUTE)
    return execution if isinstance(execution, _Execution) else None


def on_task_failure(sender: Any = None, exception: Any = None, **_: Any) -> None:
    try:
        execution = _execution_of(sender)
        if execution is not None and isinstance(exception, BaseException):
            execution.error = exception
    except Exception as exc:
        diagnostics.internal_error("celery.task_failure", exc)


def on_task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    """``task_retry``: count the retry and record its cause on the attempt's span."""
    try:
        execution = _execution_of(sender)
    except Exception as exc:
        diagnostics.internal_error("celery.task_retry", exc)
        return
    if execution is not None:
        _celery_retry.on_retry(execution.scope, reason)


def on_task_postrun(
    sender: Any = None, task: Any = None, state: Any = None, retval: Any = None, **_: Any
) -> None:
    try:
        if task is None:
            return
        execution = task.request.__dict__.pop(REQUEST_ATTRIBUTE, None)
        if not isinstance(execution, _Execution):
            return
        running.discard(id(execution))
        if isinstance(state, str):
            execution.scope.set_attribute(semconv.CELERY_TASK_STATE, state)
            if state == "REJECTED" and getattr(retval, "requeue", True) is False:
                metrics.dead_lettered(execution.scope.metrics_record, "rejected")
        execution.scope.close(execution.error)
    except Exception as exc:
        diagnostics.internal_error("celery.task_postrun", exc)


def connect() -> None:
    """Connect the worker signal handlers (idempotent: one connection per signal)."""
    from celery import signals  # type: ignore[import-untyped]

    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_failure.connect(on_task_failure, weak=False, dispatch_uid=_SIGNAL_UID)
    signals.task_retry.connect(on_task_retry, weak=False, dispatch_uid=_SIGNAL_UID)


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
