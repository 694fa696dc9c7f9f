"""The redelivery memory shared by the AMQP integrations (pika, kombu, aio-pika).

A bounded, in-process record of the span each message was last processed in, so a
redelivery or a dead-lettered copy can link to the earlier attempt.

A message's identity is the pair (``traceparent``, send-time header) hoptrace wrote at publish
time, or the AMQP ``message_id`` for messages published without hoptrace. The broker keeps the
headers unchanged on requeue and copies them when it dead-letters a message, so the identity
survives both paths; the consumer never has to write to the broker's copy.
"""

from __future__ import annotations

import sysconfig
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


#: Whether the memory's ``OrderedDict`` steps run without its lock: on an interpreter with a
#: GIL, each of them (``setdefault``, ``pop``, ``__setitem__``, ``popitem``, ``get``, all C
#: with int keys and tuples of ints, so no Python code runs inside one) is atomic, and
#: :meth:`DeliveryMemory.keep` is written so that no interleaving of them raises. A
#: free-threaded build (``Py_GIL_DISABLED``) takes the lock.
_LOCK_FREE: Final = not sysconfig.get_config_var("Py_GIL_DISABLED")


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
        if _LOCK_FREE:
            earlier = self._seen.get(key)
        else:
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
        self.keep(
            key, (span_context.trace_id, span_context.span_id, int(span_context.trace_flags)))

    def keep(self, key: int, entry: tuple[int, int, int]) -> None:
        """:meth:`remember` of a valid span context's ``(trace_id, span_id, int(flags))``.

        The newest entry goes last and the oldest beyond the size is forgotten. Without the
        lock (:data:`_LOCK_FREE`), two threads may both forget an oldest entry at once (the
        memory then holds one less for a while); nothing raises and no entry is half-made.
        """
        if not _LOCK_FREE:
            with self._lock:
                self._keep(key, entry)
            return
        seen = self._seen
        if seen.setdefault(key, entry) is not entry:  # (a new key: one step, already last)
            seen.pop(key, None)  # (not move_to_end: another thread may have forgotten it)
            seen[key] = entry
        if len(seen) > self._size:
            try:
                seen.popitem(last=False)
            except KeyError:  # another thread emptied it first
                pass

    def _keep(self, key: int, entry: tuple[int, int, int]) -> None:
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
