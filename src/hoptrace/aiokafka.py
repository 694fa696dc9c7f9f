"""hoptrace for aiokafka: the handler of every record runs inside the record's trace.

Patch every producer and consumer::

    import hoptrace.aiokafka
    hoptrace.aiokafka.instrument()

or wrap chosen ones without patching anything::

    producer = hoptrace.aiokafka.TracedProducer(AIOKafkaProducer(...))
    consumer = hoptrace.aiokafka.TracedConsumer(AIOKafkaConsumer("orders", ...))

Then:

* ``send()`` / ``send_and_wait()`` make a ``send {topic}`` span that lasts until the broker
  acknowledges the record (partition and offset added) or the send fails. The context goes
  into a new header list; the caller's headers are never changed.
* ``async for msg in consumer`` and ``await consumer.getone()`` return each record with its
  ``process {topic}`` scope open: the loop body (the handler) runs in the producer's trace and
  transaction. The scope closes when the next record is requested, when the loop ends or
  breaks, at ``consumer.stop()``, or at :func:`close_scope`.
* ``getmany()`` records one ``receive {topic}`` span linking to every record; handle each
  record inside :func:`processing` or iterate with :func:`iterate`.
* ``create_batch()`` / ``BatchBuilder.append()`` / ``send_batch()``: every record appended
  carries the batch's context; one ``send {topic}`` span per batch, ended at the ack.

A framework integration that traces a client's messages itself (``hoptrace.faststream``)
marks the client, and this module leaves that client alone; a send whose headers already
carry the active span as their ``traceparent`` is passed through untouched.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

from opentelemetry import trace

from . import _kafka
from ._config import get_settings
from .core import diagnostics, semconv
from .core.carriers import write_headers
from .core.hop import consume_scope, produce_scope
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher, original_of

__all__ = [
    "AIOKafkaInstrumentor",
    "TracedConsumer",
    "TracedProducer",
    "close_scope",
    "instrument",
    "instrumented",
    "iterate",
    "processing",
    "uninstrument",
]

_patcher = Patcher("hoptrace.aiokafka")

#: Set on a client by a framework integration that traces its messages itself
#: (``hoptrace.faststream``): this module then leaves that client alone.
_CLAIM: Final = "_hoptrace_claimed_by"


def _claimed(client: object) -> bool:
    return getattr(client, _CLAIM, None) is not None


def _traced_already(headers: object) -> bool:
    """Whether ``headers`` already carry the active span as their ``traceparent``.

    True when the caller sends inside its own ``produce_scope`` (or a framework integration
    did): the send is traced already and gets no second span.
    """
    if not headers or not isinstance(headers, (list, tuple)):
        return False
    for item in headers:
        try:
            if item[0] != semconv.TRACEPARENT:
                continue
            value = item[1]
            text = bytes(value).decode("ascii") if isinstance(value, (bytes, bytearray)) \
                else value
        except Exception:
            return False
        if type(text) is not str or len(text) < 52:
            return False
        context = trace.get_current_span().get_span_context()
        return context.is_valid and text[36:52] == format(context.span_id, "016x")
    return False


# ----------------------------------------------------------------- records ---


def processing(record: Any, group: str | None = None) -> consume_scope:
    """Return the ``process {topic}`` scope of a consumed record (``with`` or ``async with``)."""
    return _kafka.consumer_record_scope(record, group)


def iterate(
    batch: Mapping[Any, Iterable[Any]] | Iterable[Any], group: str | None = None
) -> Iterator[Any]:
    """Yield the records of a ``getmany()`` result, each inside its own process scope."""
    return _kafka.iterate_consumer_records(batch, group)


def close_scope(consumer: Any = None) -> None:
    """Close the process scope ``getone()``/``async for`` left open in this task.

    With no ``consumer``, close every such scope of the current task.
    """
    _kafka.close_pending(_unwrap(consumer) if consumer is not None else None)


def _unwrap(consumer: Any) -> Any:
    return consumer._consumer if isinstance(consumer, TracedConsumer) else consumer


def _group(consumer: Any) -> str | None:
    group = getattr(consumer, "_group_id", None)
    return group if isinstance(group, str) else None


# ---------------------------------------------------------------- producer ---


#: True while aiokafka's own ``send`` runs: it appends the record to a ``BatchBuilder``
#: itself, and that append is part of the send, not a batch of the caller's.
_in_send: ContextVar[bool] = ContextVar("hoptrace_aiokafka_in_send", default=False)


async def _send(
    original: Callable[..., Awaitable[Any]],
    producer: Any,
    topic: str,
    value: Any,
    key: Any,
    partition: Any,
    timestamp_ms: Any,
    headers: Any,
) -> Any:
    token = _in_send.set(True)
    try:
        return await _send_traced(
            original, producer, topic, value, key, partition, timestamp_ms, headers
        )
    finally:
        _in_send.reset(token)


async def _send_traced(
    original: Callable[..., Awaitable[Any]],
    producer: Any,
    topic: str,
    value: Any,
    key: Any,
    partition: Any,
    timestamp_ms: Any,
    headers: Any,
) -> Any:
    if _traced_already(headers):
        return await original(producer, topic, value, key, partition, timestamp_ms, headers)
    try:
        scope = _kafka.send_scope(topic, headers, key, timestamp_ms is not None)
    except Exception as exc:
        if not isinstance(exc, TypeError):
            diagnostics.internal_error("aiokafka.send", exc)
        return await original(producer, topic, value, key, partition, timestamp_ms, headers)
    try:
        future = await original(producer, topic, value, key, partition, timestamp_ms, scope.carrier)
    except BaseException as exc:
        scope.close(exc)
        raise
    span = _kafka.detach_send(scope)
    if span is not None:
        try:
            future.add_done_callback(functools.partial(_sent, span))
        except Exception as exc:
            diagnostics.internal_error("aiokafka.send", exc)
            _kafka.end_send(span, None, None, None)
    return future


def _sent(span: Any, future: Any) -> None:
    if future.cancelled():
        _kafka.end_send(span, None, None, None)
        return
    exc = future.exception()
    if exc is not None:
        _kafka.end_send(span, None, None, exc)
        return
    _kafka.end_send_with(span, future.result())


# ------------------------------------------------------------ batch sends ---


class _BatchSend:
    """The ``send`` span of one ``BatchBuilder`` and the header values its records carry."""

    __slots__ = ("count", "scope", "values")

    def __init__(self, scope: produce_scope, values: dict[str, str]) -> None:
        self.scope = scope
        self.values = values
        self.count = 0


#: The batch each builder is filling; an entry goes with its builder.
_batches: weakref.WeakKeyDictionary[Any, _BatchSend] = weakref.WeakKeyDictionary()


def _open_batch(builder: Any) -> _BatchSend:
    """Start the batch's send span (its topic comes at ``send_batch``), detached at once."""
    values: dict[str, str] = {}
    # Kafka stamps each record (CreateTime): no send-time header unless a timestamp is set.
    scope = produce_scope(values, "", _kafka.SYSTEM, sent_time=False).open()
    scope.detach()
    state = _BatchSend(scope, values)
    _batches[builder] = state
    # A builder dropped without send_batch() still ends its span (when it is collected).
    weakref.finalize(builder, scope.close)
    return state


def _append(
    original: Callable[..., Any], builder: Any, timestamp: Any, key: Any, value: Any,
    headers: Any,
) -> Any:
    if _in_send.get() or _traced_already(headers):
        return original(builder, timestamp=timestamp, key=key, value=value, headers=headers)
    outgoing = headers
    state = None
    try:
        if get_settings().enabled:
            state = _batches.get(builder)
            if state is None:
                state = _open_batch(builder)
            values = state.values
            if timestamp is not None:  # a set timestamp says nothing about the send time
                values = {**values, get_settings().sent_time_header: str(time.time_ns())}
            outgoing = write_headers(headers if headers is not None else [], values, copy=True)
    except Exception as exc:
        if isinstance(exc, TypeError):  # headers of a type aiokafka rejects: its error
            outgoing = headers
        else:
            diagnostics.internal_error("aiokafka.append", exc)
        state = None
    metadata = original(builder, timestamp=timestamp, key=key, value=value, headers=outgoing)
    if metadata is not None and state is not None:
        state.count += 1
    return metadata


async def _send_batch(
    original: Callable[..., Awaitable[Any]], producer: Any, batch: Any, topic: str,
    partition: Any,
) -> Any:
    state = _batches.pop(batch, None)
    if state is None:
        return await original(producer, batch, topic, partition=partition)
    scope = state.scope
    try:
        span = scope.span
        if span is not None and span.is_recording():
            span.update_name(semconv.send_span_name(topic))
        scope.set_attribute(semconv.MESSAGING_DESTINATION_NAME, topic)
        scope.set_attribute(semconv.MESSAGING_BATCH_MESSAGE_COUNT, state.count)
    except Exception as exc:
        diagnostics.internal_error("aiokafka.send_batch", exc)
    try:
        future = await original(producer, batch, topic, partition=partition)
    except BaseException as exc:
        scope.close(exc)
        raise
    try:
        future.add_done_callback(functools.partial(_sent, scope))
    except Exception as exc:
        diagnostics.internal_error("aiokafka.send_batch", exc)
        scope.close()
    return future


class TracedBatch:
    """A ``BatchBuilder`` from :meth:`TracedProducer.create_batch`: ``append`` is traced."""

    def __init__(self, builder: Any) -> None:
        self._builder = builder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._builder, name)

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any = None) -> Any:
        """Append a record carrying the batch's context; return its metadata, or None if full."""
        return _append(
            original_of(type(self._builder).append), self._builder, timestamp, key, value,
            headers,
        )


class TracedProducer:
    """Wraps an ``AIOKafkaProducer`` so ``send``/``send_and_wait`` are traced (no patching).

    Every other attribute is the wrapped producer's.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: Any = None,
        timestamp_ms: Any = None,
        headers: Any = None,
    ) -> Any:
        """Send a record inside a ``send {topic}`` span; return aiokafka's delivery future."""
        original = original_of(type(self._producer).send)
        return await _send(
            original, self._producer, topic, value, key, partition, timestamp_ms, headers
        )

    async def send_and_wait(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: Any = None,
        timestamp_ms: Any = None,
        headers: Any = None,
    ) -> Any:
        """Send a record and wait for the broker's acknowledgement; return its metadata."""
        future = await self.send(topic, value, key, partition, timestamp_ms, headers)
        return await future

    def create_batch(self) -> TracedBatch:
        """Return a new batch whose records carry the batch's context."""
        return TracedBatch(self._producer.create_batch())

    async def send_batch(self, batch: Any, topic: str, *, partition: Any) -> Any:
        """Send a batch inside one ``send {topic}`` span; return aiokafka's delivery future."""
        builder = batch._builder if isinstance(batch, TracedBatch) else batch
        original = original_of(type(self._producer).send_batch)
        return await _send_batch(original, self._producer, builder, topic, partition)

    async def __aenter__(self) -> TracedProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()


# ---------------------------------------------------------------- consumer ---


def _open_record_scope(consumer: Any, record: Any) -> None:
    try:
        scope = processing(record, _group(consumer))
    except Exception as exc:
        diagnostics.internal_error("aiokafka.consume", exc)
        return
    _kafka.open_pending(consumer, scope)


async def _getone(
    original: Callable[..., Awaitable[Any]], consumer: Any, partitions: tuple[Any, ...]
) -> Any:
    _kafka.close_pending(consumer)
    record = await original(consumer, *partitions)
    if not _claimed(consumer):
        _open_record_scope(consumer, record)
    return record


async def _getmany(
    original: Callable[..., Awaitable[Any]],
    consumer: Any,
    partitions: tuple[Any, ...],
    timeout_ms: int,
    max_records: int | None,
) -> Any:
    _kafka.close_pending(consumer)
    start = _kafka.now_ns()
    batch = await original(consumer, *partitions, timeout_ms=timeout_ms, max_records=max_records)
    if batch and not _claimed(consumer):
        _kafka.receive_spans(
            (
                _kafka.BatchEntry(r.topic, r.partition, r.offset, r.headers)
                for records in batch.values()
                for r in records
            ),
            _group(consumer),
            start,
        )
    return batch


class _Iteration:
    """The iterator ``async for`` gets: it closes the last record's scope when dropped."""

    __slots__ = ("_consumer", "_entry", "_step")

    def __init__(self, consumer: Any, step: Callable[[], Awaitable[Any]]) -> None:
        self._consumer = consumer
        self._step = step
        self._entry: _kafka.Pending | None = None

    def __aiter__(self) -> _Iteration:
        return self

    async def __anext__(self) -> Any:
        record = await self._step()
        self._entry = _kafka.latest_pending(self._consumer)
        return record

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:
            self._entry = None
            try:
                _kafka.release(entry)
            except Exception:  # interpreter shutdown: module globals may be gone
                pass


class TracedConsumer:
    """Wraps an ``AIOKafkaConsumer`` so records are handled in their trace (no patching).

    Every other attribute is the wrapped consumer's.
    """

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    async def getone(self, *partitions: Any) -> Any:
        """Return the next record with its process scope open until the next request."""
        original = original_of(type(self._consumer).getone)
        return await _getone(original, self._consumer, partitions)

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any:
        """Return a batch of records and record a ``receive`` span linking to each one."""
        original = original_of(type(self._consumer).getmany)
        return await _getmany(original, self._consumer, partitions, timeout_ms, max_records)

    def __aiter__(self) -> _Iteration:
        self._consumer.__aiter__()  # raises ConsumerStoppedError once stopped, as aiokafka does
        return _Iteration(self._consumer, self._next)

    async def _next(self) -> Any:
        from aiokafka.errors import ConsumerStoppedError  # type: ignore[import-untyped]

        try:
            return await self.getone()
        except ConsumerStoppedError:
            raise StopAsyncIteration from None

    async def stop(self) -> None:
        """Close this task's pending scope for the consumer, then stop it."""
        _kafka.close_pending(self._consumer)
        await original_of(type(self._consumer).stop)(self._consumer)

    async def __aenter__(self) -> TracedConsumer:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# ---------------------------------------------------------------- patching ---


#: OpenTelemetry contrib's instrumentation of the same client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "aiokafka", "opentelemetry.instrumentation.aiokafka",
    "AIOKafkaInstrumentor", "aiokafka",
    "opentelemetry-instrumentation-aiokafka",
)


def instrument() -> None:
    """Patch ``AIOKafkaProducer`` and ``AIOKafkaConsumer`` (idempotent)."""
    take_over(_CONTRIB, instrumented)
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

    def wrap_send(original: Callable[..., Any]) -> Callable[..., Any]:
        async def send(
            self: Any,
            topic: str,
            value: Any = None,
            key: Any = None,
            partition: Any = None,
            timestamp_ms: Any = None,
            headers: Any = None,
        ) -> Any:
            return await _send(original, self, topic, value, key, partition, timestamp_ms, headers)

        return send

    def wrap_getone(original: Callable[..., Any]) -> Callable[..., Any]:
        async def getone(self: Any, *partitions: Any) -> Any:
            return await _getone(original, self, partitions)

        return getone

    def wrap_getmany(original: Callable[..., Any]) -> Callable[..., Any]:
        async def getmany(
            self: Any, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
        ) -> Any:
            return await _getmany(original, self, partitions, timeout_ms, max_records)

        return getmany

    def wrap_aiter(original: Callable[..., Any]) -> Callable[..., Any]:
        def __aiter__(self: Any) -> Any:
            iterator = original(self)
            if iterator is not self:
                return iterator
            return _Iteration(self, self.__anext__)

        return __aiter__

    def wrap_stop(original: Callable[..., Any]) -> Callable[..., Any]:
        async def stop(self: Any) -> Any:
            _kafka.close_pending(self)
            return await original(self)

        return stop

    def wrap_append(original: Callable[..., Any]) -> Callable[..., Any]:
        def append(
            self: Any, *, timestamp: Any, key: Any, value: Any, headers: Any = None
        ) -> Any:
            return _append(original, self, timestamp, key, value, headers)

        return append

    def wrap_send_batch(original: Callable[..., Any]) -> Callable[..., Any]:
        async def send_batch(self: Any, batch: Any, topic: str, *, partition: Any) -> Any:
            return await _send_batch(original, self, batch, topic, partition)

        return send_batch

    from aiokafka.producer.message_accumulator import (  # type: ignore[import-untyped]
        BatchBuilder,
    )

    # send_and_wait calls self.send, so it is covered by the send wrapper.
    _patcher.wrap(AIOKafkaProducer, "send", wrap_send)
    _patcher.wrap(AIOKafkaProducer, "send_batch", wrap_send_batch)
    _patcher.wrap(BatchBuilder, "append", wrap_append)
    _patcher.wrap(AIOKafkaConsumer, "getone", wrap_getone)
    _patcher.wrap(AIOKafkaConsumer, "getmany", wrap_getmany)
    _patcher.wrap(AIOKafkaConsumer, "__aiter__", wrap_aiter)
    _patcher.wrap(AIOKafkaConsumer, "stop", wrap_stop)


def uninstrument() -> None:
    """Put aiokafka's original methods back (idempotent)."""
    _patcher.restore()


def instrumented() -> bool:
    """Return whether :func:`instrument` is in force."""
    return _patcher.active


class AIOKafkaInstrumentor(ClientInstrumentor):
    """hoptrace's aiokafka instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("aiokafka >= 0.10, < 1",)

    def _instrument(self, **kwargs: Any) -> None:
        instrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
