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
  transaction. The scope is held until the next record is requested, the loop ends or
  breaks, ``commit()`` settles it, ``consumer.stop()`` (from any task), or :func:`close_scope`
  (``hold_consume_scope=False`` turns holding off; see ``docs/kafka.md``).
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
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final

from . import _client, _kafka
from ._config import get_settings
from ._kafka import close_scope as close_scope
from ._kafka import iterate as iterate
from ._kafka import processing as processing
from .core import diagnostics, held, semconv
from .core.carriers import write_headers
from .core.hop import produce_scope
from .core.instrumentor import Contrib, take_over
from .core.patching import Patcher, original_of

__all__ = ["AIOKafkaInstrumentor", *_kafka.CLIENT_API]

_patcher = Patcher("hoptrace.aiokafka")
#: Contrib's instrumentation of this client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "aiokafka", "opentelemetry.instrumentation.aiokafka",
    "AIOKafkaInstrumentor", "aiokafka", "opentelemetry-instrumentation-aiokafka",
)

_claimed = _client.claimed  # a client hoptrace.faststream traces itself is left alone
_CLAIM_ATTRIBUTE: Final = _client.CLAIM_ATTRIBUTE  # (what _claimed reads)
# Per-message calls, bound once (one global read each instead of a module attribute's).
_attached_send: Final = _kafka.attached_send
_record_scope: Final = _kafka.consumer_record_scope
_release: Final = held.release


def _traced_already(headers: object) -> bool:
    """Whether ``headers`` already carry the active span as their ``traceparent``.

    True when the caller sends inside its own ``produce_scope`` (or a framework integration
    did): the send is traced already and gets no second span.
    """
    if not headers or not isinstance(headers, (list, tuple)):
        return False
    for item in headers:
        try:
            if item[0] == semconv.TRACEPARENT:
                return _client.names_active_span(item[1])
        except Exception:
            return False
    return False


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
    value: Any = None,
    key: Any = None,
    partition: Any = None,
    timestamp_ms: Any = None,
    headers: Any = None,
) -> Any:
    """``AIOKafkaProducer.send`` traced: its parameters after ``original``, and its result.

    The patched method is ``functools.partial(_send, original)``: one coroutine per send.
    """
    token = _in_send.set(True)
    try:
        if headers and _traced_already(headers):  # (None, the common case: no call)
            return await original(producer, topic, value, key, partition, timestamp_ms, headers)
        attached = _attached_send(headers, key, timestamp_ms is not None)
        if attached is not None:  # no span, no metric: the context around the call, no scope
            carrier, context = attached
            try:
                return await original(
                    producer, topic, value, key, partition, timestamp_ms, carrier)
            finally:
                if context is not None:
                    context.close()
        scope = _kafka.open_send(topic, headers, key, timestamp_ms is not None, "aiokafka.send")
        if scope is None:
            return await original(producer, topic, value, key, partition, timestamp_ms, headers)
        try:
            future = await original(
                producer, topic, value, key, partition, timestamp_ms, scope.carrier
            )
        except BaseException as exc:
            scope.close(exc)
            raise
        return _kafka.await_ack(scope, future, _on_done, "aiokafka.send")
    finally:
        _in_send.reset(token)


def _on_done(future: Any, span: produce_scope) -> None:
    future.add_done_callback(functools.partial(_sent, span))


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
    scope.release_context()
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


class TracedBatch(_kafka.Proxy):
    """A ``BatchBuilder`` from :meth:`TracedProducer.create_batch`: ``append`` is traced."""

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any = None) -> Any:
        """Append a record carrying the batch's context; return its metadata, or None if full."""
        return _append(
            original_of(type(self._client).append), self._client, timestamp, key, value,
            headers,
        )


class TracedProducer(_kafka.Proxy):
    """Wraps an ``AIOKafkaProducer`` so ``send``/``send_and_wait`` are traced (no patching).

    Every other attribute is the wrapped producer's.
    """

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
        original = original_of(type(self._client).send)
        return await _send(
            original, self._client, topic, value, key, partition, timestamp_ms, headers
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
        return TracedBatch(self._client.create_batch())

    async def send_batch(self, batch: Any, topic: str, *, partition: Any) -> Any:
        """Send a batch inside one ``send {topic}`` span; return aiokafka's delivery future."""
        builder = batch._client if isinstance(batch, TracedBatch) else batch
        original = original_of(type(self._client).send_batch)
        return await _send_batch(original, self._client, builder, topic, partition)

    async def __aenter__(self) -> TracedProducer:
        await self._client.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.stop()


# ---------------------------------------------------------------- consumer ---


async def _getone(
    original: Callable[..., Awaitable[Any]], consumer: Any, *partitions: Any
) -> Any:
    """``AIOKafkaConsumer.getone`` traced (patched in as ``functools.partial(_getone,
    original)``: one coroutine per call)."""
    _release(consumer)
    record = await (original(consumer, *partitions) if partitions else original(consumer))
    # _claimed(consumer) and _group(consumer), inline: one record's scope per call.
    if getattr(consumer, _CLAIM_ATTRIBUTE, None) is not None:
        return record
    group = getattr(consumer, "_group_id", None)
    try:  # _kafka.hold_record, inline: once per record
        held.hold(consumer, _record_scope(record, group if isinstance(group, str) else None))
    except Exception as exc:
        diagnostics.internal_error("kafka.consume", exc)
    return record


async def _getmany(
    original: Callable[..., Awaitable[Any]],
    consumer: Any,
    partitions: tuple[Any, ...],
    timeout_ms: int,
    max_records: int | None,
) -> Any:
    held.release(consumer)
    start = _kafka.now_ns()
    batch = await original(consumer, *partitions, timeout_ms=timeout_ms, max_records=max_records)
    if batch and not _claimed(consumer):
        _kafka.receive_records(batch, _group(consumer), start)
    return batch


class TracedConsumer(_kafka.Proxy):
    """Wraps an ``AIOKafkaConsumer`` so records are handled in their trace (no patching).

    Every other attribute is the wrapped consumer's.
    """

    async def getone(self, *partitions: Any) -> Any:
        """Return the next record with its process scope held until the next request."""
        original = original_of(type(self._client).getone)
        return await _getone(original, self._client, *partitions)

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any:
        """Return a batch of records and record a ``receive`` span linking to each one."""
        original = original_of(type(self._client).getmany)
        return await _getmany(original, self._client, partitions, timeout_ms, max_records)

    def __aiter__(self) -> held.AsyncHeldIteration:
        self._client.__aiter__()  # raises ConsumerStoppedError once stopped, as aiokafka does
        return held.AsyncHeldIteration(self._client, self._next)

    async def _next(self) -> Any:
        from aiokafka.errors import ConsumerStoppedError  # type: ignore[import-untyped]

        try:
            return await self.getone()
        except ConsumerStoppedError:
            raise StopAsyncIteration from None

    async def commit(self, *args: Any, **kwargs: Any) -> Any:
        """Commit, then close the scope held for the last record (its settle point)."""
        commit = held.settling_async(original_of(type(self._client).commit))
        return await commit(self._client, *args, **kwargs)

    async def stop(self) -> None:
        """Close this task's held scope for the consumer and end any other task's held span
        (a framework stopping it from its own task), then stop it."""
        held.release_all(self._client)
        await original_of(type(self._client).stop)(self._client)

    async def __aenter__(self) -> TracedConsumer:
        await self._client.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# ---------------------------------------------------------------- patching ---


def _wrap_send(original: Callable[..., Any]) -> Callable[..., Any]:
    # The patcher's dispatch passes ``self`` and the caller's arguments on: no frame between.
    return functools.partial(_send, original)


def _wrap_getone(original: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(_getone, original)


def _wrap_getmany(original: Callable[..., Any]) -> Callable[..., Any]:
    async def getmany(
        self: Any, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any:
        return await _getmany(original, self, partitions, timeout_ms, max_records)

    return getmany


def _wrap_aiter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __aiter__(self: Any) -> Any:
        iterator = original(self)
        if iterator is not self:
            return iterator
        return held.AsyncHeldIteration(self, self.__anext__)

    return __aiter__


def _wrap_append(original: Callable[..., Any]) -> Callable[..., Any]:
    def append(
        self: Any, *, timestamp: Any, key: Any, value: Any, headers: Any = None
    ) -> Any:
        return _append(original, self, timestamp, key, value, headers)

    return append


def _wrap_send_batch(original: Callable[..., Any]) -> Callable[..., Any]:
    async def send_batch(self: Any, batch: Any, topic: str, *, partition: Any) -> Any:
        return await _send_batch(original, self, batch, topic, partition)

    return send_batch


def instrument() -> None:
    """Patch ``AIOKafkaProducer`` and ``AIOKafkaConsumer`` (idempotent)."""
    take_over(_CONTRIB, instrumented)
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
    from aiokafka.producer.message_accumulator import (  # type: ignore[import-untyped]
        BatchBuilder,
    )

    # send_and_wait calls self.send, so it is covered by the send wrapper.
    _client.wrap_each(_patcher, {
        AIOKafkaProducer: {"send": _wrap_send, "send_batch": _wrap_send_batch},
        BatchBuilder: {"append": _wrap_append},
        AIOKafkaConsumer: {
            "getone": _wrap_getone, "getmany": _wrap_getmany, "__aiter__": _wrap_aiter,
            "stop": held.releasing_all_async, "commit": held.settling_async,
        },
    })


uninstrument, instrumented = _client.switches(_patcher, "aiokafka")


class AIOKafkaInstrumentor(_client.Instrumentor):
    """hoptrace's aiokafka instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("aiokafka >= 0.10, < 1",)
