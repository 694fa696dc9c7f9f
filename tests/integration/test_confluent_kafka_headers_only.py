"""confluent-kafka produce() with no span to make (propagation-only, or no SDK), real broker.

The produce path then writes only the headers, without a send scope: the consumer's
handler must still run in the producer's trace and transaction, a transaction ID the
caller's headers carry must survive, and the caller's own headers must arrive untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace import _kafka

confluent_kafka = pytest.importorskip("confluent_kafka")
import hoptrace.confluent_kafka as hc  # noqa: E402

CREATED: list[str] = []
CARRIED = "d" * 32


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


@pytest.mark.parametrize("mode", ["propagation_only", "no_sdk"])
def test_headers_only_produce_carries_trace_and_transaction(
    kafka_bootstrap: str, mode: str, request: pytest.FixtureRequest
) -> None:
    if mode == "propagation_only":
        request.getfixturevalue("spans")
        hoptrace.configure(propagation_only=True)
    else:
        request.getfixturevalue("no_sdk")
    assert _kafka.headers_only()
    topic = f"hoptrace-confluent-hdr-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    delivered: list[int] = []
    p = hc.Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
    user = [("x-app", b"1"), ("x-transaction-id", CARRIED.encode())]
    with hoptrace.transaction("edge") as tx:
        trace_id = hoptrace.current_trace_id()
        p.produce(topic, b"in-tx", headers=user,
                  on_delivery=lambda err, m: delivered.append(m.offset()))
    p.produce(topic, b"relayed", headers=user)  # outside: the carried ID is kept
    assert p.flush(15) == 0
    assert delivered == [0]  # the caller's own callback, untouched
    assert user == [("x-app", b"1"), ("x-transaction-id", CARRIED.encode())]

    c = hc.Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    c.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    seen: list[tuple[Any, ...]] = []
    try:
        while len(seen) < 2:
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen.append((msg.value(), hoptrace.current_transaction_id(),
                         hoptrace.current_trace_id(), dict(msg.headers())))
        hc.close_scope(c)
    finally:
        c.close()
    (v1, tx1, trace1, h1), (v2, tx2, _, h2) = seen
    assert (v1, v2) == (b"in-tx", b"relayed")
    assert tx1 == tx.transaction_id and trace1 == trace_id
    assert tx2 == CARRIED
    assert h1["x-app"] == h2["x-app"] == b"1"
    assert hoptrace.current_transaction_id() is None


def test_a_send_the_1pct_sampler_drops_writes_only_its_headers(kafka_bootstrap: str) -> None:
    """The production setup: an unsampled transaction's send span is a dropped child."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        topic = f"hoptrace-confluent-sampled-{uuid.uuid4().hex[:10]}"
        CREATED.append(topic)
        delivered: list[int] = []
        p = hc.Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
        for _ in range(50):  # 99 in 100 roots are dropped at 1%
            tx = hoptrace.transaction("job").open()
            root = trace.get_current_span().get_span_context()
            if not root.trace_flags.sampled:
                break
            tx.close()
            exporter.clear()  # (the 1 in 100 root that records, ended here: not the test's)
        else:
            raise AssertionError("50 sampled roots in a row at 1%")
        try:
            only = _kafka.headers_only()
            assert only is not True and only is not False  # the dropped send span
            p.produce(topic, b"job", headers=[("x-app", b"1")],
                      on_delivery=lambda err, m: delivered.append(m.offset()))
        finally:
            tx.close()
        assert p.flush(15) == 0
        assert delivered == [0]  # the caller's own callback, once

        c = hc.Consumer({
            "bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        c.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        try:
            msg = None
            for _ in range(30):
                msg = c.poll(0.5)
                if msg is not None and msg.error() is None:
                    break
            assert msg is not None and msg.error() is None
            in_handler = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
            headers = {k: v.decode() for k, v in msg.headers()}
            hc.close_scope(c)
        finally:
            c.close()
        assert in_handler == (tx.transaction_id, f"{root.trace_id:032x}")
        _, trace_id, span_id, flags = headers["traceparent"].split("-")
        assert trace_id == f"{root.trace_id:032x}" and flags == "00"
        assert span_id != f"{root.span_id:016x}"  # the send span's own ID, as the scope's
        assert headers["baggage"] == f"transaction.id={tx.transaction_id}"
        assert headers["x-app"] == "1"
        assert not exporter.get_finished_spans()  # nothing recorded in a dropped trace
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()
    assert hoptrace.current_transaction_id() is None
