"""The redelivery memory shared by the AMQP integrations (pika, kombu, aio-pika).

A bounded, in-process record of the span each message was last processed in, so a
redelivery or a dead-lettered copy can link to the earlier attempt.

A message's identity is the pair (``traceparent``, send-time header) hoptrace wrote at publish
time, or the AMQP ``message_id`` for messages published without hoptrace. The broker keeps the
headers unchanged on requeue and copies them when it dead-letters a message, so the identity
survives both paths; the consumer never has to write to the broker's copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

from opentelemetry.trace import Link, SpanContext, TraceFlags

from ._config import get_settings
from .core import semconv

#: How many earlier deliveries :data:`memory` keeps; the oldest is forgotten first.
MEMORY_SIZE: Final = 10_000

REASON_REDELIVERY: Final = "redelivery"
REASON_DEAD_LETTER: Final = "dead_letter"
_DEATH_HEADER: Final = "x-death"


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
