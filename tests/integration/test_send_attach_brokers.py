"""Propagation-only sends on real brokers: the user's code inside ``send()`` logs in the trace.

Without a span or metric to record, kafka-python's and aiokafka's ``send()``, kombu's
``Producer.publish`` and aio-pika's ``Exchange.publish`` attach the send's context around
the client's call without a send scope (``hop.unrecorded_send``). A serializer's log line
must still carry the trace ID and transaction ID that the delivered message carries, and
nothing may stay attached after the send. No SDK: the trace is minted at the send.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.logs import TransactionFilter

pytestmark = pytest.mark.integration

log = logging.getLogger("hoptrace.tests.serializer")


class Captured(logging.Handler):
    """The send's log lines (the serializer's, aio-pika's own), with hoptrace's IDs."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(TransactionFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name or record.getMessage().startswith("Publishing message"):
            self.records.append(record)


@pytest.fixture
def captured(no_sdk: None) -> Iterator[Captured]:
    """Propagation-only, no SDK; the serializer's and aio-pika's publish log lines."""
    hoptrace.configure(propagation_only=True)
    handler = Captured()
    loggers = [log, logging.getLogger("aio_pika.exchange")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def serialize(value: Any) -> bytes:
    log.info("serializing")
    return value if isinstance(value, bytes) else str(value).encode()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def assert_logged_in(headers: dict[str, str], captured: Captured, transaction: str | None) -> None:
    """The serializer's one log line carries the delivered message's trace and transaction."""
    (record,) = captured.records
    trace_id = headers["traceparent"].split("-")[1]
    entries = dict(item.split("=", 1) for item in headers["baggage"].split(","))
    assert record.trace_id == trace_id  # type: ignore[attr-defined]
    assert record.transaction_id == entries["transaction.id"]  # type: ignore[attr-defined]
    if transaction is not None:
        assert record.transaction_id == transaction  # type: ignore[attr-defined]
    assert hoptrace.current_transaction_id() is None  # nothing left attached


@pytest.mark.parametrize("transaction", [None, "order-17"])
def test_kafka_python_serializer_logs_in_the_send_context(
    captured: Captured, kafka_bootstrap: str, transaction: str | None
) -> None:
    kafka = pytest.importorskip("kafka")
    import hoptrace.kafka_python as hkp

    topic = f"hoptrace-attach-kpy-{uuid.uuid4().hex[:10]}"
    hkp.instrument()
    try:
        producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap,
                                       value_serializer=serialize, linger_ms=1)
        try:
            if transaction is None:
                producer.send(topic, b"v").get(15)
            else:
                with hoptrace.transaction(transaction_id=transaction):
                    future = producer.send(topic, b"v")
                future.get(15)
        finally:
            producer.close(5)
    finally:
        hkp.uninstrument()
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_bootstrap,
                                   auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        consumer.assign([kafka.TopicPartition(topic, 0)])
        (record,) = [r for _, r in zip(range(1), consumer, strict=False)]
    finally:
        consumer.close()
    assert_logged_in({k: text(v) for k, v in record.headers}, captured, transaction)


def test_aiokafka_serializer_logs_in_the_send_context(
    captured: Captured, kafka_bootstrap: str
) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import hoptrace.aiokafka as hak

    topic = f"hoptrace-attach-aio-{uuid.uuid4().hex[:10]}"

    async def run() -> Any:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                             value_serializer=serialize)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                             auto_offset_reset="earliest")
        await consumer.start()
        try:
            return await asyncio.wait_for(consumer.getone(), 15)
        finally:
            await consumer.stop()

    hak.instrument()
    try:
        record = asyncio.run(run())
    finally:
        hak.uninstrument()
    assert_logged_in({k: text(v) for k, v in record.headers}, captured, None)


def test_kombu_serializer_logs_in_the_send_context(captured: Captured, amqp_url: str) -> None:
    kombu = pytest.importorskip("kombu")
    from kombu.serialization import register, unregister

    import hoptrace.kombu as hko

    name = f"hoptrace-attach-{uuid.uuid4().hex[:10]}"
    register("hoptrace-test", serialize, lambda body: body, content_type="application/x-test",
             content_encoding="binary")
    hko.instrument()
    try:
        with kombu.Connection(amqp_url) as connection:
            queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key="k",
                                auto_delete=True)
            bound = queue(connection.channel())
            bound.declare()
            try:
                with connection.Producer() as producer:
                    producer.publish(b"v", exchange=queue.exchange, routing_key="k",
                                     serializer="hoptrace-test", headers={"k": "v"})
                message = None
                deadline = time.monotonic() + 10
                while message is None and time.monotonic() < deadline:
                    message = bound.get(no_ack=True)
                    if message is None:
                        time.sleep(0.05)
                assert message is not None
                headers = {k: text(v) for k, v in message.headers.items()}
            finally:
                bound.delete()
    finally:
        hko.uninstrument()
        unregister("hoptrace-test")
    assert headers["k"] == "v"
    assert_logged_in(headers, captured, None)


def test_aio_pika_publish_logs_in_the_send_context(captured: Captured, amqp_url: str) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    import hoptrace.aio_pika as hap

    async def run() -> tuple[Any, Any]:
        connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"hoptrace-attach-{uuid.uuid4().hex[:10]}",
                                                auto_delete=True)
            message = aio_pika.Message(b"v", headers={"k": "v"})
            with hoptrace.transaction(transaction_id="order-18"):  # (its publish logs)
                await channel.default_exchange.publish(message, routing_key=queue.name)
            assert hoptrace.current_transaction_id() is None
            got = await queue.get(timeout=10)
            await got.ack()
            return message, got
        finally:
            await connection.close()

    hap.instrument()
    try:
        sent, got = asyncio.run(run())
    finally:
        hap.uninstrument()
    assert sent.headers == {"k": "v"}  # the caller's message is never changed
    headers = {k: text(v) for k, v in got.headers.items()}
    assert headers["k"] == "v"
    assert_logged_in(headers, captured, "order-18")
