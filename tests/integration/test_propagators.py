"""Real hops under non-W3C propagators (B3, Jaeger), and a hop through OTel contrib only.

* With the global propagator set to B3 or Jaeger, a hoptrace-instrumented pika hop and an
  aiokafka hop send that propagator's headers (and no ``traceparent``); the consumer span is
  the producer span's child and the handler runs in the caller's transaction.
* An OTel-instrumented hop in the middle: a hoptrace pika producer, a relay that consumes
  with aio-pika and publishes with kafka-python under OpenTelemetry contrib's instrumentations
  only, and a hoptrace aiokafka consumer. The transaction ID crosses the relay in the W3C
  baggage (or, with the ``hoptrace`` propagator configured, in its own header too).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest
from opentelemetry import baggage, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import hoptrace
import hoptrace.aio_pika
import hoptrace.aiokafka
import hoptrace.kafka_python
import hoptrace.pika
from hoptrace.core.propagator import configured_textmap

pika = pytest.importorskip("pika")
aio_pika = pytest.importorskip("aio_pika")
aiokafka = pytest.importorskip("aiokafka")
kafka = pytest.importorskip("kafka")
b3 = pytest.importorskip("opentelemetry.propagators.b3")
jaeger = pytest.importorskip("opentelemetry.propagators.jaeger")
otel_aio_pika = pytest.importorskip("opentelemetry.instrumentation.aio_pika")
otel_kafka = pytest.importorskip("opentelemetry.instrumentation.kafka")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

pytestmark = pytest.mark.integration

TX_HEADER = "x-transaction-id"
CREATED: list[str] = []

# name -> (make the propagator, the headers it must write)
PROPAGATORS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "b3multi": (lambda: b3.B3MultiFormat(), ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled")),
    "jaeger": (lambda: jaeger.JaegerPropagator(), ("uber-trace-id",)),
}


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


@pytest.fixture(autouse=True)
def textmap() -> Iterator[None]:
    """Put back whatever global propagator was in force before the test."""
    saved = propagate.get_global_textmap()
    try:
        yield
    finally:
        propagate.set_global_textmap(saved)


@pytest.fixture(autouse=True)
def no_context_left_behind() -> Iterator[None]:
    yield
    assert hoptrace.current_transaction_id() is None, "a scope stayed attached"


@pytest.fixture
def hoptrace_pika() -> Iterator[None]:
    hoptrace.pika.instrument()
    try:
        yield
    finally:
        hoptrace.pika.uninstrument()


@pytest.fixture
def hoptrace_aiokafka() -> Iterator[None]:
    hoptrace.aiokafka.instrument()
    try:
        yield
    finally:
        hoptrace.aiokafka.uninstrument()


def use_propagator(name: str) -> TextMapPropagator:
    textmap: TextMapPropagator = PROPAGATORS[name][0]()
    propagate.set_global_textmap(textmap)
    assert configured_textmap() is textmap
    return textmap


def text_headers(headers: Any) -> dict[str, str]:
    """A message's headers (dict or Kafka pair list) as lowercase text."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    return {
        str(k).lower(): v.decode() if isinstance(v, (bytes, bytearray)) else str(v)
        for k, v in pairs
    }


def drain(connection: Any, until: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert until(), "no message arrived in time"


def new_topic(tag: str) -> str:
    topic = f"hoptrace-prop-{tag}-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    return topic


async def first_record(bootstrap: str, topic: str) -> dict[str, Any]:
    """What the handler of the first record of ``topic`` (partition 0) sees, in an
    ``async for`` loop over a consumer hoptrace.aiokafka instruments."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()

    async def handle() -> dict[str, Any]:
        async for msg in consumer:
            return {
                "headers": text_headers(msg.headers),
                "trace_id": hoptrace.current_trace_id(),
                "span_id": hoptrace.current_span_id(),
                "tx": hoptrace.current_transaction_id(),
            }
        raise AssertionError("the consumer stopped before a record arrived")

    try:
        return await asyncio.wait_for(handle(), 15)
    finally:
        await consumer.stop()


def assert_written_by(name: str, headers: dict[str, str], tx: str) -> None:
    for key in PROPAGATORS[name][1]:
        assert key in headers, f"{key} missing from {sorted(headers)}"
    assert "traceparent" not in headers
    assert "tracestate" not in headers
    # These propagators carry no baggage: the transaction header carries the ID instead.
    assert headers[TX_HEADER] == tx


# ------------------------------------------------------------- B3 / Jaeger, one hop each ---


@pytest.mark.parametrize("name", list(PROPAGATORS))
def test_pika_hop(name: str, amqp_url: str, spans: Any, hoptrace_pika: None) -> None:
    use_propagator(name)
    seen: list[dict[str, Any]] = []
    params = pika.URLParameters(brokers.pika_url(amqp_url))
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        queue = f"hoptrace-prop-{uuid.uuid4().hex[:10]}"
        channel.queue_declare(queue, auto_delete=True)
        with hoptrace.transaction("checkout") as tx:
            channel.basic_publish("", queue, b"order")

        def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen.append({
                "headers": text_headers(props.headers),
                "trace_id": hoptrace.current_trace_id(),
                "span_id": hoptrace.current_span_id(),
                "tx": hoptrace.current_transaction_id(),
            })
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, handler)
        drain(conn, lambda: bool(seen))
    (got,) = seen
    assert tx.transaction_id is not None
    assert_written_by(name, got["headers"], tx.transaction_id)
    send = spans.one(f"send {queue}")
    process = spans.one(f"process {queue}")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert got["trace_id"] == f"{send.context.trace_id:032x}"
    assert got["span_id"] == f"{process.context.span_id:016x}"
    assert got["tx"] == tx.transaction_id


@pytest.mark.parametrize("name", list(PROPAGATORS))
def test_aiokafka_hop(name: str, kafka_bootstrap: str, spans: Any, hoptrace_aiokafka: None) -> None:
    use_propagator(name)
    topic = new_topic(name)

    async def run() -> tuple[str | None, dict[str, Any]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            with hoptrace.transaction("checkout") as tx:
                await producer.send_and_wait(topic, b"order", partition=0)
        finally:
            await producer.stop()
        return tx.transaction_id, await first_record(kafka_bootstrap, topic)

    tx, got = asyncio.run(run())
    assert tx is not None
    assert_written_by(name, got["headers"], tx)
    send = spans.one(f"send {topic}")
    process = spans.one(f"process {topic}")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert got["trace_id"] == f"{send.context.trace_id:032x}"
    assert got["span_id"] == f"{process.context.span_id:016x}"
    assert got["tx"] == tx


# ------------------------------------------------- an OTel-instrumented hop in the middle ---


@pytest.fixture
def contrib_relay() -> Iterator[None]:
    """contrib's aio-pika and kafka-python instrumentations on; hoptrace's for them off."""
    assert not hoptrace.aio_pika.is_instrumented()
    assert not hoptrace.kafka_python.instrumented()
    aio = otel_aio_pika.AioPikaInstrumentor()
    kp = otel_kafka.KafkaInstrumentor()
    aio.instrument()
    kp.instrument()
    try:
        assert aio.is_instrumented_by_opentelemetry and kp.is_instrumented_by_opentelemetry
        yield
    finally:
        kp.uninstrument()
        aio.uninstrument()


def _w3c_with_hoptrace() -> TextMapPropagator:
    return CompositePropagator([
        TraceContextTextMapPropagator(), W3CBaggagePropagator(), hoptrace.TransactionIdPropagator(),
    ])


@pytest.mark.parametrize("propagators", ["default", "w3c+hoptrace", "w3c+hoptrace+header"])
def test_otel_instrumented_hop_in_the_middle(
    propagators: str,
    amqp_url: str,
    kafka_bootstrap: str,
    spans: Any,
    hoptrace_pika: None,
    hoptrace_aiokafka: None,
    contrib_relay: None,
) -> None:
    if propagators == "default":
        propagate.set_global_textmap(
            CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        )
    else:
        propagate.set_global_textmap(_w3c_with_hoptrace())
    header_set = propagators.endswith("+header")
    if header_set:
        hoptrace.configure(transaction_header=TX_HEADER)
    assert configured_textmap() is None  # both are the W3C set: hoptrace's fast path
    queue = f"hoptrace-relay-{uuid.uuid4().hex[:10]}"
    topic = new_topic("relay")

    # 1. The caller: hoptrace's pika, inside a transaction.
    params = pika.URLParameters(brokers.pika_url(amqp_url))
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=False, arguments={"x-expires": 30_000})
        with hoptrace.transaction("checkout") as tx:
            caller_trace = hoptrace.current_trace_id()
            channel.basic_publish("", queue, b"order")
    assert tx.transaction_id is not None

    relay: dict[str, Any] = {}
    final: dict[str, Any] = {}
    kafka_producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap)

    async def run() -> None:
        # 2. The relay: contrib's aio-pika in, contrib's kafka-python out.
        done = asyncio.Event()
        connection = await aio_pika.connect(amqp_url)
        try:
            ch = await connection.channel()
            q = await ch.declare_queue(queue, auto_delete=False, arguments={"x-expires": 30_000})

            async def on_message(message: Any) -> None:
                relay["headers"] = text_headers(message.headers)
                relay["tx"] = hoptrace.current_transaction_id()
                relay["baggage"] = baggage.get_baggage("transaction.id")
                relay["trace_id"] = hoptrace.current_trace_id()
                kafka_producer.send(topic, b"order", partition=0).get(timeout=10)
                await message.ack()
                done.set()

            tag = await q.consume(on_message)
            await asyncio.wait_for(done.wait(), 15)
            await q.cancel(tag)
            await q.delete(if_unused=False, if_empty=False)
        finally:
            await connection.close()

        # 3. The final consumer: hoptrace's aiokafka.
        final.update(await first_record(kafka_bootstrap, topic))

    try:
        asyncio.run(run())
    finally:
        kafka_producer.close(timeout=5)

    # The relay handler, reached only through contrib, finds the caller's transaction.
    assert relay["tx"] == tx.transaction_id
    assert relay["baggage"] == tx.transaction_id
    assert relay["trace_id"] == caller_trace
    # hoptrace's pika wrote the ID as the baggage entry, and the header only when set.
    assert f"transaction.id={tx.transaction_id}" in relay["headers"]["baggage"].split(",")
    assert relay["headers"].get(TX_HEADER) == (tx.transaction_id if header_set else None)
    # The record contrib's kafka-python sent: W3C headers; the ID in the baggage, and in
    # hoptrace's own header only when the hoptrace propagator is configured and the header set.
    record = final["headers"]
    assert "traceparent" in record
    assert f"transaction.id={tx.transaction_id}" in record["baggage"].split(",")
    if header_set:
        assert record[TX_HEADER] == tx.transaction_id
    else:
        assert TX_HEADER not in record
    # The final handler: same transaction, same trace.
    assert final["tx"] == tx.transaction_id
    assert final["trace_id"] == caller_trace

    # One trace, one parent chain: pika send -> contrib aio-pika -> contrib kafka -> process.
    send = spans.one(f"send {queue}")
    (aio_consumer,) = [s for s in spans.all() if s.kind == SpanKind.CONSUMER
                       and s.instrumentation_scope.name.startswith(otel_aio_pika.__name__)]
    (kafka_send,) = [s for s in spans.all() if s.kind == SpanKind.PRODUCER
                     and s.instrumentation_scope.name.startswith(otel_kafka.__name__)]
    process = spans.one(f"process {topic}")
    assert aio_consumer.parent is not None and aio_consumer.parent.span_id == send.context.span_id
    assert kafka_send.parent is not None and kafka_send.parent.span_id == aio_consumer.context.span_id
    assert process.parent is not None and process.parent.span_id == kafka_send.context.span_id
    assert final["span_id"] == f"{process.context.span_id:016x}"
    assert {s.context.trace_id for s in (send, aio_consumer, kafka_send, process)} == {
        int(caller_trace or "0", 16)
    }
    # hoptrace made no span for the relay's clients.
    assert not [s for s in spans.all() if s.name == f"process {queue}"]
    assert len(spans.named(f"send {topic}")) == 0
