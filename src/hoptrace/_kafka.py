"""Kafka mapping shared by the aiokafka, confluent-kafka and kafka-python integrations.

Each client module turns its own record type into the few plain values used here (topic,
partition, offset, key, headers, timestamp) and gets back hoptrace scopes. This module also
keeps the *pending* process scopes: the scope an iterator-style call (``getone()``,
``poll()``, ``next()``) opened for the message it returned, which stays open while the
caller handles the message and is closed by the next call on the same consumer.

Pending scopes live in a :class:`~contextvars.ContextVar`, so each asyncio task and each
thread has its own; a scope is always closed in the context that opened it.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any, Final, NamedTuple

from opentelemetry.util.types import AttributeValue

from .core import diagnostics, semconv
from .core.hop import consume_scope, produce_scope, receive_scope, spans_active

SYSTEM: Final = semconv.SYSTEM_KAFKA
#: Kafka record timestamps (CreateTime, LogAppendTime) are whole milliseconds.
TIMESTAMP_PRECISION_MS: Final = 1


def message_id(topic: str, partition: int, offset: int) -> str:
    """Return the ``messaging.message.id`` hoptrace uses for a Kafka record: ``topic-p@offset``."""
    return f"{topic}-{partition}@{offset}"


def key_text(key: object) -> str | None:
    """Return a record key as text when it is a ``str`` or UTF-8 bytes, else None."""
    if type(key) is str:
        return key
    if isinstance(key, (bytes, bytearray)):
        try:
            return bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def record_attributes(
    partition: int, offset: int, key: object, group: str | None
) -> dict[str, AttributeValue]:
    """Return the Kafka attributes of a consumed record's span."""
    attrs: dict[str, AttributeValue] = {
        semconv.KAFKA_PARTITION: str(partition),
        semconv.KAFKA_OFFSET: offset,
    }
    text = key_text(key) if key is not None else None
    if text is not None:
        attrs[semconv.KAFKA_MESSAGE_KEY] = text
    if group:
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
    return attrs


class RecordScope(consume_scope):
    """A record's ``process {topic}`` scope; says when its queue wait is only as fine as 1 ms.

    A record carries no send-time header unless its producer set the timestamp itself, so
    the queue wait is measured from the record's timestamp, cut to the millisecond: the send
    time it implies can be up to 1 ms before the producer's span started. The span then gets
    ``hoptrace.queue_wait.precision_ms = 1`` (``hoptrace view`` and ``stats`` clamp the wait
    to the send span when they have it).
    """

    __slots__ = ()

    def open(self) -> RecordScope:
        """Open the scope (see :meth:`consume_scope.open`) and state the queue wait's precision."""
        super().open()
        try:
            incoming = self.incoming
            if self.queue_wait_ms is not None and incoming is not None \
                    and incoming.sent_ns is None:
                self.set_attribute(semconv.QUEUE_WAIT_PRECISION_MS, TIMESTAMP_PRECISION_MS)
        except Exception as exc:
            diagnostics.internal_error("kafka.queue_wait_precision", exc)
        return self


def record_scope(
    topic: str,
    partition: int,
    offset: int,
    key: object,
    headers: object,
    create_time_ms: int | None,
    group: str | None,
) -> consume_scope:
    """Return the (unopened) ``process {topic}`` scope of one consumed record."""
    sent_ns = create_time_ms * 1_000_000 if create_time_ms and create_time_ms > 0 else None
    return RecordScope(
        headers,
        topic,
        SYSTEM,
        message_id=message_id(topic, partition, offset),
        attributes=functools.partial(record_attributes, partition, offset, key, group),
        sent_ns=sent_ns,
    )


def consumer_record_scope(record: Any, group: str | None) -> consume_scope:
    """Return the process scope of an aiokafka or kafka-python ``ConsumerRecord``."""
    return record_scope(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.headers,
        # 0: CreateTime (stamped at send), 1: LogAppendTime (stamped by the broker)
        record.timestamp if record.timestamp_type in (0, 1) else None,
        group,
    )


class BatchEntry(NamedTuple):
    """One record of a batch pull, as :func:`receive_spans` needs it."""

    topic: str
    partition: int
    offset: int
    headers: object


def receive_spans(
    entries: Iterable[BatchEntry], group: str | None, start_time_ns: int
) -> None:
    """Record one ``receive {topic}`` span per topic of a batch, linking to every record.

    ``entries`` is consumed only when spans are made, so a lazy iterable costs nothing in
    propagation-only mode or without an SDK.
    """
    if not spans_active():
        return
    try:
        by_topic: dict[str, list[tuple[object, str | None]]] = {}
        for entry in entries:
            by_topic.setdefault(entry.topic, []).append(
                (
                    entry.headers,
                    message_id(entry.topic, entry.partition, entry.offset),
                )
            )
        attrs: dict[str, AttributeValue] | None = (
            {semconv.MESSAGING_CONSUMER_GROUP_NAME: group} if group else None
        )
        for topic, messages in by_topic.items():
            scope = receive_scope(
                messages, topic, SYSTEM, attributes=attrs, start_time_ns=start_time_ns
            )
            scope.open()
            scope.close()
    except Exception as exc:
        diagnostics.internal_error("kafka.receive", exc)


# ----------------------------------------------------------------- producer ---


def send_scope(
    topic: str, headers: object, key: object, timestamp_given: bool = False
) -> produce_scope:
    """Open a ``send {topic}`` scope; its ``carrier`` is a new header list to send.

    The record's own timestamp (CreateTime, stamped at send) gives the consumer its queue
    wait, so no send-time header is written unless the caller set the timestamp itself.
    Raises TypeError only when ``headers`` is not a list, tuple or mapping.
    """
    attrs: dict[str, AttributeValue] | None = None
    if key is not None:
        text = key_text(key)
        if text is not None:
            attrs = {semconv.KAFKA_MESSAGE_KEY: text}
    carrier: Any = [] if headers is None else headers
    return produce_scope(
        carrier, topic, SYSTEM, attributes=attrs, copy=headers is not None,
        sent_time=timestamp_given,
    ).open()


def end_send_with(scope: produce_scope | None, metadata: object) -> None:
    """End a detached send with the partition and offset of the client's record metadata."""
    end_send(
        scope, getattr(metadata, "partition", None), getattr(metadata, "offset", None), None
    )


def detach_send(scope: produce_scope) -> produce_scope | None:
    """Detach ``scope``'s context where it was attached; return it if a span awaits the ack."""
    scope.detach()
    return scope if scope.span is not None else None


def end_send(
    scope: produce_scope | None,
    partition: int | None,
    offset: int | None,
    exc: BaseException | None,
) -> None:
    """End a send detached by :func:`detach_send`, with the record's partition and offset."""
    if scope is None:
        return
    try:
        if exc is None:
            if partition is not None and partition >= 0:
                scope.set_attribute(semconv.KAFKA_PARTITION, str(partition))
            if offset is not None and offset >= 0:
                scope.set_attribute(semconv.KAFKA_OFFSET, offset)
    except Exception as err:
        diagnostics.internal_error("kafka.end_send", err)
    scope.close(exc)


# --------------------------------------------------------- pending scopes ---


class Pending:
    """A process scope opened by an iterator-style call, kept open for the caller's handler."""

    __slots__ = ("owner", "scope", "token")

    def __init__(self, owner: object, scope: consume_scope, token: Token[None]) -> None:
        self.owner = owner
        self.scope = scope
        self.token = token


_pending: ContextVar[tuple[Pending, ...]] = ContextVar("hoptrace_kafka_pending", default=())
#: Set once per pending scope; resetting its token succeeds only in the very context that
#: opened the scope, which tells the owner apart from a task that inherited a copy.
_owner_mark: ContextVar[None] = ContextVar("hoptrace_kafka_owner_mark", default=None)


def _owned(entry: Pending) -> bool:
    try:
        _owner_mark.reset(entry.token)
        return True
    except (ValueError, RuntimeError):
        return False


#: Each consumer's latest pending scope, whichever task or thread opened it. A scope opened
#: in a task that is gone (``asyncio.wait_for(consumer.getone())`` on Python < 3.12 runs
#: ``getone`` in a child task) is ended at the consumer's next request instead of never.
_latest: weakref.WeakKeyDictionary[object, Pending] = weakref.WeakKeyDictionary()


def open_pending(owner: object, scope: consume_scope) -> Pending | None:
    """Open ``scope`` for ``owner``'s latest message and keep it until the next request."""
    try:
        try:
            previous = _latest.pop(owner, None)
        except TypeError:  # an owner that takes no weak reference
            previous = None
        if previous is not None:
            previous.scope.close()  # a no-op if its own task already closed it
        scope.open()
        entry = Pending(owner, scope, _owner_mark.set(None))
        _pending.set((*_pending.get(), entry))
        try:
            _latest[owner] = entry
        except TypeError:
            pass
        return entry
    except Exception as exc:
        diagnostics.internal_error("kafka.open_pending", exc)
        return None


def close_pending(owner: object | None = None) -> None:
    """Close ``owner``'s pending scope in this task/thread (and every scope opened after it).

    With ``owner=None`` every pending scope of this task or thread is closed. Scopes that
    this task only inherited (it was created while another task's scope was open) are
    forgotten here and left to the task that opened them.
    """
    stack = _pending.get()
    if not stack:
        return
    index = 0
    if owner is not None:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].owner is owner:
                index = i
                break
        else:
            return
    _close_from(stack, index)


def _close_from(stack: tuple[Pending, ...], index: int) -> None:
    _pending.set(stack[:index])
    for entry in reversed(stack[index:]):
        try:
            if _owned(entry):
                entry.scope.close()
        except Exception as exc:
            diagnostics.internal_error("kafka.close_pending", exc)


def release(entry: Pending) -> None:
    """Close ``entry`` when its iterator is dropped (``break``, an exception, ``return``).

    CPython drops the iterator of a ``for``/``async for`` loop right where the loop ends, in
    the same task or thread, so the scope is closed there. If the iterator is collected
    elsewhere (a reference cycle, another task or thread), only the span is ended; the
    context stays attached in its own task until that task's next request or its end.
    """
    try:
        stack = _pending.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is entry:
                if _owned(entry):
                    _close_from(stack, i + 1)  # the scopes opened after it, newest first
                    _pending.set(stack[:i])
                    entry.scope.close()
                    return
                break
        span = entry.scope.span
        if span is not None:
            entry.scope.span = None
            span.end()
    except Exception as exc:
        diagnostics.internal_error("kafka.release", exc)


def latest_pending(owner: object) -> Pending | None:
    """Return ``owner``'s newest pending scope in this task or thread, if any."""
    stack = _pending.get()
    if stack and stack[-1].owner is owner:
        return stack[-1]
    return None


def scoped_records(
    records: Iterable[Any], make_scope: Callable[[Any], consume_scope]
) -> Iterator[Any]:
    """Yield each record with its process scope open while the caller handles it."""
    for record in records:
        try:
            scope: consume_scope | None = make_scope(record)
            scope.open()  # type: ignore[union-attr]
        except Exception as exc:
            diagnostics.internal_error("kafka.iterate", exc)
            scope = None
        try:
            yield record
        finally:
            if scope is not None:
                scope.close()


def iterate_consumer_records(
    batch: Mapping[Any, Iterable[Any]] | Iterable[Any], group: str | None
) -> Iterator[Any]:
    """Yield the ``ConsumerRecord`` objects of a batch pull, each inside its process scope."""
    return scoped_records(
        flatten(batch), functools.partial(consumer_record_scope, group=group)
    )


def flatten(batch: Mapping[Any, Iterable[Any]] | Iterable[Any]) -> Iterable[Any]:
    """Return the records of a ``{partition: [records]}`` mapping, or ``batch`` itself."""
    if isinstance(batch, Mapping):
        return [record for records in batch.values() for record in records]
    return batch


def now_ns() -> int:
    """Return the wall-clock time in ns (the start of a batch pull)."""
    return time.time_ns()
