"""Interop with opentelemetry-instrumentation-pika, both directions, one trace each way."""

from __future__ import annotations

import time
import uuid
from typing import Any

import brokers
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

import hoptrace
import hoptrace.pika

pika = pytest.importorskip("pika")
otel_pika = pytest.importorskip("opentelemetry.instrumentation.pika")

pytestmark = pytest.mark.integration


def drain(connection: Any, until: Any) -> None:
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)


def otel_spans(spans: Any, kind: SpanKind) -> list[Any]:
    return [s for s in spans.all() if s.kind == kind
            and s.instrumentation_scope.name.startswith("opentelemetry.instrumentation.pika")]


def test_otel_producer_to_hoptrace_consumer(amqp_url: str, spans: Any) -> None:
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        producer = conn.channel()
        otel_pika.PikaInstrumentor.instrument_channel(producer)
        consumer = hoptrace.pika.instrument_channel(conn.channel())
        queue = f"hoptrace-interop-{uuid.uuid4().hex[:10]}"
        consumer.queue_declare(queue, auto_delete=True)
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with trace.get_tracer("test").start_as_current_span("edge"):
                producer.basic_publish("", queue, b"x")
        finally:
            otel_context.detach(token)
        seen: list[tuple[str | None, object, str | None]] = []

        def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen.append((hoptrace.current_trace_id(), baggage.get_baggage("tenant"),
                         hoptrace.current_transaction_id()))
            ch.basic_ack(method.delivery_tag)

        consumer.basic_consume(queue, handler)
        drain(conn, lambda: bool(seen))
        otel_pika.PikaInstrumentor.uninstrument_channel(producer)
    (send,) = otel_spans(spans, SpanKind.PRODUCER)
    process = spans.one(f"process {queue}")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert seen[0][0] == f"{send.context.trace_id:032x}"
    assert seen[0][1] == "acme"
    assert seen[0][2]  # no transaction header from OTel: hoptrace starts one


def test_hoptrace_producer_to_otel_consumer(amqp_url: str, spans: Any) -> None:
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        producer = hoptrace.pika.instrument_channel(conn.channel())
        consumer = conn.channel()
        queue = f"hoptrace-interop-{uuid.uuid4().hex[:10]}"
        consumer.queue_declare(queue, auto_delete=True)
        otel_pika.PikaInstrumentor.instrument_channel(consumer)
        with hoptrace.transaction("edge") as tx:
            producer.basic_publish("", queue, b"x")
        seen: list[tuple[str | None, object]] = []

        def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen.append((hoptrace.current_trace_id(), baggage.get_baggage("transaction.id")))
            ch.basic_ack(method.delivery_tag)

        consumer.basic_consume(queue, handler)
        drain(conn, lambda: bool(seen))
        otel_pika.PikaInstrumentor.uninstrument_channel(consumer)
    send = spans.one(f"send {queue}")
    (process,) = otel_spans(spans, SpanKind.CONSUMER)
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert seen == [(f"{send.context.trace_id:032x}", tx.transaction_id)]
