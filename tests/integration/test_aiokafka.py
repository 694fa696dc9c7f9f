"""hoptrace.aiokafka against a real Kafka broker: send spans, the handler inside the
record's trace for ``async for`` / ``getone()`` / ``getmany()`` / ``processing()``, and
1,000 records across 50 concurrent tasks without cross-contamination."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
import hoptrace.aiokafka as hk
from hoptrace import logs
from hoptrace._config import get_settings
from hoptrace.core import semconv
from hoptrace.core.propagator import baggage_entry

aiokafka = pytest.importorskip("aiokafka")
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

pytestmark = pytest.mark.integration


CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    """Delete every topic this module created."""
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


def new_topic(tag: str) -> str:
    topic = f"hoptrace-aiokafka-{tag}-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    return topic


@pytest.fixture
def instrumented() -> Iterator[None]:
    hk.instrument()
    try:
        yield
    finally:
        hk.uninstrument()


class LineCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.addFilter(logs.TransactionFilter())
        self.setFormatter(logging.Formatter("%(transaction_id)s %(trace_id)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[LineCapture]:
    logger = logging.getLogger("kafka-handler")
    handler = LineCapture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def consumer_for(bootstrap: str, topic: str, group: str | None = None, **kw: Any) -> Any:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, **kw,
    )
    consumer.assign([TopicPartition(topic, 0)])
    return consumer


async def produce_traced(producer: Any, topic: str, n: int, **kw: Any) -> list[tuple[str, Any]]:
    """Send n records, each in its own transaction; return (transaction ID, metadata)."""
    sent = []
    for i in range(n):
        with hoptrace.transaction("edge") as tx:
            md = await producer.send_and_wait(
                topic, f"m{i}".encode(), key=f"k{i}".encode(), headers=kw.get("headers")
            )
        sent.append((tx.transaction_id or "", md))
    return sent


def test_async_for_handler_runs_in_the_record_trace(
    kafka_bootstrap: str, spans: Any, instrumented: None, log_lines: LineCapture
) -> None:
    topic = new_topic("loop")
    group = f"g-{uuid.uuid4().hex[:8]}"
    caller_headers = (("x-app", b"1"), ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"))
    original = tuple(caller_headers)
    logger = logging.getLogger("kafka-handler")

    async def run() -> tuple[list[tuple[str, str | None, str | None, bytes]], Any, Any]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            sent = await produce_traced(producer, topic, 3, headers=caller_headers)
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic, group)
        await consumer.start()
        seen = []
        try:
            async for msg in consumer:
                await asyncio.sleep(0)
                logger.info("handling %s", msg.offset)
                seen.append((hoptrace.current_transaction_id(), hoptrace.current_trace_id(),
                             hoptrace.current_span_id(), msg.headers))
                if len(seen) == 3:
                    break
            after = (hoptrace.current_transaction_id(), hoptrace.current_span_id())
        finally:
            await consumer.stop()
        return seen, sent, after

    seen, sent, after = asyncio.run(run())
    assert caller_headers == original  # the caller's tuple is untouched
    assert after == (None, None)  # the scope closed at break, in the loop's task
    sends = sorted(spans.named(f"send {topic}"), key=lambda s: s.attributes[semconv.KAFKA_OFFSET])
    processes = sorted(spans.named(f"process {topic}"),
                       key=lambda s: s.attributes[semconv.KAFKA_OFFSET])
    assert len(sends) == 3 and len(processes) == 3
    for i, (send, process) in enumerate(zip(sends, processes, strict=True)):
        tx, md = sent[i]
        seen_tx, seen_trace, seen_span, headers = seen[i]
        assert send.attributes[semconv.KAFKA_OFFSET] == md.offset
        assert send.attributes[semconv.KAFKA_PARTITION] == str(md.partition)
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert process.context.trace_id == send.context.trace_id
        assert seen_trace == f"{send.context.trace_id:032x}"
        assert seen_span == f"{process.context.span_id:016x}"
        assert seen_tx == tx
        assert process.attributes[semconv.KAFKA_OFFSET] == md.offset
        assert process.attributes[semconv.KAFKA_MESSAGE_KEY] == f"k{i}"
        assert process.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] == consumer_group(process)
        # Kafka has no message ID: the hop's ``topic-p@offset`` stays off the span.
        assert semconv.MESSAGING_MESSAGE_ID not in process.attributes
        assert semconv.QUEUE_WAIT_MS in process.attributes
        # replaced, never appended: one traceparent, the caller's other header kept
        names = [k for k, _ in headers]
        assert names.count("traceparent") == 1 and "x-app" in names
        assert f"{tx} {seen_trace} handling {md.offset}" in log_lines.lines


def consumer_group(span: Any) -> str:
    group = span.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME]
    assert group.startswith("g-")
    return str(group)


def test_wrappers_without_patching_getone_and_processing(
    kafka_bootstrap: str, spans: Any
) -> None:
    topic = new_topic("wrap")
    assert not hk.instrumented()

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with hk.TracedProducer(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)) as p:
            out["sent"] = await produce_traced(p, topic, 2)
            fut = await p.send(topic, b"x", headers=[("a", b"b")])
            out["md"] = await fut
        async with hk.TracedConsumer(consumer_for(kafka_bootstrap, topic)) as consumer:
            first = await consumer.getone()
            out["first"] = (hoptrace.current_transaction_id(), first.offset)
            second = await consumer.getone()  # closes the first record's scope
            out["second"] = hoptrace.current_transaction_id()
            hk.close_scope(consumer)
            out["closed"] = hoptrace.current_transaction_id()
            third = await consumer.getone()
            hk.close_scope()
            async with hk.processing(third) as scope:
                out["explicit"] = (scope.transaction_id, hoptrace.current_transaction_id())
            with pytest.raises(RuntimeError):
                async with hk.processing(second):
                    raise RuntimeError("handler failed")
        return out

    out = asyncio.run(run())
    (tx0, _), (tx1, _) = out["sent"]
    assert out["first"] == (tx0, 0)
    assert out["second"] == tx1
    assert out["closed"] is None
    assert out["explicit"][0] == out["explicit"][1] is not None
    processes = spans.named(f"process {topic}")
    assert len(processes) == 5  # 3 from getone, 2 explicit
    failed = [s for s in processes if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].attributes[semconv.KAFKA_OFFSET] == 1
    assert out["md"].offset == 2


def test_getmany_receive_span_links_and_per_record_scopes(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    topic = new_topic("batch")

    async def run() -> tuple[list[tuple[str, Any]], list[tuple[int, str | None]]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            sent = await produce_traced(producer, topic, 5)
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
        await consumer.start()
        handled: list[tuple[int, str | None]] = []
        try:
            batch: dict[Any, list[Any]] = {}
            while sum(len(v) for v in batch.values()) < 5:
                more = await consumer.getmany(timeout_ms=2000)
                for tp, records in more.items():
                    batch.setdefault(tp, []).extend(records)
            for msg in hk.iterate(batch):
                handled.append((msg.offset, hoptrace.current_transaction_id()))
            assert hoptrace.current_transaction_id() is None
        finally:
            await consumer.stop()
        return sent, handled

    sent, handled = asyncio.run(run())
    assert handled == [(md.offset, tx) for tx, md in sent]
    receives = spans.named(f"receive {topic}")
    links = [link for r in receives for link in r.links]
    assert sum(r.attributes[semconv.MESSAGING_BATCH_MESSAGE_COUNT] for r in receives) == 5
    sends = {s.context.span_id: s for s in spans.named(f"send {topic}")}
    assert {link.context.span_id for link in links} == set(sends)
    for link in links:
        offset = sends[link.context.span_id].attributes[semconv.KAFKA_OFFSET]
        assert link.attributes[semconv.MESSAGING_MESSAGE_ID] == f"{topic}-0@{offset}"
    processes = spans.named(f"process {topic}")
    assert {p.parent.span_id for p in processes} == set(sends)


def test_1000_records_across_50_tasks_never_mix(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    topic = new_topic("conc")
    total, workers = 1000, 50

    async def run() -> tuple[list[tuple[str, str | None, str | None]], int]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = []
            for i in range(total):
                with hoptrace.transaction(transaction_id=f"tx-{i}"):
                    futures.append(await producer.send(topic, f"tx-{i}".encode()))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        results: list[tuple[str, str | None, str | None]] = []
        remaining = [total]

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                msg = await consumer.getone()
                for _ in range(3):
                    await asyncio.sleep(0)  # let the other tasks' handlers interleave
                results.append((msg.value.decode(), hoptrace.current_transaction_id(),
                                hoptrace.current_trace_id()))
            hk.close_scope(consumer)

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 60)
        finally:
            await consumer.stop()
        return results, len(spans.named(f"process {topic}"))

    results, processed = asyncio.run(run())
    assert len(results) == total
    assert all(value == tx for value, tx, _ in results)
    assert len({value for value, _, _ in results}) == total
    # Each transaction's root span records its ID (the send under it leaves it out).
    roots = {s.attributes[semconv.TRANSACTION_ID]: s for s in spans.named("transaction")}
    sends = spans.named(f"send {topic}")
    assert len(sends) == total
    assert {s.parent.span_id for s in sends} == {r.context.span_id for r in roots.values()}
    assert all(trace == f"{roots[tx].context.trace_id:032x}" for tx, _, trace in results)
    assert processed == total  # every scope was closed, none leaked open


def test_uninstrument_restores_plain_aiokafka(kafka_bootstrap: str, spans: Any) -> None:
    hk.instrument()
    hk.instrument()
    hk.uninstrument()
    hk.uninstrument()
    assert not hk.instrumented()
    topic = new_topic("plain")

    async def run() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v")
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        try:
            return await consumer.getone()
        finally:
            await consumer.stop()

    msg = asyncio.run(run())
    assert msg.headers == ()
    assert spans.all() == []


def test_example_aiokafka_runs(kafka_bootstrap: str) -> None:
    """examples/kafka_aiokafka.py runs against the broker and prints one trace per record."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "kafka_aiokafka.py"
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


def test_queue_wait_from_create_time_clamped_on_skew(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    """Records without hoptrace's send-time header: queue wait comes from CreateTime."""
    import time

    topic = new_topic("wait")
    now_ms = int(time.time() * 1000)

    async def run() -> None:
        hk.uninstrument()  # a plain producer: no hoptrace headers at all
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"old", timestamp_ms=now_ms - 60_000)
            await producer.send_and_wait(topic, b"future", timestamp_ms=now_ms + 600_000)
        finally:
            await producer.stop()
        hk.instrument()
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        try:
            async for msg in consumer:
                if msg.offset == 1:
                    break
        finally:
            await consumer.stop()

    asyncio.run(run())
    by_offset = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"process {topic}")}
    assert by_offset[0].attributes[semconv.QUEUE_WAIT_MS] >= 60_000
    assert semconv.CLOCK_SKEW not in by_offset[0].attributes
    assert by_offset[1].attributes[semconv.QUEUE_WAIT_MS] == 0
    assert by_offset[1].attributes[semconv.CLOCK_SKEW] is True


def test_send_time_travels_in_the_record_timestamp_unless_the_caller_sets_it(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    """The instrumented producer writes no send-time header; CreateTime gives the queue wait.

    A record whose timestamp the caller chose (an event time) keeps hoptrace's header, and the
    header wins over that timestamp.
    """
    import time

    topic = new_topic("sent")
    event_ms = int(time.time() * 1000) - 3_600_000
    seen: dict[int, list[str]] = {}

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"stamped by the client")
            await producer.send_and_wait(topic, b"event time", timestamp_ms=event_ms)
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        try:
            async for msg in consumer:
                seen[msg.offset] = [name for name, _ in msg.headers]
                if msg.offset == 1:
                    break
        finally:
            await consumer.stop()

    asyncio.run(run())
    sent_header = get_settings().sent_time_header
    assert sent_header not in seen[0] and "traceparent" in seen[0]
    assert sent_header in seen[1]
    by_offset = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans.named(f"process {topic}")}
    for offset in (0, 1):
        wait = by_offset[offset].attributes[semconv.QUEUE_WAIT_MS]
        assert 0 <= wait < 60_000, (offset, wait)


# ------------------------------------------------------------ batch sends ---


async def _send_batches(producer: Any, topic: str, batches: list[list[bytes]],
                        batch_factory: Any = None) -> list[str]:
    """Send each list of values as one batch in its own transaction; return the IDs."""
    ids = []
    for values in batches:
        with hoptrace.transaction("bulk") as tx:
            batch = (batch_factory or producer.create_batch)()
            for i, value in enumerate(values):
                # The caller's own headers survive; a stale traceparent is replaced.
                headers = [("x-app", b"1")] if i % 2 else [("traceparent", b"00-" + b"1" * 32
                                                             + b"-" + b"2" * 16 + b"-01")]
                assert batch.append(key=None, value=value, timestamp=None,
                                    headers=headers) is not None
            partition = sorted(await producer.partitions_for(topic))[0]
            fut = await producer.send_batch(batch, topic, partition=partition)
            await fut
        ids.append(tx.transaction_id or "")
    return ids


def _check_batch_records(spans: Any, topic: str, ids: list[str], records: list[Any],
                         per_batch: int) -> None:
    sends = spans.named(f"send {topic}")
    assert len(sends) == len(ids)
    # The ID is on each transaction's root: every send is a child of one.
    roots = {r.context.span_id: r.attributes[semconv.TRANSACTION_ID]
             for r in spans.named("bulk")}
    by_tx = {roots[s.parent.span_id]: s for s in sends}
    assert set(by_tx) == set(ids)
    for send in sends:
        assert send.attributes[semconv.MESSAGING_BATCH_MESSAGE_COUNT] == per_batch
        assert send.attributes[semconv.MESSAGING_DESTINATION_NAME] == topic
        assert semconv.KAFKA_OFFSET in send.attributes  # ended at the broker's ack
    key = get_settings().baggage_key
    assert len(records) == len(ids) * per_batch
    for record in records:
        headers = dict(record.headers)
        assert "x-transaction-id" not in headers  # the baggage entry carries the ID
        send = by_tx[baggage_entry(headers["baggage"].decode(), key)]
        traceparent = headers["traceparent"].decode()
        assert traceparent[3:35] == f"{send.context.trace_id:032x}"
        assert traceparent[36:52] == f"{send.context.span_id:016x}"
        assert record.headers.count(("x-app", b"1")) == (record.offset % per_batch) % 2
        assert sum(1 for k, _ in record.headers if k == "traceparent") == 1


def test_send_batch_every_record_carries_the_batch_context(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    """create_batch/append/send_batch: each record carries the batch's send span and the
    transaction; one send span per batch, with its size, ended at the ack; the consumer's
    process spans are children of it."""
    topic = new_topic("sendbatch")

    async def run() -> tuple[list[str], list[Any], list[str | None]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            ids = await _send_batches(producer, topic, [[b"a", b"b", b"c"], [b"d", b"e", b"f"]])
        finally:
            await producer.stop()
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        records, seen = [], []
        try:
            while len(records) < 6:
                msg = await consumer.getone()  # (wait_for would run it in another task)
                records.append(msg)
                seen.append(hoptrace.current_transaction_id())
        finally:
            await consumer.stop()
        return ids, records, seen

    ids, records, seen = asyncio.run(run())
    _check_batch_records(spans, topic, ids, records, 3)
    assert seen == [ids[0]] * 3 + [ids[1]] * 3
    sends = {s.context.span_id for s in spans.named(f"send {topic}")}
    processes = spans.named(f"process {topic}")
    assert len(processes) == 6 and {p.parent.span_id for p in processes} == sends


def test_traced_producer_batches_without_patching(kafka_bootstrap: str, spans: Any) -> None:
    topic = new_topic("tracedbatch")

    async def run() -> tuple[list[str], list[Any]]:
        producer = hk.TracedProducer(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap))
        async with producer:
            ids = await _send_batches(producer, topic, [[b"a", b"b"]])
        consumer = consumer_for(kafka_bootstrap, topic)
        await consumer.start()
        try:
            return ids, [await asyncio.wait_for(consumer.getone(), 10) for _ in range(2)]
        finally:
            await consumer.stop()

    ids, records = asyncio.run(run())
    _check_batch_records(spans, topic, ids, records, 2)


def test_send_inside_a_produce_scope_gets_no_second_span(
    kafka_bootstrap: str, spans: Any, instrumented: None
) -> None:
    """A record whose headers already carry the active span (a framework traced the send)
    is passed through untouched."""
    topic = new_topic("traced")

    async def run() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            with hoptrace.produce_scope([], topic, "kafka") as scope:
                await producer.send_and_wait(topic, b"v", headers=scope.carrier)
                batch = producer.create_batch()
                batch.append(key=None, value=b"w", timestamp=None, headers=scope.carrier)
                partition = sorted(await producer.partitions_for(topic))[0]
                await (await producer.send_batch(batch, topic, partition=partition))
            return scope
        finally:
            await producer.stop()

    scope = asyncio.run(run())
    sends = spans.named(f"send {topic}")
    assert len(sends) == 1 and sends[0].attributes[semconv.TRANSACTION_ID] == \
        scope.transaction_id
