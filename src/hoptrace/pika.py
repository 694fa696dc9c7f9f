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
  or ``consume`` on the channel, or the channel's close. With ``hold_consume_scope=False``
  neither ``consume()`` nor ``basic_get`` holds a scope (see ``docs/rabbitmq.md``);
* asynchronous ``Channel.basic_get`` callbacks: for the callback's run.

A message delivered again (``basic_nack``/``basic_reject`` with requeue, a consumer that died
before acking, or a dead-letter exchange) links to the span of its earlier delivery when that
delivery was processed in this process; see ``docs/rabbitmq.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar, cast

from . import _amqp, _client
from .core import diagnostics, held, semconv
from .core.hop import consume_scope
from .core.instrumentor import Contrib, take_over
from .core.patching import Patcher, original_of

__all__ = [
    "PikaInstrumentor",
    "instrument",
    "instrument_channel",
    "is_instrumented",
    "processing",
    "traced_publish",
    "uninstrument",
]

_patcher: Final = Patcher("hoptrace.pika")
#: Contrib's instrumentation of this client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "pika", "opentelemetry.instrumentation.pika",
    "PikaInstrumentor", "pika", "opentelemetry-instrumentation-pika",
)

F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------- publish ---


def _copy_properties(properties: Any, headers: Any) -> Any:
    """Return a new BasicProperties equal to ``properties`` but with ``headers``."""
    if properties is None:
        from pika.spec import BasicProperties  # type: ignore[import-untyped]

        return BasicProperties(headers=headers)
    new = object.__new__(type(properties))
    fields = properties.__dict__.copy()  # (cheaper than filling the new object's own)
    fields["headers"] = headers
    new.__dict__ = fields
    return new


def _send(
    carrier: Any, properties: Any, original: Callable[..., Any], channel: Any, exchange: Any,
    routing_key: Any, body: Any, mandatory: Any,
) -> Any:
    """Publish through ``original``, with the properties copied if there are headers to send."""
    if carrier is not None:
        properties = _copy_properties(properties, carrier)
    return original(channel, exchange, routing_key, body, properties, mandatory)


def _traced_call(
    exchange: Any, routing_key: Any, properties: Any, call: Callable[[Any], Any],
    headers_only: bool = False,
) -> Any:
    """Run ``call(new_properties)`` inside a ``send`` span; the one publish path of this module."""
    def send(carrier: Any) -> Any:
        return call(properties if carrier is None else _copy_properties(properties, carrier))

    return _amqp.publish(
        send, getattr(properties, "headers", None), semconv.SYSTEM_RABBITMQ, exchange=exchange,
        routing_key=routing_key, message_id=getattr(properties, "message_id", None),
        correlation_id=getattr(properties, "correlation_id", None), headers_only=headers_only,
        label="pika.basic_publish",
    )


def _wrap_basic_publish(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_publish(
        self: Any,
        exchange: str,
        routing_key: str,
        body: Any,
        properties: Any = None,
        mandatory: bool = False,
    ) -> Any:
        if _amqp.headers_only_now():  # (the common case: no closure, no span machinery)
            return _amqp.publish_headers(
                _send, getattr(properties, "headers", None), "pika.basic_publish",
                properties, original, self, exchange, routing_key, body, mandatory,
            )
        headers = getattr(properties, "headers", None)
        if headers is None or (type(headers) is dict and not headers):
            # No headers of the caller's: a send span the sampler drops (most messages at a
            # low sampling rate) has its new headers written in one C call (hop.dropped_send,
            # through begin_unrecorded), as kombu's and aio-pika's; its context is not
            # attached, as basic_publish runs no user code (as begin_dropped below).
            attached = _amqp.begin_unrecorded(None, routing_key,
                                              getattr(properties, "message_id", None),
                                              "pika.basic_publish", False)
            if attached is not None:
                carrier, scope, guard = attached
                try:
                    result = _send(carrier, properties, original, self, exchange, routing_key,
                                   body, mandatory)
                except BaseException as exc:
                    _amqp._finish(scope, guard, exc)
                    raise
                _amqp._finish(scope, guard)
                return result
        # A send span the sampler drops (most messages at a low sampling rate): its headers
        # without the scope.
        begun = _amqp.begin_dropped(headers, routing_key,
                                    getattr(properties, "message_id", None))
        if begun is not None:
            carrier, span, guard = begun
            try:
                result = _send(carrier, properties, original, self, exchange, routing_key, body,
                               mandatory)
            except BaseException as exc:
                _amqp.end_dropped(span, guard, exc)
                raise
            _amqp.end_dropped(span, guard)
            return result
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
    return _amqp.open_from(method, properties, queue, semconv.SYSTEM_RABBITMQ, "pika.consume")


def processing(method: Any, properties: Any, queue: str | None = None) -> _amqp.Processing:
    """Return the process scope of one delivery as a ``with`` block (exact boundaries).

    For ``consume()`` / ``basic_get`` loops that want the scope to end with the block rather
    than at the next call, typically with ``hold_consume_scope=False``.
    """
    return _amqp.Processing(method, properties, queue, semconv.SYSTEM_RABBITMQ)


def _wrap_callback(queue: Any, callback: Any) -> Any:
    """Return ``callback`` run inside a process scope per message (wrapped at most once)."""
    if not _amqp.wrappable(callback):
        return callback

    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        return _amqp.run_in(
            _amqp.open_from(method, properties, queue, semconv.SYSTEM_RABBITMQ, "pika.consume"),
            callback, channel, method, properties, body,
        )

    return _amqp.wrapped(on_message, callback)


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


def _hold(channel: Any, queue: Any, method: Any, properties: Any) -> None:
    held.hold(channel, _open(queue, method, properties), getattr(method, "delivery_tag", None),
              opened=True)


def _traced_consume(channel: Any, queue: Any, messages: Iterator[Any]) -> Iterator[Any]:
    def scope_of(item: Any) -> consume_scope | None:
        method = item[0] if type(item) is tuple and item else None
        return _open(queue, method, item[1]) if method is not None else None

    return held.held_items(channel, messages, scope_of, opened=True)


def _wrap_consume(original: Callable[..., Any]) -> Callable[..., Any]:
    def consume(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        return _traced_consume(self, queue, original(self, queue, *args, **kwargs))

    return consume


def _wrap_blocking_basic_get(original: Callable[..., Any]) -> Callable[..., Any]:
    def basic_get(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        held.release(self)
        result = original(self, queue, *args, **kwargs)
        try:
            if result[0] is not None and held.enabled():
                _hold(self, queue, result[0], result[1])
        except Exception as exc:
            diagnostics.internal_error("pika.basic_get", exc)
        return result

    return basic_get


def _settled(self: Any, delivery_tag: Any = 0, *args: Any, **kwargs: Any) -> tuple[Any, Any, bool]:
    return self, delivery_tag, bool(kwargs.get("multiple", args[0] if args else False))


def _rejected(self: Any, delivery_tag: Any = 0, *args: Any, **kwargs: Any) -> tuple[Any, Any, bool]:
    return self, delivery_tag, False


def _wrap_settle(original: Callable[..., Any]) -> Callable[..., Any]:
    return held.settling(original, _rejected if original.__name__ == "basic_reject" else _settled)


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
        (BlockingChannel, "cancel", held.releasing),
        (BlockingChannel, "close", held.releasing),
    ]

def instrument() -> None:
    """Trace every pika channel: publish, consume callbacks, ``consume()`` and ``basic_get``."""
    take_over(_CONTRIB, is_instrumented)
    for owner, attribute, make_wrapper in _targets():
        _patcher.wrap(owner, attribute, make_wrapper)


uninstrument, is_instrumented = _client.switches(_patcher, "pika")


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


class PikaInstrumentor(_client.Instrumentor):
    """hoptrace's pika instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("pika >= 1.3, < 2",)
