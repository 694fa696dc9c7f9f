"""pika: ``send`` spans on publish, ``process`` scopes around every way of consuming.

Three ways in, from the most to the least automatic::

    hoptrace.pika.instrument()                  # every channel of every connection
    channel = hoptrace.pika.instrument_channel(connection.channel())   # one channel
    @hoptrace.pika.traced_publish               # one publishing function
    def publish(exchange, routing_key, body, properties=None): ...

Publishing (``Channel.basic_publish``, which ``BlockingChannel`` and every asynchronous
adapter go through) opens a ``send {exchange}:{routing_key}`` span and sends a copy of the
properties whose headers carry the context; the caller's ``BasicProperties`` and its headers
dict are never changed.

Consuming opens ``process {exchange}:{routing_key}:{queue}`` with the message's context,
transaction ID and baggage attached:

* ``basic_consume`` callbacks (``BlockingChannel`` and ``SelectConnection``-style channels):
  for the callback's whole run;
* ``BlockingChannel.consume()``: from the moment a message is yielded until the loop asks for
  the next one, breaks out, closes the generator, or calls ``cancel()`` (acking inside the
  loop body does not end it);
* ``BlockingChannel.basic_get``: from its return until that message is acked, nacked or
  rejected (when the caller's context is the one the get attached), the next ``basic_get``
  or ``consume`` on the channel, or the channel's close;
* asynchronous ``Channel.basic_get`` callbacks: for the callback's run.

A message delivered again (``basic_nack``/``basic_reject`` with requeue, a consumer that died
before acking, or a dead-letter exchange) links to the span of its earlier delivery when that
delivery was processed in this process; see ``docs/rabbitmq.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final, TypeVar, cast

from opentelemetry import context as otel_context

from . import _amqp
from .core import diagnostics, semconv
from .core.hop import consume_scope, produce_scope, spans_active
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher, original_of
from .core.propagation import inject

__all__ = [
    "PikaInstrumentor",
    "instrument",
    "instrument_channel",
    "is_instrumented",
    "traced_publish",
    "uninstrument",
]

_SYSTEM: Final = semconv.SYSTEM_RABBITMQ
_HELD: Final = "_hoptrace_pika_held"
_CALLBACK_MARK: Final = "__hoptrace_pika_callback__"
_patcher: Final = Patcher("hoptrace.pika")
_publishing: ContextVar[bool] = ContextVar("hoptrace_pika_publishing", default=False)

F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------- publish ---


def _copy_properties(properties: Any, headers: Any) -> Any:
    """Return a new BasicProperties equal to ``properties`` but with ``headers``."""
    if properties is None:
        from pika.spec import BasicProperties  # type: ignore[import-untyped]

        return BasicProperties(headers=headers)
    cls = type(properties)
    new = object.__new__(cls)
    new.__dict__.update(properties.__dict__)
    new.headers = headers
    return new


def _traced_call(
    exchange: Any,
    routing_key: Any,
    properties: Any,
    call: Callable[[Any], Any],
    headers_only: bool = False,
) -> Any:
    """Run ``call(new_properties)`` inside a ``send`` span; the one publish path of this module.

    ``headers_only``: ``call`` runs no user code (pika's own ``basic_publish``), so when no
    span is to be made the headers are all there is to do, and no context is attached.
    """
    if _publishing.get() or _amqp.traced_already(getattr(properties, "headers", None)):
        return call(properties)
    guard = _publishing.set(True)
    try:
        if headers_only and not spans_active():
            try:
                headers = inject(getattr(properties, "headers", None), copy=True)
                new_properties = _copy_properties(properties, headers)
            except Exception as exc:
                diagnostics.internal_error("pika.basic_publish", exc)
                new_properties = properties
            return call(new_properties)
        scope: produce_scope | None = None
        new_properties = properties
        try:
            headers = getattr(properties, "headers", None)
            attrs: dict[str, Any] = {}
            if type(routing_key) is str:
                attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
            correlation_id = getattr(properties, "correlation_id", None)
            if type(correlation_id) is str:
                attrs[semconv.MESSAGING_CONVERSATION_ID] = correlation_id
            scope = produce_scope(
                headers,
                semconv.rabbitmq_destination(exchange if type(exchange) is str else None,
                                             str(routing_key)),
                _SYSTEM,
                message_id=_amqp.message_id_text(getattr(properties, "message_id", None)),
                attributes=attrs,
                copy=True,
            ).open()
            new_properties = _copy_properties(properties, scope.carrier)
        except Exception as exc:
            diagnostics.internal_error("pika.basic_publish", exc)
            if scope is not None:
                scope.close()
            scope = None
            new_properties = properties
        if scope is None:
            return call(new_properties)
        try:
            result = call(new_properties)
        except BaseException as exc:
            scope.close(exc)
            raise
        scope.close()
        return result
    finally:
        _publishing.reset(guard)


def _wrap_basic_publish(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_publish(
        self: Any,
        exchange: str,
        routing_key: str,
        body: Any,
        properties: Any = None,
        mandatory: bool = False,
    ) -> Any:
        return _traced_call(
            exchange,
            routing_key,
            properties,
            lambda props: original(self, exchange, routing_key, body, props, mandatory),
            True,
        )

    return basic_publish


def traced_publish(func: F) -> F:
    """Wrap a function with ``basic_publish``'s parameters so each call is a traced send.

    The function receives ``(exchange, routing_key, body, properties, ...)`` positionally or
    by keyword, as ``basic_publish`` does; it gets a copy of the properties with the headers
    to send. A bound ``channel.basic_publish`` works too.
    """

    @functools.wraps(func)
    def publish(*args: Any, **kwargs: Any) -> Any:
        exchange = args[0] if len(args) > 0 else kwargs.get("exchange", "")
        routing_key = args[1] if len(args) > 1 else kwargs.get("routing_key", "")
        properties = args[3] if len(args) > 3 else kwargs.get("properties")

        def call(props: Any) -> Any:
            if len(args) > 3:
                return func(*args[:3], props, *args[4:], **kwargs)
            return func(*args, **{**kwargs, "properties": props})

        return _traced_call(exchange, routing_key, properties, call)

    return cast(F, publish)


# ----------------------------------------------------------------------------- consume ---


def _open(queue: Any, method: Any, properties: Any) -> consume_scope | None:
    """Open the process scope of one delivery (``Basic.Deliver`` or ``Basic.GetOk``)."""
    try:
        return _amqp.open_delivery(
            getattr(properties, "headers", None),
            _SYSTEM,
            exchange=getattr(method, "exchange", None),
            routing_key=getattr(method, "routing_key", None),
            queue=queue,
            message_id=getattr(properties, "message_id", None),
            delivery_tag=getattr(method, "delivery_tag", None),
            correlation_id=getattr(properties, "correlation_id", None),
            timestamp=getattr(properties, "timestamp", None),
            redelivered=getattr(method, "redelivered", True),
        )
    except Exception as exc:
        diagnostics.internal_error("pika.consume", exc)
        return None


def _wrap_callback(queue: Any, callback: Any) -> Any:
    """Return ``callback`` run inside a process scope per message (wrapped at most once)."""
    if not callable(callback) or getattr(callback, _CALLBACK_MARK, False):
        return callback

    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        scope = _open(queue, method, properties)
        if scope is None:
            return callback(channel, method, properties, body)
        try:
            result = callback(channel, method, properties, body)
        except BaseException as exc:
            scope.close(exc)
            raise
        scope.close()
        return result

    setattr(on_message, _CALLBACK_MARK, True)
    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


def _internal_callback(callback: Any) -> bool:
    """Whether ``callback`` belongs to pika's BlockingChannel machinery (not user code)."""
    owner = getattr(callback, "__self__", None)
    if owner is None:
        return False
    if type(owner).__module__ == "pika.adapters.blocking_connection":
        return True
    from pika.adapters.blocking_connection import (  # type: ignore[import-untyped, unused-ignore]
        BlockingChannel,
    )

    return isinstance(owner, BlockingChannel)


def _wrap_basic_consume(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_consume(self: Any, queue: Any, on_message_callback: Any, *args: Any,
                      **kwargs: Any) -> Any:
        if not _internal_callback(on_message_callback):
            on_message_callback = _wrap_callback(queue, on_message_callback)
        return original(self, queue, on_message_callback, *args, **kwargs)

    return basic_consume


def _wrap_async_basic_get(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_get(self: Any, queue: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if not _internal_callback(callback):
            callback = _wrap_callback(queue, callback)
        return original(self, queue, callback, *args, **kwargs)

    return basic_get


class _Held:
    """A process scope left open after a blocking call returned a message to the caller."""

    __slots__ = ("context", "delivery_tag", "scope", "settle_closes")

    def __init__(self, scope: consume_scope, delivery_tag: Any, settle_closes: bool) -> None:
        self.scope = scope
        self.delivery_tag = delivery_tag
        self.settle_closes = settle_closes
        self.context = otel_context.get_current()


def _hold(channel: Any, queue: Any, method: Any, properties: Any, settle_closes: bool) -> None:
    scope = _open(queue, method, properties)
    if scope is None:
        return
    try:
        held = _Held(scope, getattr(method, "delivery_tag", None), settle_closes)
        setattr(channel, _HELD, held)
    except Exception as exc:
        scope.close()
        diagnostics.internal_error("pika.hold", exc)


def _release(channel: Any, settled: Any = None, *, multiple: bool = False) -> None:
    """Close the scope held on ``channel``; for a settle, only if it covers that message."""
    held: _Held | None = getattr(channel, _HELD, None)
    if held is None:
        return
    if settled is not None:
        if not held.settle_closes:
            return
        tag = held.delivery_tag
        covered = (
            settled == tag
            or (settled == 0 and multiple)
            or (multiple and type(tag) is int and type(settled) is int and tag <= settled)
        )
        if not covered or otel_context.get_current() is not held.context:
            return
    try:
        setattr(channel, _HELD, None)
        held.scope.close()
    except Exception as exc:
        diagnostics.internal_error("pika.release", exc)


def _traced_consume(channel: Any, queue: Any, messages: Iterator[Any]) -> Iterator[Any]:
    try:
        while True:
            _release(channel)
            try:
                item = next(messages)
            except StopIteration:
                return
            method = item[0] if type(item) is tuple and item else None
            if method is not None:
                _hold(channel, queue, method, item[1], False)
            yield item
    finally:
        _release(channel)
        close = getattr(messages, "close", None)
        if close is not None:
            close()


def _wrap_consume(original: Callable[..., Any]) -> Callable[..., Any]:
    def consume(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        return _traced_consume(self, queue, original(self, queue, *args, **kwargs))

    return consume


def _wrap_blocking_basic_get(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_get(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        _release(self)
        result = original(self, queue, *args, **kwargs)
        try:
            if result[0] is not None:
                _hold(self, queue, result[0], result[1], True)
        except Exception as exc:
            diagnostics.internal_error("pika.basic_get", exc)
        return result

    return basic_get


def _wrap_settle(original: Callable[..., Any]) -> Callable[..., Any]:
    def settle(self: Any, delivery_tag: Any = 0, *args: Any, **kwargs: Any) -> Any:
        try:
            result = original(self, delivery_tag, *args, **kwargs)
        finally:
            if getattr(self, _HELD, None) is not None:
                multiple = bool(kwargs.get("multiple", args[0] if args else False))
                if original.__name__ == "basic_reject":
                    multiple = False
                _release(self, delivery_tag, multiple=multiple)
        return result

    return settle


def _wrap_release_first(original: Callable[..., Any]) -> Callable[..., Any]:
    def release_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        _release(self)
        return original(self, *args, **kwargs)

    return release_first


# ------------------------------------------------------------------------ instrument ---

def _targets(
    per_channel: bool = False,
) -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    from pika.adapters.blocking_connection import (  # type: ignore[import-untyped, unused-ignore]
        BlockingChannel,
    )
    from pika.channel import Channel  # type: ignore[import-untyped]

    # Globally, Channel.basic_publish covers BlockingChannel too (it publishes through its
    # Channel); one BlockingChannel alone needs its own method wrapped.
    extra = [(BlockingChannel, "basic_publish", _wrap_basic_publish)] if per_channel else []
    return [
        *extra,
        (Channel, "basic_publish", _wrap_basic_publish),
        (Channel, "basic_consume", _wrap_basic_consume),
        (Channel, "basic_get", _wrap_async_basic_get),
        (BlockingChannel, "basic_consume", _wrap_basic_consume),
        (BlockingChannel, "consume", _wrap_consume),
        (BlockingChannel, "basic_get", _wrap_blocking_basic_get),
        (BlockingChannel, "basic_ack", _wrap_settle),
        (BlockingChannel, "basic_nack", _wrap_settle),
        (BlockingChannel, "basic_reject", _wrap_settle),
        (BlockingChannel, "cancel", _wrap_release_first),
        (BlockingChannel, "close", _wrap_release_first),
    ]


#: OpenTelemetry contrib's instrumentation of the same client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "pika", "opentelemetry.instrumentation.pika",
    "PikaInstrumentor", "pika",
    "opentelemetry-instrumentation-pika",
)


def instrument() -> None:
    """Trace every pika channel: publish, consume callbacks, ``consume()`` and ``basic_get``."""
    take_over(_CONTRIB, is_instrumented)
    for owner, attribute, make_wrapper in _targets():
        _patcher.wrap(owner, attribute, make_wrapper)


def uninstrument() -> None:
    """Undo :func:`instrument`; channels instrumented one by one stay instrumented."""
    _patcher.restore()


def is_instrumented() -> bool:
    """Return whether :func:`instrument` is in force."""
    return _patcher.active


def instrument_channel(channel: Any) -> Any:
    """Trace one channel (``BlockingChannel`` or an asynchronous ``Channel``); return it.

    For users who do not patch pika globally. Safe to combine with :func:`instrument` and
    to call twice: a message still gets one span.
    """
    if getattr(channel, "_hoptrace_pika_channel", False):
        return channel
    for owner, attribute, make_wrapper in _targets(per_channel=True):
        if not isinstance(channel, owner):
            continue
        unbound = original_of(getattr(type(channel), attribute))
        wrapper = make_wrapper(unbound)
        functools.update_wrapper(wrapper, unbound)
        setattr(channel, attribute, wrapper.__get__(channel, type(channel)))
    channel._hoptrace_pika_channel = True
    return channel


class PikaInstrumentor(ClientInstrumentor):
    """hoptrace's pika instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("pika >= 1.3, < 2",)

    def _instrument(self, **kwargs: Any) -> None:
        instrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
