"""The methods ``instrument()`` patches into aiokafka and kafka-python pass every argument on.

``AIOKafkaProducer.send`` / ``KafkaProducer.send`` / ``getone`` / ``__next__`` are patched
with ``functools.partial(_send, original)`` (no wrapper frame): the partial's function must
take the client's own parameters, in the client's order and under its names. No broker: the
clients' calls are stand-ins with the real methods' signatures.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from opentelemetry import trace

import hoptrace
from hoptrace import aiokafka as hop_aiokafka
from hoptrace import kafka_python as hop_kafka_python
from hoptrace.core.propagator import baggage_entry

aiokafka = pytest.importorskip("aiokafka")
kafka = pytest.importorskip("kafka")


class Metadata:
    partition, offset = 3, 9


class Future:
    """A send future acknowledged already: kafka-python's and aiokafka's, as hoptrace uses them."""

    def add_callback(self, fn: Any, *args: Any) -> None:  # kafka-python
        fn(*args, Metadata())

    def add_errback(self, fn: Any, *args: Any) -> None:
        return None

    def add_done_callback(self, fn: Any) -> None:  # aiokafka
        fn(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def result(self) -> Metadata:
        return Metadata()


def run(coro: Any) -> Any:
    """Run a coroutine whose awaits never suspend, without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the stand-in suspended")


def traced(headers: list[tuple[str, bytes]]) -> tuple[str, str | None]:
    """The trace ID a sent record's ``traceparent`` names, and its transaction ID."""
    values = dict(headers)
    return (values["traceparent"].decode().split("-")[1],
            baggage_entry(values["baggage"].decode(), "transaction.id"))


def current_trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


# Each call: (positional arguments after the topic, keyword arguments), as callers write them.
CALLS = [
    ((b"v",), {}),
    ((), {"value": b"v", "key": b"k"}),
    ((b"v", b"k"), {"partition": 2, "timestamp_ms": 1_700_000_000_000}),
    ((), {"value": b"v", "headers": [("a", b"1")], "timestamp_ms": 5, "partition": 0}),
]


def check_send(spans: Any, send: Any, client_send: Any, args: Any, kwargs: Any,
               asynchronous: bool) -> None:
    """Send through the patched ``send`` (``_wrap_send`` of a stand-in with the signature of
    ``client_send``): the stand-in gets every argument as given, the headers the caller's
    first, then the send span's context; the span ends at the ack with its partition and
    offset."""
    got: list[inspect.BoundArguments] = []
    signature = inspect.signature(client_send)

    def stand_in(*call: Any, **named: Any) -> Future:
        got.append(signature.bind(*call, **named))
        return Future()

    async def async_stand_in(*call: Any, **named: Any) -> Future:
        return stand_in(*call, **named)

    producer = object()
    expected = signature.bind(producer, "orders", *args, **kwargs)
    expected.apply_defaults()
    with hoptrace.transaction() as tx:
        if asynchronous:
            result = run(send(async_stand_in)(producer, "orders", *args, **kwargs))
        else:
            result = send(stand_in)(producer, "orders", *args, **kwargs)
    assert isinstance(result, Future)
    (bound,) = got
    bound.apply_defaults()
    sent = bound.arguments.pop("headers")
    caller_headers = expected.arguments.pop("headers") or []
    assert bound.arguments == expected.arguments
    assert sent[: len(caller_headers)] == caller_headers  # the caller's first, unchanged
    span = spans.one("send orders")
    assert traced(sent) == (format(span.context.trace_id, "032x"), tx.transaction_id)
    attributes = dict(span.attributes or {})
    assert attributes["messaging.destination.name"] == "orders"
    assert (attributes["messaging.destination.partition.id"],
            attributes["messaging.kafka.offset"]) == ("3", 9)


@pytest.mark.parametrize(("args", "kwargs"), [
    *CALLS,
    ((b"v", b"k", [("a", b"1")], 1, 5), {}),  # value, key, headers, partition, timestamp_ms
])
def test_kafka_python_send_passes_every_argument(spans: Any, args: Any, kwargs: Any) -> None:
    check_send(spans, hop_kafka_python._wrap_send, kafka.KafkaProducer.send, args, kwargs,
               asynchronous=False)


@pytest.mark.parametrize(("args", "kwargs"), [
    *CALLS,
    ((b"v", b"k", 1, 5, [("a", b"1")]), {}),  # value, key, partition, timestamp_ms, headers
])
def test_aiokafka_send_passes_every_argument(spans: Any, args: Any, kwargs: Any) -> None:
    check_send(spans, hop_aiokafka._wrap_send, aiokafka.AIOKafkaProducer.send, args, kwargs,
               asynchronous=True)


def test_aiokafka_getone_passes_partitions(spans: Any) -> None:
    from aiokafka.structs import ConsumerRecord

    got: list[tuple[Any, ...]] = []
    headers = [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")]
    record = ConsumerRecord("orders", 0, 42, 1_700_000_000_000, 0, None, b"v", None, 0, 1,
                            headers)

    async def getone(*call: Any) -> Any:
        got.append(call)
        return record

    consumer = object()
    getone_traced = hop_aiokafka._wrap_getone(getone)
    assert run(getone_traced(consumer, "tp0", "tp1")) is record
    assert got == [(consumer, "tp0", "tp1")]
    assert current_trace_id() == "a" * 32  # the record's scope is held
    assert hoptrace.current_hop() == ("kafka", "orders", "orders-0@42")
    hop_aiokafka.close_scope(consumer)
    assert hoptrace.current_hop() is None


def test_kafka_python_next_returns_the_record_in_its_trace(spans: Any) -> None:
    headers = [("traceparent", b"00-" + b"c" * 32 + b"-" + b"d" * 16 + b"-01")]

    class Record:
        topic, partition, offset, key = "orders", 0, 7, None
        timestamp, timestamp_type = 1_700_000_000_000, 0

    record = Record()
    record.headers = headers  # type: ignore[attr-defined]
    consumer = object()
    next_traced = hop_kafka_python._wrap_next(lambda owner: record if owner is consumer else None)
    assert next_traced(consumer) is record
    assert current_trace_id() == "c" * 32
    assert hoptrace.current_hop() == ("kafka", "orders", "orders-0@7")
    hop_kafka_python.close_scope(consumer)
    assert hoptrace.current_hop() is None
