"""hoptrace.confluent_kafka against a real Kafka broker: traced produce (dict and list
headers), the handler inside the poll scope, consume() batches, link mode, and
concurrent consumers in threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.core import semconv

confluent_kafka = pytest.importorskip("confluent_kafka")
import hoptrace.confluent_kafka as hc  # noqa: E402

pytestmark = pytest.mark.integration


CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    """Delete every topic this module created."""
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


def new_topic(tag: str) -> str:
    topic = f"hoptrace-confluent-{tag}-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    return topic


def producer(bootstrap: str, **conf: Any) -> Any:
    return hc.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, **conf})


def consumer(bootstrap: str, topic: str, group: str | None = None) -> Any:
    c = hc.Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    c.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    return c


def poll_until(c: Any, timeout: float = 15.0) -> Any:
    for _ in range(int(timeout / 0.5)):
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            return msg
    raise AssertionError("no message")


def test_produce_and_poll_handler_in_trace(kafka_bootstrap: str, spans: Any) -> None:
    topic = new_topic("poll")
    delivered: list[tuple[int, int]] = []
    p = producer(kafka_bootstrap, on_delivery=lambda err, m: delivered.append((m.partition(), m.offset())))
    dict_headers = {"x-app": "1"}
    list_headers = [("x-app", b"2"), ("traceparent", b"garbage")]
    list_copy = list(list_headers)
    txs = []
    for headers in (dict_headers, list_headers):
        with hoptrace.transaction("edge") as tx:
            p.produce(topic, b"v", key=b"k", headers=headers)
        txs.append(tx.transaction_id)
    assert p.flush(15) == 0
    assert dict_headers == {"x-app": "1"} and list_headers == list_copy
    assert delivered == [(0, 0), (0, 1)]  # the producer-level callback still runs

    group = f"g-{uuid.uuid4().hex[:8]}"
    c = consumer(kafka_bootstrap, topic, group)
    seen = []
    try:
        for _ in range(2):
            msg = poll_until(c)
            seen.append((msg.offset(), hoptrace.current_transaction_id(),
                         hoptrace.current_span_id(), msg.headers()))
        hc.close_scope(c)
        assert hoptrace.current_transaction_id() is None
    finally:
        c.close()

    sends = sorted(spans.named(f"send {topic}"), key=lambda s: s.attributes[semconv.KAFKA_OFFSET])
    processes = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"process {topic}")}
    assert len(sends) == 2 and len(processes) == 2
    for (offset, tx, span_id, headers), send, expected_tx in zip(seen, sends, txs, strict=True):
        process = processes[offset]
        assert send.attributes[semconv.KAFKA_OFFSET] == offset
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert process.context.trace_id == send.context.trace_id
        assert span_id == f"{process.context.span_id:016x}"
        assert tx == expected_tx
        assert process.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] == group
        assert process.attributes[semconv.KAFKA_MESSAGE_KEY] == "k"
        assert [k for k, _ in headers].count("traceparent") == 1


def test_link_mode_keeps_baggage_and_transaction(kafka_bootstrap: str, spans: Any) -> None:
    from opentelemetry import baggage
    from opentelemetry import context as otel_context

    hoptrace.configure(link_mode="link")
    topic = new_topic("link")
    p = hc.wrap_producer(confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap}))
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction("edge") as tx:
            p.produce(topic, b"v")
    finally:
        otel_context.detach(token)
    assert p.flush(15) == 0
    plain = confluent_kafka.Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    plain.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    c = hc.wrap_consumer(plain, group_id="grp")
    try:
        poll_until(c)
        seen = (hoptrace.current_transaction_id(), baggage.get_baggage("tenant"),
                hoptrace.current_trace_id())
    finally:
        c.close()
    send = spans.one(f"send {topic}")
    process = spans.one(f"process {topic}")
    assert seen[0] == tx.transaction_id and seen[1] == "acme"
    assert process.context.trace_id != send.context.trace_id
    assert seen[2] == f"{process.context.trace_id:032x}"
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert hoptrace.current_transaction_id() is None


def test_consume_batch_receive_span_and_iterate(kafka_bootstrap: str, spans: Any) -> None:
    topic = new_topic("batch")
    p = producer(kafka_bootstrap)
    txs = []
    for i in range(4):
        with hoptrace.transaction(transaction_id=f"tx-{i}"):
            p.produce(topic, f"tx-{i}".encode())
        txs.append(f"tx-{i}")
    assert p.flush(15) == 0
    c = consumer(kafka_bootstrap, topic)
    handled = []
    try:
        got: list[Any] = []
        while len(got) < 4:
            got.extend(m for m in c.consume(10, 1.0) if m.error() is None)
        for msg in hc.iterate(got):
            handled.append((msg.value().decode(), hoptrace.current_transaction_id()))
    finally:
        c.close()
    assert handled == [(tx, tx) for tx in txs]
    sends = {s.context.span_id for s in spans.named(f"send {topic}")}
    links = {link.context.span_id for r in spans.named(f"receive {topic}") for link in r.links}
    assert links == sends and len(sends) == 4
    assert {p.parent.span_id for p in spans.named(f"process {topic}")} == sends


def test_threads_never_see_each_others_context(kafka_bootstrap: str, spans: Any) -> None:
    topics = [new_topic(f"thr{i}") for i in range(4)]
    p = producer(kafka_bootstrap)
    for t in topics:
        for i in range(25):
            with hoptrace.transaction(transaction_id=f"{t}-{i}"):
                p.produce(t, f"{t}-{i}".encode())
    assert p.flush(15) == 0
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def run(topic: str) -> None:
        c = consumer(kafka_bootstrap, topic)
        try:
            for _ in range(25):
                msg = poll_until(c)
                with lock:
                    results.append((msg.value().decode(), hoptrace.current_transaction_id()))
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in topics]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == 100
    assert all(value == tx for value, tx in results)
    assert sum(len(spans.named(f"process {t}")) for t in topics) == 100


def test_instrument_swaps_the_classes(kafka_bootstrap: str) -> None:
    plain = confluent_kafka.Producer
    hc.instrument()
    hc.instrument()
    try:
        assert confluent_kafka.Producer is hc.Producer and hc.instrumented()
        assert confluent_kafka.Consumer is hc.Consumer
        made = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
        assert isinstance(made, hc.Producer)
    finally:
        hc.uninstrument()
        hc.uninstrument()
    assert confluent_kafka.Producer is plain and not hc.instrumented()


def test_example_confluent_runs(kafka_bootstrap: str) -> None:
    """examples/kafka_confluent.py runs against the broker and prints one trace per record."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "kafka_confluent.py"
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


def test_send_spans_end_with_delivery_report_only_error(kafka_bootstrap: str, spans: Any) -> None:
    topic = new_topic("only-error")
    p = producer(kafka_bootstrap, **{"delivery.report.only.error": True})
    for i in range(3):
        p.produce(topic, value=f"m{i}".encode())
    assert p.flush(30) == 0
    sends = spans.named(f"send {topic}")
    assert len(sends) == 3
    assert all(s.end_time is not None for s in sends)


def test_delivery_in_a_polling_thread_leaves_the_producer_context_alone(
    kafka_bootstrap: str, spans: Any
) -> None:
    topic = new_topic("poller")
    p = producer(kafka_bootstrap)
    stop = threading.Event()

    def poll_loop() -> None:
        while not stop.is_set():
            p.poll(0.01)

    poller = threading.Thread(target=poll_loop)
    poller.start()
    try:
        with hoptrace.transaction("edge") as tx:
            for i in range(5):
                p.produce(topic, value=f"m{i}".encode())
                assert hoptrace.current_transaction_id() == tx.transaction_id
        assert hoptrace.current_trace_id() is None
        p.flush(30)
    finally:
        stop.set()
        poller.join()
    sends = spans.named(f"send {topic}")
    assert len(sends) == 5
    edge = spans.one("edge")
    assert {s.parent.span_id for s in sends} == {edge.context.span_id}
    assert hoptrace.diagnostics().get("internal_error.detach", 0) == 0
