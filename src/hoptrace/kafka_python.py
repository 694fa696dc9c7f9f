"""hoptrace for kafka-python: traced ``send``, and the handler inside the record's trace.

Patch every producer and consumer::

    import hoptrace.kafka_python
    hoptrace.kafka_python.instrument()

or wrap chosen ones: :class:`TracedProducer` / :class:`TracedConsumer`.

* ``send()`` makes a ``send {topic}`` span that ends when the broker acknowledges the record
  (partition and offset added) or the send fails; the headers go into a new list.
* ``for msg in consumer`` and ``next(consumer)`` return each record with its
  ``process {topic}`` scope open until the next record is requested, the loop ends or
  breaks, ``close()`` is called, or :func:`close_scope`.
* ``poll()`` records one ``receive {topic}`` span linking to every record; handle each
  record inside :func:`processing` or iterate with :func:`iterate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

from . import _kafka
from .core import diagnostics
from .core.hop import consume_scope
from .core.instrumentor import ClientInstrumentor, Contrib, take_over
from .core.patching import Patcher, original_of

__all__ = [
    "KafkaPythonInstrumentor",
    "TracedConsumer",
    "TracedProducer",
    "close_scope",
    "instrument",
    "instrumented",
    "iterate",
    "processing",
    "uninstrument",
]

_patcher = Patcher("hoptrace.kafka_python")


def processing(record: Any, group: str | None = None) -> consume_scope:
    """Return the ``process {topic}`` scope of a consumed record (``with`` or ``async with``)."""
    return _kafka.consumer_record_scope(record, group)


def iterate(
    batch: Mapping[Any, Iterable[Any]] | Iterable[Any], group: str | None = None
) -> Iterator[Any]:
    """Yield the records of a ``poll()`` result, each inside its own process scope."""
    return _kafka.iterate_consumer_records(batch, group)


def close_scope(consumer: Any = None) -> None:
    """Close the process scope ``next()`` left open in this thread (all of them if no consumer)."""
    if isinstance(consumer, TracedConsumer):
        consumer = consumer._consumer
    _kafka.close_pending(consumer)


def _group(consumer: Any) -> str | None:
    try:
        group = consumer.config.get("group_id")
    except Exception:
        return None
    return group if isinstance(group, str) else None


# ---------------------------------------------------------------- producer ---


def _send(
    original: Callable[..., Any],
    producer: Any,
    topic: str,
    value: Any,
    key: Any,
    headers: Any,
    partition: Any,
    timestamp_ms: Any,
) -> Any:
    try:
        scope = _kafka.send_scope(topic, headers, key, timestamp_ms is not None)
    except Exception as exc:
        if not isinstance(exc, TypeError):
            diagnostics.internal_error("kafka_python.send", exc)
        return original(producer, topic, value, key, headers, partition, timestamp_ms)
    try:
        future = original(producer, topic, value, key, scope.carrier, partition, timestamp_ms)
    except BaseException as exc:
        scope.close(exc)
        raise
    span = _kafka.detach_send(scope)
    if span is not None:
        try:
            future.add_callback(_acked, span)
            future.add_errback(_failed, span)
        except Exception as exc:
            diagnostics.internal_error("kafka_python.send", exc)
            _kafka.end_send(span, None, None, None)
    return future


def _acked(span: Any, metadata: Any) -> None:
    _kafka.end_send_with(span, metadata)


def _failed(span: Any, exc: BaseException) -> None:
    _kafka.end_send(span, None, None, exc)


class TracedProducer:
    """Wraps a ``KafkaProducer`` so ``send`` is traced (no patching)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Any = None,
        partition: Any = None,
        timestamp_ms: Any = None,
    ) -> Any:
        """Send a record inside a ``send {topic}`` span; return kafka-python's future."""
        original = original_of(type(self._producer).send)
        return _send(original, self._producer, topic, value, key, headers, partition, timestamp_ms)


# ---------------------------------------------------------------- consumer ---


#: Set while a traced ``__next__`` runs: kafka-python's iterator calls ``poll()`` itself,
#: and those internal polls are not batch receives of the caller's.
_in_next: ContextVar[bool] = ContextVar("hoptrace_kafka_python_in_next", default=False)


def _next(original: Callable[..., Any], consumer: Any) -> Any:
    _kafka.close_pending(consumer)
    token = _in_next.set(True)
    try:
        record = original(consumer)
    finally:
        _in_next.reset(token)
    try:
        _kafka.open_pending(consumer, processing(record, _group(consumer)))
    except Exception as exc:
        diagnostics.internal_error("kafka_python.next", exc)
    return record


def _poll(
    original: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if _in_next.get():
        return original(consumer, *args, **kwargs)
    _kafka.close_pending(consumer)
    start = _kafka.now_ns()
    batch = original(consumer, *args, **kwargs)
    if batch:
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
    """The iterator ``for`` gets: it closes the last record's scope when dropped."""

    __slots__ = ("_consumer", "_entry", "_step")

    def __init__(self, consumer: Any, step: Callable[[], Any]) -> None:
        self._consumer = consumer
        self._step = step
        self._entry: _kafka.Pending | None = None

    def __iter__(self) -> _Iteration:
        return self

    def __next__(self) -> Any:
        record = self._step()
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
    """Wraps a ``KafkaConsumer`` so records are handled in their trace (no patching)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def __iter__(self) -> _Iteration:
        return _Iteration(self._consumer, self.__next__)

    def __next__(self) -> Any:
        """Return the next record with its process scope open until the next request."""
        return _next(original_of(type(self._consumer).__next__), self._consumer)

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        """Return a batch of records and record a ``receive`` span linking to each one."""
        return _poll(original_of(type(self._consumer).poll), self._consumer, args, kwargs)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close this thread's pending scope, then the consumer."""
        _kafka.close_pending(self._consumer)
        return self._consumer.close(*args, **kwargs)


# ---------------------------------------------------------------- patching ---


#: OpenTelemetry contrib's instrumentation of the same client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "kafka-python", "opentelemetry.instrumentation.kafka",
    "KafkaInstrumentor", "kafka",
    "opentelemetry-instrumentation-kafka-python",
)


def instrument() -> None:
    """Patch ``KafkaProducer.send`` and ``KafkaConsumer`` iteration and ``poll`` (idempotent)."""
    take_over(_CONTRIB, instrumented)
    from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped]

    def wrap_send(original: Callable[..., Any]) -> Callable[..., Any]:
        def send(
            self: Any,
            topic: str,
            value: Any = None,
            key: Any = None,
            headers: Any = None,
            partition: Any = None,
            timestamp_ms: Any = None,
        ) -> Any:
            return _send(original, self, topic, value, key, headers, partition, timestamp_ms)

        return send

    def wrap_next(original: Callable[..., Any]) -> Callable[..., Any]:
        def __next__(self: Any) -> Any:
            return _next(original, self)

        return __next__

    def wrap_iter(original: Callable[..., Any]) -> Callable[..., Any]:
        def __iter__(self: Any) -> Any:
            iterator = original(self)
            if iterator is not self:
                return iterator
            return _Iteration(self, self.__next__)

        return __iter__

    def wrap_poll(original: Callable[..., Any]) -> Callable[..., Any]:
        def poll(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _poll(original, self, args, kwargs)

        return poll

    def wrap_close(original: Callable[..., Any]) -> Callable[..., Any]:
        def close(self: Any, *args: Any, **kwargs: Any) -> Any:
            _kafka.close_pending(self)
            return original(self, *args, **kwargs)

        return close

    _patcher.wrap(KafkaProducer, "send", wrap_send)
    _patcher.wrap(KafkaConsumer, "__next__", wrap_next)
    _patcher.wrap(KafkaConsumer, "__iter__", wrap_iter)
    _patcher.wrap(KafkaConsumer, "poll", wrap_poll)
    _patcher.wrap(KafkaConsumer, "close", wrap_close)


def uninstrument() -> None:
    """Put kafka-python's original methods back (idempotent)."""
    _patcher.restore()


def instrumented() -> bool:
    """Return whether :func:`instrument` is in force."""
    return _patcher.active


class KafkaPythonInstrumentor(ClientInstrumentor):
    """hoptrace's kafka-python instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("kafka-python >= 2.0.2, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        instrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
