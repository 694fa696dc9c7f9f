"""aio-pika: ``send`` spans on ``Exchange.publish``, ``process`` scopes on every consume path.

::

    hoptrace.aio_pika.instrument()

* ``Exchange.publish`` opens ``send {exchange}:{routing_key}`` and publishes a copy of the
  message whose headers carry the context; the caller's ``Message`` is never changed.
* ``Queue.consume`` callbacks run inside ``process {exchange}:{routing_key}:{queue}`` for the
  callback's whole run (its own task, as aio-pika runs it).
* ``async for message in queue.iterator()``: the scope is open from the moment a message is
  returned until the loop asks for the next one, or the iterator closes.
* ``Queue.get``: the scope is open from its return until that message is acked, nacked or
  rejected in the same task (when the task's context is still the one the get attached), or
  the next ``Queue.get`` in that task.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final

from opentelemetry import context as otel_context

from . import _amqp
from .core import diagnostics, semconv
from .core.hop import consume_scope, produce_scope
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_SYSTEM: Final = semconv.SYSTEM_RABBITMQ
_HELD: Final = "_hoptrace_aio_pika_held"
_CALLBACK_MARK: Final = "__hoptrace_aio_pika_callback__"
_patcher: Final = Patcher("hoptrace.aio_pika")
_publishing: ContextVar[bool] = ContextVar("hoptrace_aio_pika_publishing", default=False)


class _Held:
    """A process scope left open after ``Queue.get`` or ``__anext__`` returned a message."""

    __slots__ = ("context", "message", "scope")

    def __init__(self, scope: consume_scope, message: Any) -> None:
        self.scope = scope
        self.message = message
        self.context = otel_context.get_current()


_held_get: ContextVar[_Held | None] = ContextVar("hoptrace_aio_pika_get", default=None)


def _exchange_name(exchange: Any) -> str | None:
    name = getattr(exchange, "name", exchange)
    return name if type(name) is str and name else None


def _wrap_publish(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def publish(self: Any, message: Any, routing_key: str, *args: Any,
                      **kwargs: Any) -> Any:
        if _publishing.get() or _amqp.traced_already(getattr(message, "headers", None)):
            return await original(self, message, routing_key, *args, **kwargs)
        guard = _publishing.set(True)
        try:
            scope = None
            outgoing = message
            try:
                attrs: dict[str, Any] = {}
                if type(routing_key) is str:
                    attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
                correlation_id = getattr(message, "correlation_id", None)
                if type(correlation_id) is str:
                    attrs[semconv.MESSAGING_CONVERSATION_ID] = correlation_id
                scope = produce_scope(
                    getattr(message, "headers", None),
                    semconv.rabbitmq_destination(_exchange_name(self), str(routing_key)),
                    _SYSTEM,
                    message_id=_amqp.message_id_text(getattr(message, "message_id", None)),
                    attributes=attrs,
                    copy=True,
                ).open()
                outgoing = copy.copy(message)
                outgoing.headers = scope.carrier
            except Exception as exc:
                diagnostics.internal_error("aio_pika.publish", exc)
                if scope is not None:
                    scope.close()
                scope = None
                outgoing = message
            if scope is None:
                return await original(self, outgoing, routing_key, *args, **kwargs)
            try:
                result = await original(self, outgoing, routing_key, *args, **kwargs)
            except BaseException as exc:
                scope.close(exc)
                raise
            scope.close()
            return result
        finally:
            _publishing.reset(guard)

    return publish


def _open(queue_name: Any, message: Any) -> consume_scope | None:
    try:
        return _amqp.open_delivery(
            getattr(message, "headers", None),
            _SYSTEM,
            exchange=getattr(message, "exchange", None),
            routing_key=getattr(message, "routing_key", None),
            queue=queue_name,
            message_id=getattr(message, "message_id", None),
            delivery_tag=getattr(message, "delivery_tag", None),
            correlation_id=getattr(message, "correlation_id", None),
            timestamp=getattr(message, "timestamp", None),
            redelivered=getattr(message, "redelivered", True),
        )
    except Exception as exc:
        diagnostics.internal_error("aio_pika.consume", exc)
        return None


def _wrap_callback(queue_name: Any, callback: Any) -> Any:
    if not callable(callback) or getattr(callback, _CALLBACK_MARK, False):
        return callback
    owner = getattr(callback, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("aio_pika."):
        return callback  # aio-pika's own machinery, such as QueueIterator.on_message

    async def on_message(message: Any) -> Any:
        scope = _open(queue_name, message)
        if scope is None:
            return await callback(message)
        try:
            result = await callback(message)
        except BaseException as exc:
            scope.close(exc)
            raise
        scope.close()
        return result

    setattr(on_message, _CALLBACK_MARK, True)
    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


def _wrap_consume(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def consume(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        return await original(self, _wrap_callback(getattr(self, "name", None), callback),
                              *args, **kwargs)

    return consume


def _close_held(held: _Held | None) -> None:
    if held is None:
        return
    try:
        held.scope.close()
    except Exception as exc:
        diagnostics.internal_error("aio_pika.release", exc)


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _release_iterator(iterator: Any, every_task: bool = False) -> None:
    """Close the scope this task holds on ``iterator`` (or every task's, at close)."""
    held: dict[object, _Held] | None = getattr(iterator, _HELD, None)
    if not held:
        return
    if every_task:
        scopes = list(held.values())
        held.clear()
    else:
        mine = held.pop(_current_task(), None)
        scopes = [mine] if mine is not None else []
    for scope in scopes:
        _close_held(scope)


_in_anext: ContextVar[bool] = ContextVar("hoptrace_aio_pika_in_anext", default=False)


def _wrap_anext(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def __anext__(self: Any) -> Any:
        if _in_anext.get():  # a subclass's wrapped __anext__ calling its parent's
            return await original(self)
        _release_iterator(self)
        marker = _in_anext.set(True)
        try:
            message = await original(self)
        finally:
            _in_anext.reset(marker)
        try:
            queue = getattr(self, "_amqp_queue", None)
            scope = _open(getattr(queue, "name", None), message)
            if scope is not None:
                # One open scope per task: tasks sharing an iterator never close each other's.
                held = getattr(self, _HELD, None)
                if held is None:
                    held = {}
                    setattr(self, _HELD, held)
                held[_current_task()] = _Held(scope, message)
        except Exception as exc:
            diagnostics.internal_error("aio_pika.iterator", exc)
        return message

    return __anext__


class _Loop:
    """One ``async for`` over a queue iterator; leaving the loop early closes its scope.

    ``break`` calls nothing on an iterator, but this object is dropped right there, in the
    task that ran the loop, so the open scope is closed and its context detached in time.
    """

    __slots__ = ("__weakref__", "_iterator")

    def __init__(self, iterator: Any) -> None:
        self._iterator = iterator

    def __aiter__(self) -> _Loop:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._iterator.__anext__()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)

    def __del__(self) -> None:
        try:
            _release_iterator(self._iterator)
        except Exception:
            pass


def _wrap_aiter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __aiter__(self: Any) -> Any:
        return _Loop(original(self))

    return __aiter__


def _wrap_iterator_close(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        _release_iterator(self, every_task=True)
        return await original(self, *args, **kwargs)

    return close


def _release_get(message: Any = None) -> None:
    held = _held_get.get()
    if held is None:
        return
    if message is not None and (
        held.message is not message or otel_context.get_current() is not held.context
    ):
        return
    _held_get.set(None)
    _close_held(held)


def _wrap_get(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        _release_get()
        message = await original(self, *args, **kwargs)
        if message is not None:
            scope = _open(getattr(self, "name", None), message)
            if scope is not None:
                _held_get.set(_Held(scope, message))
        return message

    return get


def _wrap_settle(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def settle(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        finally:
            if _held_get.get() is not None:
                _release_get(self)

    return settle


#: OpenTelemetry contrib's instrumentation of the same client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "aio-pika", "opentelemetry.instrumentation.aio_pika",
    "AioPikaInstrumentor", "aio-pika",
    "opentelemetry-instrumentation-aio-pika",
)


def instrument() -> None:
    """Trace ``Exchange.publish``, ``Queue.consume``, ``Queue.iterator()`` and ``Queue.get``."""
    take_over(_CONTRIB, is_instrumented)
    from aio_pika.exchange import Exchange
    from aio_pika.message import IncomingMessage
    from aio_pika.queue import Queue, QueueIterator

    _patcher.wrap(Exchange, "publish", _wrap_publish)
    _patcher.wrap(Queue, "consume", _wrap_consume)
    _patcher.wrap(Queue, "get", _wrap_get)
    _patcher.wrap(QueueIterator, "__anext__", _wrap_anext)
    _patcher.wrap(QueueIterator, "__aiter__", _wrap_aiter)
    # connect_robust() queues iterate with a subclass that reimplements __anext__.
    robust = getattr(
        importlib.import_module("aio_pika.robust_queue"), "RobustQueueIterator", None
    )
    if robust is not None and "__anext__" in vars(robust):
        _patcher.wrap(robust, "__anext__", _wrap_anext)
    _patcher.wrap(QueueIterator, "close", _wrap_iterator_close)
    for name in ("ack", "nack", "reject"):
        _patcher.wrap(IncomingMessage, name, _wrap_settle)


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    _patcher.restore()


def is_instrumented() -> bool:
    """Return whether :func:`instrument` is in force."""
    return _patcher.active


class AioPikaInstrumentor(ClientInstrumentor):
    """hoptrace's aio-pika instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("aio-pika >= 9.3, < 11",)

    def _instrument(self, **kwargs: Any) -> None:
        instrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
