"""Interop with opentelemetry-instrumentation-aiokafka through a real broker: a hoptrace
producer feeds an OTel-instrumented consumer, and an OTel-instrumented producer feeds a
hoptrace consumer; either way the hop is one trace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest
from opentelemetry.trace import SpanKind

import hoptrace
import hoptrace.aiokafka as hk

aiokafka = pytest.importorskip("aiokafka")
otel_aiokafka = pytest.importorskip("opentelemetry.instrumentation.aiokafka")
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

pytestmark = pytest.mark.integration


CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    """Delete every topic this module created."""
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


@pytest.fixture
def otel(spans: Any) -> Iterator[Any]:
    instrumentor = otel_aiokafka.AIOKafkaInstrumentor()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def consumer_for(bootstrap: str, topic: str) -> Any:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    return consumer


def test_hoptrace_producer_to_otel_consumer(kafka_bootstrap: str, spans: Any, otel: Any) -> None:
    topic = f"hoptrace-interop-a-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)

    async def run() -> None:
        producer = hk.TracedProducer(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap))
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v")
        finally:
            await producer.stop()
        otel.instrument()  # OTel on the consumer side only
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        try:
            msg = await consumer.getone()
            assert [k for k, _ in msg.headers].count("traceparent") == 1
        finally:
            await consumer.stop()

    asyncio.run(run())
    send = spans.one(f"send {topic}")
    otel_consumers = [s for s in spans.all() if s.kind == SpanKind.CONSUMER]
    assert len(otel_consumers) == 1
    assert otel_consumers[0].context.trace_id == send.context.trace_id
    assert otel_consumers[0].parent is not None
    assert otel_consumers[0].parent.trace_id == send.context.trace_id


def test_otel_producer_to_hoptrace_consumer(kafka_bootstrap: str, spans: Any, otel: Any) -> None:
    topic = f"hoptrace-interop-b-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)

    async def run() -> tuple[str | None, str | None]:
        otel.instrument()  # OTel on the producer side only
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v")
        finally:
            await producer.stop()
        otel.uninstrument()
        consumer = hk.TracedConsumer(consumer_for(kafka_bootstrap, topic))
        async with consumer:
            async for _msg in consumer:
                return hoptrace.current_trace_id(), hoptrace.current_span_id()
        return None, None

    trace_id, span_id = asyncio.run(run())
    otel_send = [s for s in spans.all() if s.kind == SpanKind.PRODUCER]
    assert len(otel_send) == 1
    process = spans.one(f"process {topic}")
    assert process.parent is not None and process.parent.span_id == otel_send[0].context.span_id
    assert trace_id == f"{otel_send[0].context.trace_id:032x}"
    assert span_id == f"{process.context.span_id:016x}"  # the handler ran inside it
