"""The core API alone through each real broker: raw AMQP headers (pika), kombu on Redis,
Kafka record headers (aiokafka). Producer and consumer share the trace and transaction ID,
and the consumer span's parent is the producer span."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import brokers
import pytest

import hoptrace

pytestmark = pytest.mark.integration


def assert_one_hop(spans: Any, destination_send: str, destination_process: str, tx: str,
                   seen_tx: str | None, seen_trace: str | None) -> None:
    send = spans.one(f"send {destination_send}")
    process = spans.one(f"process {destination_process}")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert seen_trace == f"{send.context.trace_id:032x}"
    assert seen_tx == tx


def test_pika_raw_headers(amqp_url: str, spans: Any) -> None:
    pika = pytest.importorskip("pika")
    queue = f"hoptrace-smoke-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url)))
    try:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=True)
        with hoptrace.transaction("edge") as tx:
            with hoptrace.produce_scope({}, f"amq.default:{queue}", "rabbitmq") as send:
                channel.basic_publish(
                    "", queue, b"hello", pika.BasicProperties(headers=send.carrier)
                )
        method, props, body = None, None, None
        for _ in range(50):
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                break
            conn.sleep(0.1)
        assert body == b"hello"
        with hoptrace.consume_scope(props.headers, f"amq.default:{queue}:{queue}", "rabbitmq"):
            seen = hoptrace.current_transaction_id(), hoptrace.current_trace_id()
    finally:
        conn.close()
    assert_one_hop(spans, f"amq.default:{queue}", f"amq.default:{queue}:{queue}",
                   tx.transaction_id or "", *seen)


def test_kombu_on_redis(redis_url: str, spans: Any) -> None:
    kombu = pytest.importorskip("kombu")
    name = f"hoptrace-smoke-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)
    received: list[tuple[str | None, str | None]] = []
    with kombu.Connection(redis_url) as conn:
        with hoptrace.transaction("edge") as tx:
            with hoptrace.produce_scope({}, name, "redis") as send:
                conn.Producer().publish(
                    {"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue],
                    headers=send.carrier,
                )

        def handle(body: Any, message: Any) -> None:
            with hoptrace.consume_scope(message.headers, f"{name}:{name}", "redis"):
                received.append((hoptrace.current_transaction_id(), hoptrace.current_trace_id()))
            message.ack()

        with conn.Consumer(queue, callbacks=[handle]):
            conn.drain_events(timeout=10)
        queue(conn.channel()).delete()
    assert len(received) == 1
    assert_one_hop(spans, name, f"{name}:{name}", tx.transaction_id or "", *received[0])


def test_aiokafka_record_headers(kafka_bootstrap: str, spans: Any) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    topic = f"hoptrace-smoke-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[str, tuple[str | None, str | None]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        consumer = aiokafka.AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
            group_id=f"g-{topic}",
        )
        await producer.start()
        await consumer.start()
        try:
            async with hoptrace.transaction("edge") as tx:
                with hoptrace.produce_scope([], topic, "kafka") as send:
                    await producer.send_and_wait(topic, b"hello", headers=send.carrier)
            record = await asyncio.wait_for(consumer.getone(), timeout=60)
            with hoptrace.consume_scope(record.headers, topic, "kafka",
                                        sent_ns=record.timestamp * 10**6):
                seen = hoptrace.current_transaction_id(), hoptrace.current_trace_id()
            return tx.transaction_id or "", seen
        finally:
            await consumer.stop()
            await producer.stop()

    tx, seen = asyncio.run(main())
    assert_one_hop(spans, topic, topic, tx, *seen)
