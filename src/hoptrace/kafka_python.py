"""hoptrace for kafka-python: traced ``send``, and the handler inside the record's trace.

Patch every producer and consumer::

    import hoptrace.kafka_python
    hoptrace.kafka_python.instrument()

or wrap chosen ones: :class:`TracedProducer` / :class:`TracedConsumer`.

* ``send()`` makes a ``send {topic}`` span that ends when the broker acknowledges the record
  (partition and offset added) or the send fails; the headers go into a new list.
* ``for msg in consumer`` and ``next(consumer)`` return each record with its
  ``process {topic}`` scope held open until the next record is requested, the loop ends or
  breaks, ``commit()`` settles it, ``close()`` is called, or :func:`close_scope`
  (``hold_consume_scope=False`` turns holding off; see ``docs/kafka.md``).
* ``poll()`` records one ``receive {topic}`` span linking to every record; handle each
  record inside :func:`processing` or iterate with :func:`iterate`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

from . import _client, _kafka
from ._kafka import close_scope as close_scope
from ._kafka import iterate as iterate
from ._kafka import processing as processing
from .core import diagnostics, held
from .core.instrumentor import Contrib, take_over
from .core.patching import Patcher, original_of

__all__ = ["KafkaPythonInstrumentor", *_kafka.CLIENT_API]

_patcher = Patcher("hoptrace.kafka_python")
#: Contrib's instrumentation of this client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "kafka-python", "opentelemetry.instrumentation.kafka",
    "KafkaInstrumentor", "kafka", "opentelemetry-instrumentation-kafka-python",
)


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
    value: Any = None,
    key: Any = None,
    headers: Any = None,
    partition: Any = None,
    timestamp_ms: Any = None,
) -> Any:
    """``KafkaProducer.send`` traced: its parameters after ``original``, and its result.

    The patched method is ``functools.partial(_send, original)``: no frame of its own.
    """
    attached = _kafka.attached_send(headers, key, timestamp_ms is not None)
    if attached is not None:  # no span, no metric: the context around the call, no scope
        carrier, context = attached
        try:
            return original(producer, topic, value, key, carrier, partition, timestamp_ms)
        finally:
            if context is not None:
                context.close()
    scope = _kafka.open_send(topic, headers, key, timestamp_ms is not None, "kafka_python.send")
    if scope is None:
        return original(producer, topic, value, key, headers, partition, timestamp_ms)
    try:
        future = original(producer, topic, value, key, scope.carrier, partition, timestamp_ms)
    except BaseException as exc:
        scope.close(exc)
        raise
    return _kafka.await_ack(scope, future, _on_ack, "kafka_python.send")


def _on_ack(future: Any, span: Any) -> None:
    future.add_callback(_acked, span)
    future.add_errback(_failed, span)


def _acked(span: Any, metadata: Any) -> None:
    _kafka.end_send_with(span, metadata)


def _failed(span: Any, exc: BaseException) -> None:
    _kafka.end_send(span, None, None, exc)


class TracedProducer(_kafka.Proxy):
    """Wraps a ``KafkaProducer`` so ``send`` is traced (no patching)."""

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: Any = None, timestamp_ms: Any = None) -> Any:
        """Send a record inside a ``send {topic}`` span; return kafka-python's future."""
        original = original_of(type(self._client).send)
        return _send(original, self._client, topic, value, key, headers, partition, timestamp_ms)


# ---------------------------------------------------------------- consumer ---


_record_scope: Final = _kafka.consumer_record_scope
#: Set while a traced ``__next__`` runs: kafka-python's iterator calls ``poll()`` itself,
#: and those internal polls are not batch receives of the caller's.
_in_next: ContextVar[bool] = ContextVar("hoptrace_kafka_python_in_next", default=False)


def _next(original: Callable[..., Any], consumer: Any) -> Any:
    held.release(consumer)
    token = _in_next.set(True)
    try:
        record = original(consumer)
    finally:
        _in_next.reset(token)
    try:  # _group(consumer) and _kafka.hold_record, inline: once per record
        group = consumer.config.get("group_id")
    except Exception:
        group = None
    try:
        held.hold(consumer, _record_scope(record, group if isinstance(group, str) else None))
    except Exception as exc:
        diagnostics.internal_error("kafka.consume", exc)
    return record


def _poll(
    original: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if _in_next.get():
        return original(consumer, *args, **kwargs)
    held.release(consumer)
    start = _kafka.now_ns()
    batch = original(consumer, *args, **kwargs)
    if batch:
        _kafka.receive_records(batch, _group(consumer), start)
    return batch


class TracedConsumer(_kafka.Proxy):
    """Wraps a ``KafkaConsumer`` so records are handled in their trace (no patching)."""

    def __iter__(self) -> held.HeldIteration:
        return held.HeldIteration(self._client, self.__next__)

    def __next__(self) -> Any:
        """Return the next record with its process scope held until the next request."""
        return _next(original_of(type(self._client).__next__), self._client)

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        """Return a batch of records and record a ``receive`` span linking to each one."""
        return _poll(original_of(type(self._client).poll), self._client, args, kwargs)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        """Commit, then close the scope held for the last record (its settle point)."""
        commit = held.settling(original_of(type(self._client).commit))
        return commit(self._client, *args, **kwargs)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close this thread's held scope, then the consumer."""
        held.release(self._client)
        return self._client.close(*args, **kwargs)


# ---------------------------------------------------------------- patching ---

def _wrap_send(original: Callable[..., Any]) -> Callable[..., Any]:
    # The patcher's dispatch passes ``self`` and the caller's arguments on: no frame between.
    return functools.partial(_send, original)


def _wrap_next(original: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(_next, original)


def _wrap_iter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __iter__(self: Any) -> Any:
        iterator = original(self)
        return iterator if iterator is not self else held.HeldIteration(self, self.__next__)

    return __iter__


def _wrap_poll(original: Callable[..., Any]) -> Callable[..., Any]:
    def poll(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _poll(original, self, args, kwargs)

    return poll


def instrument() -> None:
    """Patch ``KafkaProducer.send`` and ``KafkaConsumer`` iteration and ``poll`` (idempotent)."""
    take_over(_CONTRIB, instrumented)
    from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped]

    _client.wrap_each(_patcher, {
        KafkaProducer: {"send": _wrap_send},
        KafkaConsumer: {
            "__next__": _wrap_next, "__iter__": _wrap_iter, "poll": _wrap_poll,
            "close": held.releasing_all, "commit": held.settling, "commit_async": held.settling,
        },
    })


uninstrument, instrumented = _client.switches(_patcher, "kafka-python")


class KafkaPythonInstrumentor(_client.Instrumentor):
    """hoptrace's kafka-python instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("kafka-python >= 2.0.2, < 4",)
