"""AMQP pieces shared by the pika, kombu and aio-pika integrations.

* :func:`delivery_attributes` — the RabbitMQ attributes of one delivery;
* :func:`broker_sent_ns` — the ``timestamp`` property as nanoseconds, for queue wait;
* :class:`DeliveryMemory` — a bounded, in-process record of the span each message was last
  processed in, so a redelivery or a dead-lettered copy can link to the earlier attempt.

A message's identity is the pair (``traceparent``, send-time header) hoptrace wrote at publish
time, or the AMQP ``message_id`` for messages published without hoptrace. The broker keeps the
headers unchanged on requeue and copies them when it dead-letters a message, so the identity
survives both paths; the consumer never has to write to the broker's copy.
"""

from __future__ import annotations

import datetime
import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from ._config import get_settings
from .core import diagnostics, semconv
from .core.hop import consume_scope, spans_active

#: How many earlier deliveries :data:`memory` keeps; the oldest is forgotten first.
MEMORY_SIZE: Final = 10_000

REASON_REDELIVERY: Final = "redelivery"
REASON_DEAD_LETTER: Final = "dead_letter"
_DEATH_HEADER: Final = "x-death"


def delivery_attributes(
    routing_key: object, delivery_tag: object, correlation_id: object
) -> dict[str, Any]:
    """Return the RabbitMQ attributes of one delivery, skipping values that are missing.

    :func:`open_delivery` passes it to the scope as a partial, so it runs only when a span
    records.
    """
    attrs: dict[str, Any] = {}
    if type(routing_key) is str:
        attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
    if type(delivery_tag) is int:
        attrs[semconv.RABBITMQ_DELIVERY_TAG] = delivery_tag
    if correlation_id is not None:
        text = _text(correlation_id)
        if text is not None:
            attrs[semconv.MESSAGING_CONVERSATION_ID] = text
    return attrs


def message_id_text(value: object) -> str | None:
    """Return an AMQP ``message_id`` property as text, or None if it has none usable."""
    return _text(value) if value is not None else None


def _text(value: object) -> str | None:
    if type(value) is str:
        return value if len(value) <= 256 else value[:256]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:256]).decode("utf-8", "replace")
    return None


def broker_sent_ns(timestamp: object) -> int | None:
    """Return the AMQP ``timestamp`` property (seconds, or a datetime) in ns, else None."""
    if type(timestamp) is int and timestamp > 0:
        return timestamp * 1_000_000_000
    if isinstance(timestamp, datetime.datetime):
        try:
            return int(timestamp.timestamp() * 1e9)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def traced_already(headers: object) -> bool:
    """Whether ``headers`` already carry the active span as their parent.

    True when the caller publishes inside its own ``produce_scope`` (or an integration built
    on top of this one did): the publish is then traced already and gets no second span.
    """
    if headers is None or not isinstance(headers, Mapping):
        return False
    try:
        traceparent = headers.get(semconv.TRACEPARENT)
    except Exception:
        return False
    if type(traceparent) is not str or len(traceparent) < 52:
        return False
    context = trace.get_current_span().get_span_context()
    return context.is_valid and traceparent[36:52] == format(context.span_id, "016x")


def message_key(headers: object, message_id: str | None) -> int | None:
    """Return the identity of a message across redeliveries, or None if it has none.

    A hash: the memory lives in one process, and an int key keeps each entry small.
    """
    traceparent = sent = None
    if headers is not None and isinstance(headers, Mapping):
        try:
            traceparent = headers.get(semconv.TRACEPARENT)
            sent = headers.get(get_settings().sent_time_header)
        except Exception:
            traceparent = sent = None
        if type(traceparent) is not str:
            traceparent = None
        if type(sent) is not str:
            sent = None
    if traceparent is None and message_id is None:
        return None
    return hash((traceparent, sent, message_id))


def dead_lettered(headers: object) -> bool:
    """Return whether the broker dead-lettered this message at least once (``x-death``)."""
    if headers is None or not isinstance(headers, Mapping):
        return False
    try:
        return bool(headers.get(_DEATH_HEADER))
    except Exception:
        return False


class DeliveryMemory:
    """A bounded LRU: message identity → the span its last delivery was processed in.

    An entry is an int key and a (trace ID, span ID, flags) tuple, about 250 bytes.
    """

    def __init__(self, size: int = MEMORY_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._seen: OrderedDict[int, tuple[int, int, int]] = OrderedDict()

    def links(
        self, key: int | None, headers: object, redelivered: bool = True
    ) -> list[Link] | None:
        """Return a link to the earlier delivery of the message ``key``, if one is known.

        Only a message the broker flags as redelivered, or one it dead-lettered, is looked
        up; any other delivery is a first attempt.
        """
        if key is None:
            return None
        dead = dead_lettered(headers)
        if not (redelivered or dead):
            return None
        with self._lock:
            earlier = self._seen.get(key)
        if earlier is None:
            return None
        reason = REASON_DEAD_LETTER if dead else REASON_REDELIVERY
        trace_id, span_id, flags = earlier
        context = SpanContext(trace_id, span_id, False, TraceFlags(flags))
        return [Link(context, {semconv.LINK_REASON: reason})]

    def remember(self, key: int | None, span_context: SpanContext | None) -> None:
        """Record that message ``key`` is being processed in ``span_context``."""
        if key is None or span_context is None or not span_context.is_valid:
            return
        entry = (span_context.trace_id, span_context.span_id, int(span_context.trace_flags))
        with self._lock:
            seen = self._seen
            seen[key] = entry
            seen.move_to_end(key)
            if len(seen) > self._size:
                seen.popitem(last=False)

    def forget_all(self) -> None:
        """Forget every recorded delivery."""
        with self._lock:
            self._seen.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


#: The process-wide memory every AMQP integration records deliveries in.
memory: Final = DeliveryMemory()


def open_delivery(
    headers: object,
    system: str,
    *,
    exchange: object,
    routing_key: object,
    queue: object,
    message_id: object,
    delivery_tag: object,
    correlation_id: object,
    timestamp: object,
    redelivered: object,
) -> consume_scope | None:
    """Open the process scope of one delivery, linked to its earlier delivery if known.

    Takes the delivery's raw AMQP fields as the client library gives them; anything missing
    or of an unexpected type is left out. ``redelivered`` is the broker's flag (anything but
    ``False`` counts as possibly redelivered). Returns None only if hoptrace itself failed
    (counted and logged); never raises.
    """
    try:
        text_id = message_id_text(message_id)
        # Deliveries are remembered only to link spans: none without a span to link.
        recording = spans_active()
        key = message_key(headers, text_id) if recording else None
        scope = consume_scope(
            headers,
            semconv.rabbitmq_destination(
                exchange if type(exchange) is str else None,
                routing_key if type(routing_key) is str else "",
                queue if type(queue) is str else None,
            ),
            system,
            message_id=text_id,
            attributes=functools.partial(
                delivery_attributes, routing_key, delivery_tag, correlation_id
            ) if recording else None,
            sent_ns=broker_sent_ns(timestamp),
            links=memory.links(key, headers, redelivered is not False),
            redelivered=redelivered if type(redelivered) is bool else None,
        )
        scope.open()
        if key is not None and scope.span is not None:
            memory.remember(key, scope.span_context)
        return scope
    except Exception as exc:
        diagnostics.internal_error("amqp.open_delivery", exc)
        return None
