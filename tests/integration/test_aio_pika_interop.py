"""Interop with opentelemetry-instrumentation-aio-pika, both directions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import brokers
import pytest
import pytest_asyncio
from opentelemetry import baggage
from opentelemetry.trace import SpanKind

import hoptrace
import hoptrace.aio_pika

aio_pika = pytest.importorskip("aio_pika")
otel_aio_pika = pytest.importorskip("opentelemetry.instrumentation.aio_pika")

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def channel(amqp_url: str) -> AsyncIterator[Any]:
    connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def otel_span(spans: Any, kind: SpanKind) -> Any:
    (span,) = [s for s in spans.all() if s.kind == kind
               and s.instrumentation_scope.name.startswith("opentelemetry.instrumentation")]
    return span


async def consume_one(queue: Any) -> tuple[str | None, object, str | None]:
    done: asyncio.Future[tuple[str | None, object, str | None]] = (
        asyncio.get_running_loop().create_future())

    async def on_message(message: Any) -> None:
        async with message.process():
            done.set_result((hoptrace.current_trace_id(), baggage.get_baggage("transaction.id"),
                             hoptrace.current_transaction_id()))

    tag = await queue.consume(on_message)
    try:
        return await asyncio.wait_for(done, 10)
    finally:
        await queue.cancel(tag)


async def test_otel_producer_to_hoptrace_consumer(channel: Any, spans: Any) -> None:
    queue = await channel.declare_queue(f"hoptrace-interop-{uuid.uuid4().hex[:10]}",
                                        auto_delete=True)
    instrumentor = otel_aio_pika.AioPikaInstrumentor()
    instrumentor.instrument()
    try:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    finally:
        instrumentor.uninstrument()
    hoptrace.aio_pika.instrument()
    try:
        trace_id, _, tx = await consume_one(queue)
    finally:
        hoptrace.aio_pika.uninstrument()
    send = otel_span(spans, SpanKind.PRODUCER)
    process = spans.one(f"process {queue.name}")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert trace_id == f"{send.context.trace_id:032x}"
    assert tx


async def test_hoptrace_producer_to_otel_consumer(channel: Any, spans: Any) -> None:
    queue = await channel.declare_queue(f"hoptrace-interop-{uuid.uuid4().hex[:10]}",
                                        auto_delete=True)
    hoptrace.aio_pika.instrument()
    try:
        with hoptrace.transaction("edge") as tx:
            await channel.default_exchange.publish(aio_pika.Message(b"x"),
                                                   routing_key=queue.name)
    finally:
        hoptrace.aio_pika.uninstrument()
    instrumentor = otel_aio_pika.AioPikaInstrumentor()
    instrumentor.instrument()
    try:
        trace_id, mirrored_tx, _ = await consume_one(queue)
    finally:
        instrumentor.uninstrument()
    send = spans.one(f"send {queue.name}")
    process = otel_span(spans, SpanKind.CONSUMER)
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert trace_id == f"{send.context.trace_id:032x}"
    assert mirrored_tx == tx.transaction_id
