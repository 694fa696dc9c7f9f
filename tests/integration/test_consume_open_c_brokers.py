"""Propagation-only consumes on real brokers, through the C module's one-call open.

A message whose headers carry a full context (traceparent, transaction ID, the baggage
mirroring it) is consumed by each instrumented client with no SDK: the handler must run in
that trace and transaction, see its hop, and leave nothing attached; and the open must be
the C module's (``hop._open_c``), where it is built. (Three messages each: the process's
first read finds the W3C propagator in force, and the C open serves the ones after it.)
Messages are published before the client is instrumented: an instrumented propagation-only
send would start its own trace.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.core import hop

pytestmark = pytest.mark.integration

TRACE = "5" * 32
TX = "e" * 32
N = 3
HEADERS = {"traceparent": f"00-{TRACE}-{'6' * 16}-01", "x-transaction-id": TX,
           "baggage": f"transaction.id={TX}"}


@pytest.fixture
def opened(no_sdk: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Propagation-only, no SDK; the C opens made (True: the C module opened the scope)."""
    hoptrace.configure(propagation_only=True)
    made: list[bool] = []
    real = hop._open_c

    def spy(*args: Any) -> Any:
        result = real(*args)
        made.append(result is not None and len(result) == 6)
        return result

    if real is not None:
        monkeypatch.setattr(hop, "_open_c", spy)
    yield made
    assert hoptrace.current_transaction_id() is None  # nothing left attached
    if real is not None:
        assert True in made, made


def seen() -> tuple[Any, ...]:
    found = hoptrace.current_hop()
    return (hoptrace.current_trace_id(), hoptrace.current_transaction_id(),
            found.destination if found is not None else None)


def pairs() -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in HEADERS.items()]


def produce_raw(bootstrap: str, topic: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for _ in range(N):
        producer.produce(topic, b"v", headers=pairs())
    assert producer.flush(15) == 0


def test_confluent_kafka_poll(opened: list[bool], kafka_bootstrap: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    import hoptrace.confluent_kafka as hc

    topic = f"hoptrace-openc-ck-{uuid.uuid4().hex[:10]}"
    produce_raw(kafka_bootstrap, topic)
    consumer = hc.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic,
                            "auto.offset.reset": "earliest"})
    consumer.assign([confluent_kafka.TopicPartition(topic, 0,
                                                    confluent_kafka.OFFSET_BEGINNING)])
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < N and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(seen())
        hc.close_scope(consumer)
    finally:
        consumer.close()
    assert got == [(TRACE, TX, topic)] * N


def test_kafka_python_next(opened: list[bool], kafka_bootstrap: str) -> None:
    kafka = pytest.importorskip("kafka")
    import hoptrace.kafka_python as hkp

    topic = f"hoptrace-openc-kp-{uuid.uuid4().hex[:10]}"
    produce_raw(kafka_bootstrap, topic)
    hkp.instrument()
    try:
        consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_bootstrap,
                                       auto_offset_reset="earliest", consumer_timeout_ms=15000)
        try:
            consumer.assign([kafka.TopicPartition(topic, 0)])
            got = []
            for _ in range(N):
                next(consumer)
                got.append(seen())
        finally:
            consumer.close()
    finally:
        hkp.uninstrument()
    assert got == [(TRACE, TX, topic)] * N


def test_aiokafka_getone(opened: list[bool], kafka_bootstrap: str) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import hoptrace.aiokafka as hak

    topic = f"hoptrace-openc-ak-{uuid.uuid4().hex[:10]}"
    produce_raw(kafka_bootstrap, topic)

    async def run() -> Any:
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                             auto_offset_reset="earliest")
        await consumer.start()
        got = []
        try:
            for _ in range(N):
                await consumer.getone()  # (in this task: its scope is held here)
                got.append(seen())
            return got
        finally:
            await consumer.stop()

    hak.instrument()
    try:
        got = asyncio.run(run())
    finally:
        hak.uninstrument()
    assert got == [(TRACE, TX, topic)] * N


def test_pika_basic_consume(opened: list[bool], amqp_url: str) -> None:
    pika = pytest.importorskip("pika")
    import hoptrace.pika as hp

    queue = f"hoptrace-openc-{uuid.uuid4().hex[:10]}"
    got: list[Any] = []
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        channel = conn.channel()
        channel.queue_declare(queue)
        for _ in range(N):
            channel.basic_publish("", queue, b"v", pika.BasicProperties(headers=dict(HEADERS)))
    hp.instrument()
    try:
        with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
            channel = conn.channel()
            channel.basic_consume(queue, lambda ch, m, p, b: got.append(seen()), auto_ack=True)
            deadline = time.monotonic() + 10
            while len(got) < N and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
            channel.queue_delete(queue)
    finally:
        hp.uninstrument()
    assert got == [(TRACE, TX, queue)] * N


def test_kombu_consumer_callback(opened: list[bool], amqp_url: str) -> None:
    kombu = pytest.importorskip("kombu")
    import hoptrace.kombu as hko

    name = f"hoptrace-openc-{uuid.uuid4().hex[:10]}"
    got: list[Any] = []
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key="k")
    with kombu.Connection(amqp_url) as conn, conn.Producer() as producer:
        for _ in range(N):
            producer.publish(b"v", exchange=queue.exchange, routing_key="k",
                             headers=dict(HEADERS), declare=[queue])
    hko.instrument()
    try:
        with kombu.Connection(amqp_url) as conn:

            def handle(body: Any, message: Any) -> None:
                got.append(seen())
                message.ack()

            with conn.Consumer(queue, callbacks=[handle]):
                while len(got) < N:
                    conn.drain_events(timeout=10)
            queue(conn.channel()).delete()
    finally:
        hko.uninstrument()
    assert [item[:2] for item in got] == [(TRACE, TX)] * N


def test_aio_pika_queue_consume(opened: list[bool], amqp_url: str) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    import hoptrace.aio_pika as hap

    async def run() -> list[Any]:
        got: list[Any] = []
        connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"hoptrace-openc-{uuid.uuid4().hex[:10]}",
                                                auto_delete=True)
            for _ in range(N):  # (the module is not instrumented yet)
                await channel.default_exchange.publish(
                    aio_pika.Message(b"v", headers=dict(HEADERS)), routing_key=queue.name)
            hap.instrument()
            done = asyncio.Event()

            async def on_message(message: Any) -> None:
                got.append(seen())
                await message.ack()
                if len(got) == N:
                    done.set()

            tag = await queue.consume(on_message)
            await asyncio.wait_for(done.wait(), 10)
            await queue.cancel(tag)
            return [(*item[:2], item[2] == queue.name) for item in got]
        finally:
            await connection.close()

    try:
        got = asyncio.run(run())
    finally:
        hap.uninstrument()
    assert got == [(TRACE, TX, True)] * N
