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

import copy
import functools
import importlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final

from . import _amqp, _client
from .core import held, semconv
from .core.hop import consume_scope
from .core.instrumentor import Contrib, take_over
from .core.patching import Patcher

__all__ = ["instrument", "is_instrumented", "processing", "uninstrument"]

_patcher: Final = Patcher("hoptrace.aio_pika")
#: Contrib's instrumentation of this client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "aio-pika", "opentelemetry.instrumentation.aio_pika",
    "AioPikaInstrumentor", "aio-pika", "opentelemetry-instrumentation-aio-pika",
)
#: The owner of every scope ``Queue.get`` holds: a task holds one, whichever queue it got from.
_GET: Final = "Queue.get"


def _exchange_name(exchange: Any) -> str | None:
    name = getattr(exchange, "name", exchange)
    return name if type(name) is str and name else None


#: ``Message.__slots__`` as aio-pika 9.3 to 10 define it: the fields the fast copy knows.
_KNOWN_SLOTS: Final = frozenset((
    "app_id", "body", "body_size", "content_encoding", "content_type", "correlation_id",
    "delivery_mode", "expiration", "_headers", "headers", "message_id", "priority", "reply_to",
    "timestamp", "type", "user_id", "__lock",
))
#: The fields ``Message.__init__`` passes through ``optional(value, str)``.
_TEXT_FIELDS: Final = ("correlation_id", "reply_to", "message_id", "type", "user_id", "app_id")
#: (Message, DeliveryMode, datetime, a Message subclass without the lock check), or () when
#: the installed aio-pika's Message is not the one :func:`_with_headers` knows; None until used.
_plain: tuple[Any, ...] | None = None


def _load_plain() -> tuple[Any, ...]:
    global _plain
    from datetime import datetime

    from aio_pika.abc import DeliveryMode
    from aio_pika.message import Message

    if set(getattr(Message, "__slots__", ())) != _KNOWN_SLOTS:
        _plain = ()
        return _plain

    class _Unlocked(Message):
        """The same layout as Message, with plain attribute stores (no lock check)."""

        __slots__ = ()
        __setattr__ = object.__setattr__  # type: ignore[assignment]
        # No fields set: _Unlocked() is a bare object (object.__new__ without its wrapper).
        __init__ = object.__init__

    _plain = (Message, DeliveryMode, datetime, _Unlocked)
    return _plain


def _with_headers(message: Any, headers: Any) -> Any:
    """``copy.copy(message)`` with ``headers`` set: the caller's message is never changed.

    aio-pika's ``Message.__copy__`` builds a new ``Message`` through ``__init__``, which sets
    17 fields through the lock-checking ``__setattr__`` (about 90k instructions). A plain
    ``Message`` whose fields hold what ``__init__`` makes of them (any message built by its
    constructor and not changed to other types since) is copied field by field instead
    (``_KNOWN_SLOTS``), unlocked: ``__copy__`` would build a new ``Message`` from these same
    values and get them back unchanged. Anything else (a subclass, an ``IncomingMessage``, a
    field changed to something ``__init__`` would convert, another aio-pika's fields, a field
    never set) goes through ``copy.copy``.
    """
    plain = _plain if _plain is not None else _load_plain()
    if plain and type(message) is plain[0]:
        cls, delivery_mode, datetime, unlocked = plain
        body = message.body
        if (type(body) is bytes and message.body_size == len(body)
                and type(message.delivery_mode) is delivery_mode
                and type(message.priority) is int):
            timestamp = message.timestamp
            if timestamp is None or isinstance(timestamp, datetime):
                for value in (  # _TEXT_FIELDS, read directly (no getattr call for each)
                    message.correlation_id, message.reply_to, message.message_id,
                    message.type, message.user_id, message.app_id,
                ):  # optional(value, str): None, or a non-empty str
                    if value is not None and (type(value) is not str or not value):
                        break
                else:
                    try:
                        new = unlocked()
                        new.app_id = message.app_id
                        new.body = body
                        new.body_size = message.body_size
                        new.content_encoding = message.content_encoding
                        new.content_type = message.content_type
                        new.correlation_id = message.correlation_id
                        new.delivery_mode = message.delivery_mode
                        new.expiration = message.expiration
                        new.headers = headers
                        new.message_id = message.message_id
                        new.priority = message.priority
                        new.reply_to = message.reply_to
                        new.timestamp = timestamp
                        new.type = message.type
                        new.user_id = message.user_id
                        new._Message__lock = False
                        new.__class__ = cls
                        return new
                    except AttributeError:  # a field never set: let __copy__ decide
                        pass
    outgoing = copy.copy(message)
    outgoing.headers = headers
    return outgoing


def _send(original: Callable[..., Awaitable[Any]], exchange: Any, message: Any,
          routing_key: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          carrier: Any) -> Awaitable[Any]:
    """``Exchange.publish`` of ``message``, with ``carrier`` as its headers (None: unchanged)."""
    outgoing = message if carrier is None else _with_headers(message, carrier)
    return original(exchange, outgoing, routing_key, *args, **kwargs)


def _wrap_publish(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def publish(self: Any, message: Any, routing_key: str, *args: Any,
                      **kwargs: Any) -> Any:
        # (No closure here: its cells would cost every publish, the span-less ones too.)
        try:  # getattr(message, name, None), without its call for aio-pika's own messages
            headers = message.headers
        except AttributeError:
            headers = None
        try:
            message_id = message.message_id
        except AttributeError:
            message_id = None
        begun = _amqp.begin_unrecorded(headers, routing_key, message_id, "aio_pika.publish")
        if begun is not None:  # no span, no metric: _amqp.publish_async's steps, inline
            carrier, attached, guard = begun
            try:
                result = await original(
                    self, message if carrier is None else _with_headers(message, carrier),
                    routing_key, *args, **kwargs)
            except BaseException as exc:
                _amqp._finish(attached, guard, exc)
                raise
            _amqp._finish(attached, guard)
            return result
        return await _amqp.publish_async(
            functools.partial(_send, original, self, message, routing_key, args, kwargs),
            headers, semconv.SYSTEM_RABBITMQ,
            exchange=_exchange_name(self),
            routing_key=routing_key, message_id=getattr(message, "message_id", None),
            correlation_id=getattr(message, "correlation_id", None), label="aio_pika.publish",
        )

    return publish


def _open(queue_name: Any, message: Any) -> consume_scope | None:
    return _amqp.open_from(
        message, message, queue_name, semconv.SYSTEM_RABBITMQ, "aio_pika.consume"
    )


def processing(message: Any, queue: str | None = None) -> _amqp.Processing:
    """Return the process scope of one message as an ``async with`` block (exact boundaries).

    For ``queue.iterator()`` / ``Queue.get`` code that wants the scope to end with the block
    rather than at the next call, typically with ``hold_consume_scope=False``.
    """
    return _amqp.Processing(message, message, queue, semconv.SYSTEM_RABBITMQ)


def _wrap_callback(queue_name: Any, callback: Any) -> Any:
    if not _amqp.wrappable(callback):
        return callback
    owner = getattr(callback, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("aio_pika."):
        return callback  # aio-pika's own machinery, such as QueueIterator.on_message

    async def on_message(message: Any) -> Any:
        # _amqp.run_in's steps for a coroutine, inline: no second coroutine per message
        scope = _amqp.open_from(
            message, message, queue_name, semconv.SYSTEM_RABBITMQ, "aio_pika.consume")
        if scope is None:
            return await callback(message)
        try:
            result = await callback(message)
        except BaseException as exc:
            scope.close(exc)
            raise
        scope.close()
        return result

    return _amqp.wrapped(on_message, callback)


def _wrap_consume(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def consume(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        return await original(self, _wrap_callback(getattr(self, "name", None), callback),
                              *args, **kwargs)

    return consume


_in_anext: ContextVar[bool] = ContextVar("hoptrace_aio_pika_in_anext", default=False)


def _wrap_anext(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def __anext__(self: Any) -> Any:
        if _in_anext.get():  # a subclass's wrapped __anext__ calling its parent's
            return await original(self)
        held.release(self)
        marker = _in_anext.set(True)
        try:
            message = await original(self)
        finally:
            _in_anext.reset(marker)
        if held.enabled():
            queue = getattr(self, "_amqp_queue", None)
            held.hold(self, _open(getattr(queue, "name", None), message), settles=False,
                      opened=True)
        return message

    return __anext__


def _wrap_aiter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __aiter__(self: Any) -> Any:
        iterator = original(self)
        return held.AsyncHeldIteration(iterator, iterator.__anext__)

    return __aiter__


def _wrap_iterator_close(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        held.release_all(self)
        return await original(self, *args, **kwargs)

    return close


def _wrap_get(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        held.release(_GET)
        message = await original(self, *args, **kwargs)
        if message is not None and held.enabled():
            held.hold(_GET, _open(getattr(self, "name", None), message), message, opened=True)
        return message

    return get


def _settled(message: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any, bool]:
    return _GET, message, False


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
        _patcher.wrap(IncomingMessage, name, lambda o: held.settling_async(o, _settled))


uninstrument, is_instrumented = _client.switches(_patcher, "aio-pika")


class AioPikaInstrumentor(_client.Instrumentor):
    """hoptrace's aio-pika instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("aio-pika >= 9.3, < 11",)
