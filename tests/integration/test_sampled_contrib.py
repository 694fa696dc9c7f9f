"""The production sampled setup, with OpenTelemetry's contrib instrumentation beside hoptrace's,
for every client, in both orders, through the real brokers.

test_contrib_coexistence.py checks the take-over with an always-on sampler: every hop makes
spans. In production the provider samples, ``ParentBased(TraceIdRatioBased(r))``, and most
transactions are dropped. For those hoptrace takes fast paths that make no span objects at all
(the dropped send, the dropped consume scope, partly in C). Those paths must keep the same
promise with contrib instrumentation active beside them: one ``traceparent`` per message, the
handler in the producer's trace with the producer's sampling decision and the transaction ID
(and its baggage) of its publish, the consumer's context restored after the handler, nothing
exported for a dropped transaction, and contrib's instrumentor kept off (one warning).

For each client (pika, aio-pika, confluent-kafka, kafka-python, aiokafka; kombu has no contrib
instrumentor, Celery is covered by the coexistence test) and each order ("contrib-first",
"hoptrace-first") :data:`MESSAGES` messages are published, each in a new
``hoptrace.transaction``, under a ``ParentBased(TraceIdRatioBased(0.5))`` provider, and
consumed. Per message the test checks:

- exactly one ``traceparent`` header (Kafka header lists can carry duplicates), in the trace
  of its transaction and with that transaction's sampling decision;
- the handler ran with that transaction's ID (``hoptrace.current_transaction_id()`` and the
  ``transaction.id`` baggage entry), its current span context in the header's trace with the
  header's sampled flag (inside hoptrace's CONSUMER span when sampled);

and over all of them: only hoptrace's spans are exported (no contrib instrumentation scope);
each sampled transaction has exactly one PRODUCER and one CONSUMER span (beside the
transaction's own INTERNAL span), the consumer a child of the producer; an unsampled one has
no span at all; some but not all transactions were sampled (at 0.5 over 40 transactions, all
or none has probability 2**-39, so both paths run);
after the handlers the consumer's context holds no span, baggage or transaction; exactly one
take-over warning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import brokers
import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from test_contrib_coexistence import (  # noqa: F401  (both, _delete_topics: fixtures)
    ORDERS,
    Both,
    _delete_topics,
    assert_one_warning,
    both,
    carried_transaction_ids,
    confluent_consumer,
    contrib_class,
    header_values,
    kafka_python_consumer,
    new_topic,
    unique,
)

import hoptrace

pytestmark = pytest.mark.integration

#: Messages (each in its own transaction) per client and order.
MESSAGES = 40
#: The sampler's ratio: half the transactions are sampled.
RATIO = 0.5

# ------------------------------------------------------------------------ the sampled SDK ---


@pytest.fixture
def sampled() -> Iterator[InMemorySpanExporter]:
    """The production provider, ``ParentBased(TraceIdRatioBased(RATIO))``, recording in memory
    (installed as tests/conftest.py's ``spans`` fixture installs its own, and restored)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(RATIO)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
        provider.shutdown()


# ------------------------------------------------------------------------- publish, handle ---


@dataclass(frozen=True)
class Published:
    """A transaction a message was published in: its ID and its root's trace and decision."""

    transaction_id: str
    trace_id: int
    sampled: bool


@dataclass(frozen=True)
class Handled:
    """What a handler saw: the message's key and headers, hoptrace's and OTel's context."""

    key: str
    headers: Any
    transaction_id: str | None
    baggage: dict[str, object]
    trace_id: int
    span_id: int
    sampled: bool

    @classmethod
    def now(cls, body: bytes, headers: Any) -> Handled:
        sc = trace.get_current_span().get_span_context()
        return cls(body.decode(), headers, hoptrace.current_transaction_id(),
                   dict(baggage.get_all()), sc.trace_id, sc.span_id, sc.trace_flags.sampled)


class Publisher:
    """Publishes each message in a new transaction, recording the transaction by key."""

    def __init__(self) -> None:
        self.sent: dict[str, Published] = {}

    def transactions(self) -> Iterator[str]:
        """Each message's key, yielded inside its own new transaction (publish it then)."""
        for i in range(MESSAGES):
            key = f"m{i}"
            with hoptrace.transaction("edge") as tx:
                root = trace.get_current_span().get_span_context()
                yield key
            assert tx.transaction_id
            self.sent[key] = Published(tx.transaction_id, root.trace_id, root.trace_flags.sampled)


def assert_restored() -> None:
    """The consumer's context after the handlers: no span, baggage or transaction left."""
    assert not trace.get_current_span().get_span_context().is_valid
    assert dict(baggage.get_all()) == {}
    assert hoptrace.current_transaction_id() is None


def describe(spans: list[ReadableSpan]) -> str:
    return ", ".join(
        f"{s.kind.name} {s.name!r} ({s.instrumentation_scope.name}) "
        f"{s.context.trace_id:032x}" for s in spans
    )


def assert_sampled_hops(exporter: InMemorySpanExporter, sent: dict[str, Published],
                        handled: list[Handled], caplog: pytest.LogCaptureFixture,
                        contrib: type) -> None:
    assert len(sent) == MESSAGES
    assert sorted(h.key for h in handled) == sorted(sent), "each message handled once"
    spans = list(exporter.get_finished_spans())
    assert all(s.instrumentation_scope.name == "hoptrace" for s in spans), describe(spans)

    sampled = {p.trace_id for p in sent.values() if p.sampled}
    assert 0 < len(sampled) < MESSAGES, f"{len(sampled)} of {MESSAGES} sampled"
    # Nothing at all recorded in a dropped transaction's trace (or in any other trace).
    stray = [s for s in spans if s.context.trace_id not in sampled]
    assert not stray, f"spans outside the sampled transactions: {describe(stray)}"
    assert {s.context.trace_id for s in spans} == sampled, "a sampled transaction unrecorded"

    for got in handled:
        pub = sent[got.key]
        # One traceparent, in the transaction's trace, with its decision.
        traceparents = header_values(got.headers, "traceparent")
        assert len(traceparents) == 1, f"{got.key}: traceparent headers {traceparents}"
        _, trace_hex, span_hex, flags_hex = traceparents[0].split("-")
        header_sampled = bool(int(flags_hex, 16) & 1)
        assert int(trace_hex, 16) == pub.trace_id, got.key
        assert header_sampled == pub.sampled, got.key
        assert set(carried_transaction_ids(got.headers)) == {pub.transaction_id}, got.headers

        # The handler: the transaction of its publish, in the producer's trace and decision.
        assert got.transaction_id == pub.transaction_id, got.key
        assert got.baggage.get("transaction.id") == pub.transaction_id, got.baggage
        assert (got.trace_id, got.sampled) == (int(trace_hex, 16), header_sampled), got.key

        mine = [s for s in spans if s.context.trace_id == pub.trace_id]
        if not pub.sampled:
            assert not mine
            assert got.span_id != int(span_hex, 16)  # a dropped child of the send, not it
            continue
        producers = [s for s in mine if s.kind == SpanKind.PRODUCER]
        consumers = [s for s in mine if s.kind == SpanKind.CONSUMER]
        assert len(producers) == 1 and len(consumers) == 1, describe(mine)
        (send,), (process,) = producers, consumers
        # Beside them, the transaction's own (INTERNAL) span alone, the send's parent.
        edges = [s for s in mine if s not in (send, process)]
        assert [(s.kind, s.name) for s in edges] == [(SpanKind.INTERNAL, "edge")], describe(mine)
        assert send.parent is not None and send.parent.span_id == edges[0].context.span_id
        assert int(span_hex, 16) == send.context.span_id
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert got.span_id == process.context.span_id  # inside hoptrace's span, alone

    assert_one_warning(caplog, contrib)


# ------------------------------------------------------------------------------------ pika ---


@pytest.mark.parametrize("order", ORDERS)
def test_pika(
    order: str, amqp_url: str, sampled: InMemorySpanExporter,
    both: Both,  # noqa: F811  (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    pika = pytest.importorskip("pika")
    contrib = contrib_class("opentelemetry.instrumentation.pika", "PikaInstrumentor")
    import hoptrace.pika

    both(order, contrib(), hoptrace.pika.instrument, hoptrace.pika.uninstrument)
    queue = unique("pika", order)
    publisher = Publisher()
    handled: list[Handled] = []

    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        handled.append(Handled.now(body, dict(props.headers or {})))
        ch.basic_ack(method.delivery_tag)

    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=True)
        for key in publisher.transactions():
            channel.basic_publish("", queue, key.encode())
        channel.basic_consume(queue, handler)
        deadline = time.monotonic() + 15
        while len(handled) < MESSAGES and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
            assert_restored()  # after each round of handlers
    assert_restored()
    assert_sampled_hops(sampled, publisher.sent, handled, caplog, contrib)


# -------------------------------------------------------------------------------- aio-pika ---


@pytest.mark.parametrize("order", ORDERS)
def test_aio_pika(
    order: str, amqp_url: str, sampled: InMemorySpanExporter,
    both: Both,  # noqa: F811  (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    contrib = contrib_class("opentelemetry.instrumentation.aio_pika", "AioPikaInstrumentor")
    import hoptrace.aio_pika

    both(order, contrib(), hoptrace.aio_pika.instrument, hoptrace.aio_pika.uninstrument)
    publisher = Publisher()
    handled: list[Handled] = []

    async def run() -> None:
        connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique("aio-pika", order), auto_delete=True)
            for key in publisher.transactions():
                await channel.default_exchange.publish(aio_pika.Message(key.encode()),
                                                       routing_key=queue.name)
            tasks: list[asyncio.Task[Any]] = []
            all_in = asyncio.get_running_loop().create_future()

            async def on_message(message: Any) -> None:
                async with message.process():
                    handled.append(Handled.now(message.body, dict(message.headers or {})))
                    tasks.append(asyncio.current_task())  # type: ignore[arg-type]
                    if len(handled) == MESSAGES and not all_in.done():
                        all_in.set_result(None)

            tag = await queue.consume(on_message)
            try:
                await asyncio.wait_for(all_in, 15)
                # The tasks that ran the callbacks, with every wrapper around them: once they
                # are done, every span of the deliveries has ended.
                current = asyncio.current_task()
                await asyncio.wait_for(asyncio.gather(*(
                    asyncio.shield(t) for t in tasks if t is not current)), 15)
            finally:
                await queue.cancel(tag)
            assert_restored()  # the consumer's own task

    asyncio.run(run())
    assert_restored()
    assert_sampled_hops(sampled, publisher.sent, handled, caplog, contrib)


# -------------------------------------------------------------------------------- aiokafka ---


@pytest.mark.parametrize("order", ORDERS)
def test_aiokafka(
    order: str, kafka_bootstrap: str, sampled: InMemorySpanExporter,
    both: Both,  # noqa: F811  (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    contrib = contrib_class("opentelemetry.instrumentation.aiokafka", "AIOKafkaInstrumentor")
    import hoptrace.aiokafka

    both(order, contrib(), hoptrace.aiokafka.instrument, hoptrace.aiokafka.uninstrument)
    topic = new_topic("aiokafka", order)
    publisher = Publisher()
    handled: list[Handled] = []

    async def run() -> None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1)
        await producer.start()
        try:
            pending = []
            for key in publisher.transactions():
                pending.append(await producer.send(topic, key.encode()))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap,
                                             auto_offset_reset="earliest",
                                             enable_auto_commit=False)
        consumer.assign([aiokafka.TopicPartition(topic, 0)])
        await consumer.start()
        try:
            # Awaited in this task: the process scope getone() opens is this task's context
            # until the next getone() or stop().
            for _ in range(MESSAGES):
                msg = await consumer.getone()
                handled.append(Handled.now(msg.value, list(msg.headers)))  # the handler
        finally:
            await consumer.stop()  # closes the process scope getone() left open
        assert_restored()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert_restored()
    assert_sampled_hops(sampled, publisher.sent, handled, caplog, contrib)


# ------------------------------------------------------------------------- confluent-kafka ---


@pytest.mark.parametrize("order", ORDERS)
def test_confluent_kafka(
    order: str, kafka_bootstrap: str, sampled: InMemorySpanExporter,
    both: Both,  # noqa: F811  (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    contrib = contrib_class("opentelemetry.instrumentation.confluent_kafka",
                            "ConfluentKafkaInstrumentor")
    import hoptrace.confluent_kafka

    both(order, contrib(), hoptrace.confluent_kafka.instrument,
         hoptrace.confluent_kafka.uninstrument)
    topic = new_topic("confluent", order)
    publisher = Publisher()
    handled: list[Handled] = []

    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
    for i, key in enumerate(publisher.transactions()):
        # Half the sends with headers of the caller's, half with none.
        producer.produce(topic, key.encode(), headers=[("x-app", b"1")] if i % 2 else None)
    assert producer.flush(15) == 0
    consumer = confluent_consumer(confluent_kafka, kafka_bootstrap, topic)
    try:
        deadline = time.monotonic() + 15
        while len(handled) < MESSAGES and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                handled.append(Handled.now(msg.value(), list(msg.headers() or [])))
    finally:
        consumer.close()  # closes the process scope poll() left open
    assert_restored()
    assert_sampled_hops(sampled, publisher.sent, handled, caplog, contrib)
    for got in handled:  # the caller's header kept, once
        assert header_values(got.headers, "x-app") == (["1"] if int(got.key[1:]) % 2 else [])


# ---------------------------------------------------------------------------- kafka-python ---


@pytest.mark.parametrize("order", ORDERS)
def test_kafka_python(
    order: str, kafka_bootstrap: str, sampled: InMemorySpanExporter,
    both: Both,  # noqa: F811  (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = pytest.importorskip("kafka")
    contrib = contrib_class("opentelemetry.instrumentation.kafka", "KafkaInstrumentor")
    import hoptrace.kafka_python

    both(order, contrib(), hoptrace.kafka_python.instrument, hoptrace.kafka_python.uninstrument)
    topic = new_topic("kafka-python", order)
    publisher = Publisher()
    handled: list[Handled] = []

    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1)
    try:
        futures = [producer.send(topic, key.encode()) for key in publisher.transactions()]
        for future in futures:
            future.get(15)
        producer.flush(15)
    finally:
        producer.close(5)
    consumer = kafka_python_consumer(kafka, kafka_bootstrap, topic)
    try:
        for msg in consumer:
            handled.append(Handled.now(msg.value, list(msg.headers or [])))
            if len(handled) == MESSAGES:
                break
    finally:
        consumer.close()
    assert_restored()
    assert_sampled_hops(sampled, publisher.sent, handled, caplog, contrib)
