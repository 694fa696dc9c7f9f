"""Records with broken context headers, written raw by a plain aiokafka producer, through
all three hoptrace Kafka consumers (aiokafka, confluent-kafka, kafka-python): every record
reaches user code, in a fresh trace with a fresh transaction ID, and hoptrace warns."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.core import semconv

aiokafka = pytest.importorskip("aiokafka")
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

import hoptrace.aiokafka as hk  # noqa: E402

pytestmark = pytest.mark.integration


CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    """Delete every topic this module created."""
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)

GOOD_TP = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
OTHER_TP = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
ONE_MB = 1_000_000  # with the record overhead this stays under the broker's default 1 MiB cap

BAD_RECORDS: list[tuple[str, list[tuple[str, bytes | None]]]] = [
    ("tp-not-utf8", [("traceparent", b"00-\xff\xfe\xfd-" + b"\x80" * 40)]),
    ("baggage-not-utf8", [("traceparent", b"\xc3\x28"), ("baggage", b"k=\xff\xfe")]),
    ("tx-not-utf8", [("traceparent", b"\xe2\x82"), ("x-transaction-id", b"\xff\xfe\xfa")]),
    ("none-values", [("traceparent", None), ("baggage", None), ("x-transaction-id", None)]),
    ("duplicate-tp", [("traceparent", GOOD_TP.encode()), ("traceparent", OTHER_TP.encode())]),
    ("one-mb", [("traceparent", b"0" * ONE_MB)]),
]
LABELS = [label for label, _ in BAD_RECORDS]
TX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def bad_topic(kafka_bootstrap: str) -> str:
    topic = f"hoptrace-bad-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for label, headers in BAD_RECORDS:
                await producer.send_and_wait(topic, label.encode(), headers=headers)
        finally:
            await producer.stop()

    asyncio.run(produce())
    return topic


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="hoptrace")
    yield caplog


def check(seen: list[tuple[str, str | None, str | None]], spans: Any, topic: str,
          warned: pytest.LogCaptureFixture) -> None:
    """Every record handled, each in a fresh trace and transaction; rejections warned."""
    assert [label for label, _, _ in seen] == LABELS
    processes = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"process {topic}")}
    assert len(processes) == len(LABELS)
    traces = set()
    for offset, (label, tx, trace_id) in enumerate(seen):
        span = processes[offset]
        assert span.parent is None, label  # nothing usable came in: a new trace
        assert trace_id == f"{span.context.trace_id:032x}", label
        assert trace_id not in (GOOD_TP[3:35], OTHER_TP[3:35]), label
        assert tx is not None and TX_ID.fullmatch(tx), label
        assert span.attributes[semconv.CONTEXT_REJECTED], label
        traces.add(trace_id)
    assert len(traces) == len(LABELS)
    assert hoptrace.rejections() >= len(LABELS)
    assert any(r.levelno == logging.WARNING and r.name == "hoptrace" for r in warned.records)


def test_aiokafka_consumer(kafka_bootstrap: str, bad_topic: str, spans: Any,
                           warnings_logged: pytest.LogCaptureFixture) -> None:
    async def run() -> list[tuple[str, str | None, str | None]]:
        consumer = hk.TracedConsumer(AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False))
        consumer.assign([TopicPartition(bad_topic, 0)])
        seen = []
        async with consumer:
            async for msg in consumer:
                seen.append((msg.value.decode(), hoptrace.current_transaction_id(),
                             hoptrace.current_trace_id()))
                if len(seen) == len(LABELS):
                    break
        return seen

    check(asyncio.run(run()), spans, bad_topic, warnings_logged)


def test_confluent_consumer(kafka_bootstrap: str, bad_topic: str, spans: Any,
                            warnings_logged: pytest.LogCaptureFixture) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    import hoptrace.confluent_kafka as hc

    c = hc.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([confluent_kafka.TopicPartition(bad_topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    seen = []
    try:
        for _ in range(60):
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen.append((msg.value().decode(), hoptrace.current_transaction_id(),
                         hoptrace.current_trace_id()))
            if len(seen) == len(LABELS):
                break
    finally:
        c.close()
    check(seen, spans, bad_topic, warnings_logged)


def test_kafka_python_consumer(kafka_bootstrap: str, bad_topic: str, spans: Any,
                               warnings_logged: pytest.LogCaptureFixture) -> None:
    kafka = pytest.importorskip("kafka")
    import hoptrace.kafka_python as hkp

    c = hkp.TracedConsumer(kafka.KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=15000,
        max_partition_fetch_bytes=2 * 1024 * 1024))
    c.assign([kafka.TopicPartition(bad_topic, 0)])
    seen = []
    try:
        for msg in c:
            seen.append((msg.value.decode(), hoptrace.current_transaction_id(),
                         hoptrace.current_trace_id()))
            if len(seen) == len(LABELS):
                break
    finally:
        c.close()
    check(seen, spans, bad_topic, warnings_logged)
