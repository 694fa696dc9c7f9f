"""hoptrace.kafka_python against a real Kafka broker: traced send, the handler inside the
record's trace for ``for msg in consumer`` (including break), and ``poll()`` batches."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hoptrace
from hoptrace.core import semconv

kafka = pytest.importorskip("kafka")
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

import hoptrace.kafka_python as hkp  # noqa: E402

pytestmark = pytest.mark.integration


CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    """Delete every topic this module created."""
    yield
    if CREATED:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(list(CREATED), timeout_ms=15000)
        except Exception:
            pass
        finally:
            admin.close()
            CREATED.clear()


def new_topic(tag: str) -> str:
    topic = f"hoptrace-kpy-{tag}-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    return topic


@pytest.fixture
def instrumented() -> Iterator[None]:
    hkp.instrument()
    try:
        yield
    finally:
        hkp.uninstrument()


def consumer_for(bootstrap: str, topic: str, group: str | None = None) -> Any:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=10000)
    c.assign([TopicPartition(topic, 0)])
    return c


def produce(bootstrap: str, topic: str, n: int, headers: Any = None) -> list[tuple[str, Any]]:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    out = []
    try:
        for i in range(n):
            with hoptrace.transaction(transaction_id=f"tx-{i}"):
                future = p.send(topic, f"tx-{i}".encode(), key=f"k{i}".encode(), headers=headers)
            out.append((f"tx-{i}", future.get(15)))
        p.flush(15)
    finally:
        p.close(5)
    return out


def test_iterator_handler_in_trace_and_break_closes(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    topic = new_topic("iter")
    headers = (("x-app", b"1"),)
    sent = produce(kafka_bootstrap, topic, 3, headers=headers)
    assert headers == (("x-app", b"1"),)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = consumer_for(kafka_bootstrap, topic, group)
    seen = []
    try:
        for msg in c:
            seen.append((msg.offset, hoptrace.current_transaction_id(), hoptrace.current_span_id()))
            if len(seen) == 3:
                break
        after = hoptrace.current_transaction_id()
    finally:
        c.close()
    assert after is None
    assert spans.named(f"receive {topic}") == []  # the iterator's own polls are not batches
    sends = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"send {topic}")}
    processes = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"process {topic}")}
    assert len(processes) == 3
    for (offset, tx, span_id), (expected_tx, md) in zip(seen, sent, strict=True):
        assert offset == md.offset and tx == expected_tx
        send, process = sends[offset], processes[offset]
        assert send.attributes[semconv.KAFKA_PARTITION] == "0"
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert span_id == f"{process.context.span_id:016x}"
        assert process.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] == group
        assert process.attributes[semconv.KAFKA_MESSAGE_KEY] == f"k{offset}"


def test_poll_batch_receive_span_and_iterate(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    topic = new_topic("poll")
    sent = produce(kafka_bootstrap, topic, 4)
    c = consumer_for(kafka_bootstrap, topic)
    handled = []
    try:
        batch: dict[Any, list[Any]] = {}
        for _ in range(40):
            for tp, records in c.poll(timeout_ms=500).items():
                batch.setdefault(tp, []).extend(records)
            if sum(len(v) for v in batch.values()) >= 4:
                break
        for msg in hkp.iterate(batch):
            handled.append((msg.value.decode(), hoptrace.current_transaction_id()))
    finally:
        c.close()
    assert handled == [(tx, tx) for tx, _ in sent]
    sends = {s.context.span_id for s in spans.named(f"send {topic}")}
    links = [link for r in spans.named(f"receive {topic}") for link in r.links]
    assert {link.context.span_id for link in links} == sends and len(sends) == 4
    assert {p.parent.span_id for p in spans.named(f"process {topic}")} == sends


def test_wrappers_and_threads(kafka_bootstrap: str, spans: Any) -> None:
    assert not hkp.instrumented()
    topics = [new_topic(f"thr{i}") for i in range(3)]
    p = hkp.TracedProducer(KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1))
    try:
        for t in topics:
            for i in range(10):
                with hoptrace.transaction(transaction_id=f"{t}-{i}"):
                    p.send(t, f"{t}-{i}".encode())
        p.flush(15)
    finally:
        p.close(5)
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def run(topic: str) -> None:
        c = hkp.TracedConsumer(consumer_for(kafka_bootstrap, topic))
        try:
            for msg in c:
                with lock:
                    results.append((msg.value.decode(), hoptrace.current_transaction_id()))
                if msg.offset == 9:
                    break
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in topics]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == 30 and all(value == tx for value, tx in results)
    assert sum(len(spans.named(f"process {t}")) for t in topics) == 30


def test_example_kafka_python_runs(kafka_bootstrap: str) -> None:
    """examples/kafka_python.py runs against the broker and prints one trace per record."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "kafka_python.py"
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOPTRACE_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = re.findall(r"tx=([0-9a-f]{32}) trace=([0-9a-f]{32})  (\w+)", out.stdout)
    published = [ids for ids, word in ((line[:2], line[2]) for line in lines) if word == "order"]
    shipped = [ids for ids, word in ((line[:2], line[2]) for line in lines) if word == "shipping"]
    assert len(published) == 2 and shipped == published
    assert "each record handled in its producer's trace: ok" in out.stdout


def test_instrument_is_idempotent_and_uninstrument_restores(kafka_bootstrap: str, spans: Any) -> None:
    hkp.instrument()
    hkp.instrument()
    assert hkp.instrumented()
    hkp.uninstrument()
    hkp.uninstrument()
    assert not hkp.instrumented()
    topic = new_topic("plain")
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        p.send(topic, b"v").get(15)
    finally:
        p.close(5)
    c = consumer_for(kafka_bootstrap, topic)
    try:
        msg = next(iter(c))
    finally:
        c.close()
    assert msg.headers == []
    assert spans.all() == []
