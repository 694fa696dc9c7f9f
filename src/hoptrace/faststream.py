"""hoptrace for FastStream: one middleware for its Kafka, RabbitMQ and Redis brokers.

::

    from faststream.kafka import KafkaBroker
    from hoptrace.faststream import HoptraceMiddleware

    broker = KafkaBroker("localhost:9092", middlewares=[HoptraceMiddleware()])

The same middleware serves ``KafkaBroker`` (aiokafka), ``faststream.confluent.KafkaBroker``,
``RabbitBroker`` and ``RedisBroker``:

* **consume** — each message's ``process {destination}`` scope is opened by the middleware,
  in the task that runs the handler, whatever the subscriber's concurrency (``max_workers``).
  The handler, its log lines and its publishes (returned values included) run in the
  message's trace and transaction. Kafka records give the queue wait from their timestamp.
* **publish** — ``broker.publish``, publishers and ``publish_batch``: one ``send
  {destination}`` span per publish; the context goes into the command's headers, which
  FastStream copies onto every record of a batch.
* **batch subscribers** (``batch=True``) — the handler runs in one ``process`` scope that
  links to every record and has a transaction of its own; :func:`record_scope` /
  :func:`iterate` restore each record's trace and transaction for per-record work.
* **FastStream's telemetry middleware** (``KafkaTelemetryMiddleware`` …), in either order:
  its process span is the hop's only process span. hoptrace adds its attributes and the
  transaction to that span and keeps the transaction and baggage in the context it attaches;
  for publishes it writes its headers with FastStream's ``publish`` span current.
* **client-level instrumentation** (``hoptrace.aiokafka``, ``hoptrace.aio_pika``) steps aside:
  the middleware marks the clients it handles, and a publish whose headers already carry the
  active span is passed through.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from faststream import BaseMiddleware
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from . import _amqp, _client, _kafka
from ._config import get_settings
from .core import diagnostics, held, semconv
from .core.context import (
    BAGGAGE_KEY,
    HOP_KEY,
    SPAN_KEY,
    attach,
    bind_transaction,
    current_transaction_id,
    generate_transaction_id,
    get_current,
    restore,
)
from .core.hop import HOP_SPAN_KEY, HopInfo, consume_scope, current_hop, produce_scope
from .core.patching import Patcher
from .core.propagation import carried_transaction_id, read, render

__all__ = ["HoptraceMiddleware", "iterate", "record_scope"]

#: Set on the client objects (consumers, FastStream subscribers) whose messages the middleware
#: traces; client-level integrations check it and step aside.
CLAIM_ATTRIBUTE: Final = _client.CLAIM_ATTRIBUTE
_TELEMETRY_SCOPE: Final = "opentelemetry.instrumentation.faststream"

_Telemetry: Any
try:  # FastStream's telemetry middleware needs opentelemetry-semantic-conventions
    from faststream.opentelemetry.middleware import BaseTelemetryMiddleware as _Telemetry
except ImportError:  # pragma: no cover
    _Telemetry = None


def _claim(client: object) -> None:
    _client.claim(client, "faststream")


def _runs_hoptrace(subscriber: Any) -> bool:
    return any(isinstance(m, HoptraceMiddleware) for m in subscriber._broker_middlewares)


#: hoptrace.aio_pika leaves a consume callback carrying this mark unwrapped: "traced by
#: hoptrace already".
_AIO_PIKA_TRACED: Final = _amqp.CALLBACK_MARK


def _claim_subscriber(subscriber: Any) -> None:
    """Claim a subscriber of a broker that runs hoptrace's middleware, before it subscribes.

    A RabbitMQ subscriber hands aio-pika its bound ``consume`` method as the callback; it
    gets a marked one of its own, which ``hoptrace.aio_pika`` leaves unwrapped.
    """
    if not _runs_hoptrace(subscriber):
        return
    _claim(subscriber)
    if type(subscriber).__module__.startswith("faststream.rabbit") \
            and "consume" not in vars(subscriber):
        callback = functools.partial(type(subscriber).consume, subscriber)
        setattr(callback, _AIO_PIKA_TRACED, True)
        subscriber.consume = callback


def _claim_consumers(subscriber: Any) -> None:
    """Claim a started subscriber's consumers, before its consume loop fetches anything."""
    if not _runs_hoptrace(subscriber):
        return
    consumers = [getattr(subscriber, "consumer", None),
                 *(getattr(subscriber, "consumer_subgroup", None) or ())]
    for consumer in consumers:
        _claim(consumer)
        _claim(getattr(consumer, "consumer", None))  # confluent: FastStream's wrapper's client


#: Claims each subscriber's clients as it starts.
_patcher = Patcher("hoptrace.faststream")


def _claim_at_start() -> None:
    """Patch ``SubscriberUsecase.start`` and ``_post_start`` (idempotent).

    Every subscriber's ``start`` calls the base ``start`` first, before it subscribes, and
    ``_post_start`` once its clients exist, before its consume loop runs. Subscribers of
    brokers without hoptrace's middleware are left as they are.
    """
    from faststream._internal.endpoint.subscriber.usecase import SubscriberUsecase

    def wrap_start(original: Callable[..., Any]) -> Callable[..., Any]:
        async def start(self: Any) -> Any:
            result = await original(self)
            try:
                _claim_subscriber(self)
            except Exception as exc:
                diagnostics.internal_error("faststream.claim", exc)
            return result

        return start

    def wrap_post_start(original: Callable[..., Any]) -> Callable[..., Any]:
        def _post_start(self: Any) -> Any:
            try:
                _claim_consumers(self)
            except Exception as exc:
                diagnostics.internal_error("faststream.claim", exc)
            return original(self)

        return _post_start

    _patcher.wrap(SubscriberUsecase, "start", wrap_start)
    _patcher.wrap(SubscriberUsecase, "_post_start", wrap_post_start)


# ------------------------------------------------------------- incoming side ---


class _Delivery:
    """One consumed message as core needs it, for any of FastStream's brokers."""

    __slots__ = ("attributes", "carrier", "destination", "message_id", "scope", "sent_ns",
                 "system")

    def __init__(self, system: str, destination: str, message_id: str | None, carrier: object,
                 attributes: Callable[[], dict[str, AttributeValue]], sent_ns: int | None,
                 scope: Callable[[], Any]) -> None:
        self.system = system
        self.destination = destination
        self.message_id = message_id
        self.carrier = carrier
        self.attributes = attributes  # called only when a span records them
        self.sent_ns = sent_ns
        self.scope = scope  # returns the message's unopened process scope


class _OpenedBy:
    """An unopened scope whose ``open()`` calls a function that opens one (an AMQP delivery)."""

    __slots__ = ("_opener", "_scope")

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._scope: Any = None

    def open(self) -> _OpenedBy:
        """Open the scope."""
        self._scope = self._opener()
        return self

    def close(self, exc: BaseException | None = None) -> None:
        """Close the scope (recording ``exc`` on its span)."""
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.close(exc)

    def __enter__(self) -> _OpenedBy:
        return self.open()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(exc)

    async def __aenter__(self) -> _OpenedBy:
        return self.open()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(exc)


def _group(consumer: object, handler: object = None) -> str | None:
    group = getattr(handler, "group_id", None) or getattr(consumer, "_group_id", None)
    if group is None:
        config = getattr(consumer, "config", None)
        group = config.get("group.id") if isinstance(config, dict) else None
    return group if isinstance(group, str) else None


def _kafka_delivery(record: Any, group: str | None) -> _Delivery:
    if callable(getattr(record, "topic", None)):  # confluent_kafka.Message
        ts_type, ts = record.timestamp()
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        key, headers, created = record.key(), record.headers(), ts if ts_type else None
    else:  # aiokafka ConsumerRecord
        topic, partition, offset = record.topic, record.partition, record.offset
        key, headers = record.key, record.headers
        created = record.timestamp if record.timestamp_type in (0, 1) else None
    return _Delivery(
        _kafka.SYSTEM, topic, _kafka.message_id(topic, partition, offset), headers,
        functools.partial(_kafka.record_attributes, partition, offset, key, group),
        created * 1_000_000 if created and created > 0 else None,
        functools.partial(_kafka.record_scope, topic, partition, offset, key, headers, created,
                          group),
    )


def _rabbit_delivery(message: Any, queue: object) -> _Delivery:
    headers, exchange, key = message.headers, message.exchange, message.routing_key
    return _Delivery(
        semconv.SYSTEM_RABBITMQ,
        semconv.rabbitmq_destination(exchange if type(exchange) is str else None,
                                     key if type(key) is str else "",
                                     queue if type(queue) is str else None),
        _amqp.message_id_text(message.message_id), headers,
        functools.partial(_amqp.delivery_attributes, key, message.delivery_tag,
                          message.correlation_id),
        _amqp.broker_sent_ns(message.timestamp),
        functools.partial(_OpenedBy, functools.partial(
            _amqp.open_delivery, headers, semconv.SYSTEM_RABBITMQ, exchange=exchange,
            routing_key=key, queue=queue, message_id=message.message_id,
            delivery_tag=message.delivery_tag, correlation_id=message.correlation_id,
            timestamp=message.timestamp, redelivered=message.redelivered,
        )),
    )


def _redis_delivery(raw: dict[str, Any], headers: object, message_id: object,
                    index: int = 0) -> _Delivery:
    channel = raw.get("channel")
    destination = channel.decode() if isinstance(channel, bytes) else str(channel)
    entry_ids = raw.get("message_ids") or ()
    sent_ns = None
    if index < len(entry_ids):  # a stream entry ID is "<ms>-<seq>": the broker's timestamp
        entry = entry_ids[index]
        entry = entry.decode() if isinstance(entry, bytes) else str(entry)
        message_id = entry
        try:
            sent_ns = int(entry.split("-", 1)[0]) * 1_000_000
        except ValueError:
            pass
    text_id = message_id if isinstance(message_id, str) else None
    return _Delivery(
        semconv.SYSTEM_REDIS, destination, text_id, headers, dict, sent_ns,
        functools.partial(consume_scope, headers, destination, semconv.SYSTEM_REDIS,
                          message_id=text_id, sent_ns=sent_ns),
    )


def _deliveries(message: Any, handler: object = None) -> tuple[list[_Delivery], bool]:
    """Map a FastStream message onto core: its deliveries, and whether it is a batch."""
    raw = message.raw_message
    if isinstance(raw, dict):  # Redis: one entry, or a batch of them
        batch = message.batch_headers
        if raw.get("type") in ("blist", "bstream"):
            return [_redis_delivery(raw, h, h.get("message_id") if isinstance(h, dict) else None,
                                    i) for i, h in enumerate(batch)], True
        return [_redis_delivery(raw, message.headers, message.message_id)], False
    if isinstance(raw, (tuple, list)):  # a Kafka batch
        group = _group(getattr(message, "consumer", None), handler)
        return [_kafka_delivery(record, group) for record in raw], True
    if hasattr(raw, "delivery_tag"):  # aio-pika IncomingMessage
        queue = getattr(getattr(handler, "queue", None), "name", None)
        return [_rabbit_delivery(raw, queue)], False
    if hasattr(raw, "timestamp_type") or callable(getattr(raw, "topic", None)):
        return [_kafka_delivery(raw, _group(getattr(message, "consumer", None), handler))], False
    return [_generic_delivery(message)], False


def _generic_delivery(message: Any) -> _Delivery:
    """A broker hoptrace does not map (NATS, MQTT): the headers, subject or topic, message ID."""
    raw = message.raw_message
    system = type(raw).__module__.split(".", 1)[0] or "faststream"
    where = getattr(raw, "subject", None) or getattr(raw, "topic", None)
    destination = str(where) if where is not None else "faststream"
    text_id = message.message_id if isinstance(message.message_id, str) else None
    return _Delivery(
        system, destination, text_id, message.headers, dict, None,
        functools.partial(consume_scope, message.headers, destination, system,
                          message_id=text_id),
    )


def record_scope(message: Any, index: int | None = None) -> Any:
    """Return the ``process`` scope of one record (``with`` / ``async with``).

    ``message`` is the FastStream message of a batch subscriber with the record's ``index``,
    or a raw Kafka record (aiokafka ``ConsumerRecord`` / confluent ``Message``), or a single
    message (``subscriber.get_one()``, ``async for msg in subscriber``). The scope restores
    that record's trace, transaction ID and baggage, never the batch's.
    """
    if not hasattr(message, "raw_message"):
        return _kafka_delivery(message, None).scope()
    deliveries, _ = _deliveries(message)
    return deliveries[index or 0].scope()


def iterate(message: Any, items: Iterable[Any] | None = None) -> Iterator[Any]:
    """Yield each item of a batch (default: the raw records) inside its record's scope.

    ``items`` are what the handler got, in the batch's order (its decoded bodies, say).
    """
    records = items if items is not None else message.raw_message
    indexed = held.scoped(enumerate(records), lambda pair: record_scope(message, pair[0]))
    try:
        for _, item in indexed:
            yield item
    finally:
        indexed.close()


class _Adopted:
    """FastStream's own process span, made the message's hoptrace scope (no second span).

    The span stays FastStream's to end; hoptrace adds its attributes to it and attaches a
    context with the message's transaction ID, baggage and hop, the span current.
    """

    __slots__ = ("_token", "span_context")

    def __init__(self, span: Span, deliveries: list[_Delivery], batch: bool) -> None:
        self._token: object | None = None
        settings = get_settings()
        ambient = get_current()
        first = deliveries[0]
        attrs: dict[str, AttributeValue] = {}
        tx: str | None = None
        baggage: object = ambient.get(BAGGAGE_KEY)
        if batch:
            attrs[semconv.MESSAGING_BATCH_MESSAGE_COUNT] = len(deliveries)
            _link_records(span, deliveries, settings)
        else:
            tx, baggage = _single_attributes(first, settings, attrs, baggage)
        if tx is None:
            tx = generate_transaction_id()
        attrs[semconv.TRANSACTION_ID] = tx
        if span.is_recording():
            span.set_attributes(attrs)
        hop = HopInfo(first.system, first.destination, None if batch else first.message_id)
        values: dict[str, object] = {**ambient, SPAN_KEY: span, HOP_KEY: hop,
                                     HOP_SPAN_KEY: span}
        bind_transaction(values, tx, baggage, settings)
        self.span_context = span.get_span_context()
        self._token = attach(Context(values))

    def close(self, exc: BaseException | None = None) -> None:
        token, self._token = self._token, None
        if token is not None:
            restore(token)


def _link_records(span: Span, deliveries: list[_Delivery], settings: Any) -> None:
    """Link a batch's adopted span to every record's producer (once each)."""
    if not span.is_recording() or not hasattr(span, "add_link"):
        return
    linked = {(link.context.trace_id, link.context.span_id)
              for link in getattr(span, "links", None) or ()}
    for sc, message_id in _record_contexts(deliveries, settings):
        if (sc.trace_id, sc.span_id) not in linked:
            span.add_link(sc, {semconv.MESSAGING_MESSAGE_ID: message_id}
                          if message_id else None)


def _single_attributes(
    first: _Delivery, settings: Any, attrs: dict[str, AttributeValue], baggage: object
) -> tuple[str | None, object]:
    """Fill ``attrs`` for one adopted message; return its transaction ID and baggage."""
    tx: str | None = None
    incoming = read(first.carrier, settings)
    if settings.trust_incoming:
        tx = incoming.transaction_id
        if incoming.baggage is not None:
            baggage = incoming.baggage
    elif incoming.transaction_id is not None:
        attrs[semconv.TRANSACTION_UPSTREAM_ID] = incoming.transaction_id
    if incoming.rejected:
        attrs[semconv.CONTEXT_REJECTED] = list(incoming.rejected)
    attrs.update(first.attributes())
    if first.message_id is not None and first.system != _kafka.SYSTEM:
        # (Kafka has no message ID: its ``topic-p@offset`` repeats the partition and offset.)
        attrs[semconv.MESSAGING_MESSAGE_ID] = first.message_id
    sent = incoming.sent_ns if incoming.sent_ns is not None else first.sent_ns
    if sent is not None:
        wait = (time.time_ns() - sent) / 1e6
        if wait < 0:
            wait = 0.0
            attrs[semconv.CLOCK_SKEW] = True
            diagnostics.count("clock_skew")
        attrs[semconv.QUEUE_WAIT_MS] = wait
    return tx, baggage


def _record_contexts(deliveries: list[_Delivery], settings: Any) -> list[tuple[Any, Any]]:
    found = []
    for delivery in deliveries:
        sc = read(delivery.carrier, settings).span_context
        if sc is not None:
            found.append((sc, delivery.message_id))
    return found


def _open_batch(deliveries: list[_Delivery], group: str | None) -> consume_scope:
    """The scope a batch handler runs in: ``process``, a new trace and transaction, one link
    per record (``messaging.message.id`` on each)."""
    settings = get_settings()
    links = [Link(sc, {semconv.MESSAGING_MESSAGE_ID: mid} if mid else None)
             for sc, mid in _record_contexts(deliveries, settings)]
    first = deliveries[0]
    attrs: dict[str, AttributeValue] = {semconv.MESSAGING_BATCH_MESSAGE_COUNT: len(deliveries)}
    if group:
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
    return consume_scope(None, first.destination, first.system, links=links,
                         attributes=attrs).open()


def _same_message(delivery: _Delivery) -> bool:
    """Whether a client-level scope for this very message is already open in this task."""
    hop = current_hop()
    if hop is None or hop.system != delivery.system or hop.destination != delivery.destination:
        return False
    if delivery.message_id is not None or hop.message_id is not None:
        return hop.message_id == delivery.message_id
    carried = carried_transaction_id(delivery.carrier)
    return carried is not None and carried == current_transaction_id()


# ------------------------------------------------------------- outgoing side ---


def _publish_target(cmd: Any) -> tuple[str, str, dict[str, AttributeValue], str | None, bool]:
    """Return (system, destination, attributes, message id, write send time) for a command."""
    module = type(cmd).__module__
    attrs: dict[str, AttributeValue] = {}
    count = len(cmd.batch_bodies) if hasattr(cmd, "batch_bodies") else 1
    if count > 1:
        attrs[semconv.MESSAGING_BATCH_MESSAGE_COUNT] = count
    if module.startswith(("faststream.kafka", "faststream.confluent")):
        text = _kafka.key_text(getattr(cmd, "key", None))
        if text is not None:
            attrs[semconv.KAFKA_MESSAGE_KEY] = text
        if getattr(cmd, "partition", None) is not None:
            attrs[semconv.KAFKA_PARTITION] = str(cmd.partition)
        # Kafka stamps each record (CreateTime): a send-time header only for a set timestamp.
        return (_kafka.SYSTEM, cmd.destination, attrs, None,
                getattr(cmd, "timestamp_ms", None) is not None)
    if module.startswith("faststream.rabbit"):
        routing_key = cmd.destination if type(cmd.destination) is str else ""
        exchange = getattr(getattr(cmd, "exchange", None), "name", None)
        if routing_key:
            attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
        if type(cmd.correlation_id) is str:
            attrs[semconv.MESSAGING_CONVERSATION_ID] = cmd.correlation_id
        options = getattr(cmd, "message_options", None) or {}
        return (semconv.SYSTEM_RABBITMQ,
                semconv.rabbitmq_destination(exchange or None, routing_key), attrs,
                _amqp.message_id_text(options.get("message_id")), True)
    system = semconv.SYSTEM_REDIS if module.startswith("faststream.redis") else "faststream"
    return system, str(cmd.destination), attrs, None, True


def _telemetry_span(kind: SpanKind) -> Span | None:
    """FastStream's telemetry span of this kind, if it is the current span."""
    span = trace.get_current_span()
    scope = getattr(span, "instrumentation_scope", None)
    if getattr(scope, "name", None) == _TELEMETRY_SCOPE and getattr(span, "kind", None) is kind:
        return span
    return None


def _set_result(scope: Any, result: Any) -> None:
    """Add a Kafka ack's partition and offset (aiokafka RecordMetadata, confluent Message)."""
    partition: Any = getattr(result, "partition", None)
    offset: Any = getattr(result, "offset", None)
    if callable(partition) and callable(offset):
        partition, offset = partition(), offset()
    if type(partition) is int and partition >= 0:
        scope.set_attribute(semconv.KAFKA_PARTITION, str(partition))
    if type(offset) is int and offset >= 0:
        scope.set_attribute(semconv.KAFKA_OFFSET, offset)


class _AdoptedSend:
    """FastStream's ``publish`` span used as the send span: hoptrace writes its headers only."""

    __slots__ = ("_token",)

    def __init__(self, span: Span, headers: dict[str, Any], sent_time: bool) -> None:
        settings = get_settings()
        ambient = get_current()
        tx = current_transaction_id(ambient) or carried_transaction_id(headers) \
            or generate_transaction_id()
        values: dict[str, object] = dict(ambient)
        bind_transaction(values, tx, ambient.get(BAGGAGE_KEY), settings)
        ctx = Context(values)
        render(ctx, settings, headers, sent_time)
        if span.is_recording():
            span.set_attribute(semconv.TRANSACTION_ID, tx)
        self._token = attach(ctx)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Leave FastStream's span as it is."""

    def close(self, exc: BaseException | None = None) -> None:
        restore(self._token)


# -------------------------------------------------------- middleware order ---


def _inside_telemetry(call_next: Any, ours: Callable[..., Any]) -> Any:
    """Rebuild FastStream's call chain so ``ours`` runs just inside its telemetry middleware.

    FastStream composes middlewares as nested ``functools.partial`` objects. Its telemetry
    middleware builds the handler's context from ``traceparent`` alone, so hoptrace must run
    inside it to keep the transaction; with ``HoptraceMiddleware`` listed first it would run
    outside. Returns None when no telemetry middleware follows (nothing to reorder).
    """
    if _Telemetry is None:
        return None
    chain: list[Any] = []
    link = call_next
    while type(link) is functools.partial and len(link.args) == 1 and not link.keywords:
        if isinstance(getattr(link.func, "__self__", None), _Telemetry):
            rebuilt: Any = functools.partial(link.func, functools.partial(ours, link.args[0]))
            for func in reversed(chain):
                rebuilt = functools.partial(func, rebuilt)
            return rebuilt
        chain.append(link.func)
        link = link.args[0]
    return None


def _innermost(call_next: Any) -> Any:
    while type(call_next) is functools.partial and call_next.args:
        call_next = call_next.args[0]
    return call_next


# -------------------------------------------------------------- middleware ---


class _MessageMiddleware(BaseMiddleware):
    """hoptrace's middleware for one message (consume) or one publish."""

    __slots__ = ("_consumed",)

    def __init__(self, msg: Any, /, *, context: Any) -> None:
        super().__init__(msg, context=context)
        self._consumed: Context | None = None  # the context the handler ran in

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        """Run the handler inside the message's scope."""
        reordered = _inside_telemetry(call_next, self._consume)
        if reordered is not None:
            return await reordered(msg)
        return await self._consume(call_next, msg)

    async def _consume(self, call_next: Any, msg: Any) -> Any:
        scope: Any = None
        try:
            if getattr(_innermost(call_next), "__name__", "") != "return_input":
                scope = self._open(msg)  # (get_one()/async for hand no handler: record_scope)
        except Exception as exc:
            diagnostics.internal_error("faststream.consume", exc)
        try:
            result = await call_next(msg)
        except BaseException as exc:
            if scope is not None:
                scope.close(exc)
            raise
        if scope is not None:
            scope.close()
        return result

    def _open(self, msg: Any) -> Any:
        handler = self.context.get_local("handler_")
        _claim(handler)
        consumer = getattr(msg, "consumer", None)
        _claim(consumer)
        _claim(getattr(consumer, "consumer", None))  # confluent: FastStream's wrapper's client
        if not get_settings().enabled:
            return None
        deliveries, batch = _deliveries(msg, handler)
        if not deliveries:
            return None
        telemetry = self.context.get_local("span")
        scope: Any
        if telemetry is not None and telemetry is trace.get_current_span():
            scope = _Adopted(telemetry, deliveries, batch)
        elif batch:
            scope = _open_batch(deliveries, _group(consumer, handler)
                                if deliveries[0].system == _kafka.SYSTEM else None)
        elif _same_message(deliveries[0]):
            scope = None  # the client-level integration opened it here already
        else:
            scope = deliveries[0].scope().open()
        self._consumed = get_current()
        return scope

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        """Publish with hoptrace's headers inside a ``send`` span."""
        reordered = _inside_telemetry(call_next, self._publish)
        if reordered is not None:
            return await reordered(cmd)
        return await self._publish(call_next, cmd)

    async def _publish(self, call_next: Any, cmd: Any) -> Any:
        token: object | None = None
        scope: Any = None
        try:
            consumed = self._consumed
            if consumed is not None and current_transaction_id() is None:
                # A handler's returned value is published after its scope closed.
                current = trace.get_current_span()
                token = attach(trace.set_span_in_context(current, consumed)
                               if _telemetry_span(SpanKind.PRODUCER) is current else consumed)
            if get_settings().enabled and isinstance(cmd.headers, dict):
                system, destination, attrs, message_id, sent_time = _publish_target(cmd)
                telemetry = _telemetry_span(SpanKind.PRODUCER)
                if telemetry is not None:
                    scope = _AdoptedSend(telemetry, cmd.headers, sent_time)
                else:
                    scope = produce_scope(cmd.headers, destination, system,
                                          message_id=message_id, attributes=attrs,
                                          sent_time=sent_time).open()
        except Exception as exc:
            diagnostics.internal_error("faststream.publish", exc)
        try:
            try:
                result = await call_next(cmd)
            except BaseException as exc:
                if scope is not None:
                    scope.close(exc)
                raise
            if scope is not None:
                try:
                    _set_result(scope, result)
                except Exception as exc:
                    diagnostics.internal_error("faststream.publish", exc)
                scope.close()
            return result
        finally:
            if token is not None:
                restore(token)


class HoptraceMiddleware:
    """FastStream broker middleware: every message's handler runs in its trace and transaction.

    Pass it in ``middlewares=[...]`` of a ``KafkaBroker``, confluent ``KafkaBroker``,
    ``RabbitBroker`` or ``RedisBroker`` (or ``broker.add_middleware(...)``), before or after
    FastStream's own telemetry middleware.
    """

    __slots__ = ()

    def __init__(self) -> None:
        try:
            _claim_at_start()
        except Exception as exc:  # another FastStream layout: clients are claimed at first sight
            diagnostics.internal_error("faststream.claim", exc)

    def __call__(self, msg: Any, /, *, context: Any) -> _MessageMiddleware:
        """Return the middleware for one message (FastStream calls this per message)."""
        return _MessageMiddleware(msg, context=context)
