"""hoptrace.faststream against real Kafka (aiokafka and confluent), RabbitMQ and Redis.

Two services in one process: a publisher broker and a consumer broker whose subscriber A
publishes every message on to subscriber B. Each test checks what every handler saw (the
publisher's transaction ID and trace) and the spans (one process span per hop, parents and
links), with hoptrace's client-level instrumentation (aiokafka, aio-pika) also switched on,
as ``opentelemetry-instrument`` would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import brokers
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

import hoptrace
import hoptrace.aio_pika
import hoptrace.aiokafka
from hoptrace._config import get_settings
from hoptrace.core import semconv
from hoptrace.core.propagator import baggage_entry

pytest.importorskip("faststream")
from faststream import Context

import hoptrace.faststream
from hoptrace.faststream import HoptraceMiddleware

#: A handler parameter that receives the FastStream message itself (for a batch, all records).
Message = Annotated[Any, Context("message")]

pytestmark = [pytest.mark.integration]

N = 20
TIMEOUT = 30.0
CREATED_TOPICS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics() -> Iterator[None]:
    yield
    if CREATED_TOPICS:
        brokers.delete_kafka_topics(brokers.require("kafka").url, CREATED_TOPICS)


@pytest.fixture
def client_level() -> Iterator[None]:
    """hoptrace's client-level instrumentation on too, as opentelemetry-instrument does."""
    hoptrace.aiokafka.instrument()
    hoptrace.aio_pika.instrument()
    try:
        yield
    finally:
        hoptrace.aiokafka.uninstrument()
        hoptrace.aio_pika.uninstrument()


# ------------------------------------------------------------------ brokers ---


@dataclass
class Kit:
    """What differs between FastStream's brokers: classes, addresses, subscriber options."""

    name: str
    url: str
    broker: Callable[..., Any]
    telemetry: Callable[[], Any]

    def destination(self, tag: str) -> str:
        name = f"hoptrace-fs-{self.name}-{tag}-{uuid.uuid4().hex[:8]}"
        if self.name in ("kafka", "confluent"):
            CREATED_TOPICS.append(name)
        return name

    def subscriber(self, broker: Any, name: str, **options: Any) -> Any:
        if self.name == "redis":
            from faststream.redis import ListSub

            batch = options.pop("batch", False)
            return broker.subscriber(list=ListSub(name, batch=batch, max_records=100,
                                                  polling_interval=0.05), **options)
        if self.name in ("kafka", "confluent"):
            options.setdefault("group_id", f"g-{name}")
            options.setdefault("auto_offset_reset", "earliest")
        return broker.subscriber(name, **options)

    def publisher(self, broker: Any, name: str) -> Any:
        return broker.publisher(**{self.target: name})

    @property
    def target(self) -> str:
        return {"redis": "list", "rabbit": "queue"}.get(self.name, "topic")

    async def publish(self, broker: Any, body: Any, name: str) -> None:
        await broker.publish(body, **{self.target: name})


def _kit(name: str) -> Kit:
    if name == "kafka":
        from faststream.kafka import KafkaBroker
        from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

        return Kit(name, brokers.require("kafka").url, KafkaBroker, KafkaTelemetryMiddleware)
    if name == "confluent":
        pytest.importorskip("confluent_kafka")
        from faststream.confluent import KafkaBroker as ConfluentBroker
        from faststream.confluent.opentelemetry import (
            KafkaTelemetryMiddleware as ConfluentTelemetry,
        )

        return Kit(name, brokers.require("kafka").url, ConfluentBroker, ConfluentTelemetry)
    if name == "rabbit":
        from faststream.rabbit import RabbitBroker
        from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

        url = brokers.require("amqp").url
        return Kit(name, brokers.pika_url(url), RabbitBroker, RabbitTelemetryMiddleware)
    from faststream.redis import RedisBroker
    from faststream.redis.opentelemetry import RedisTelemetryMiddleware

    return Kit(name, brokers.require("redis").url, RedisBroker, RedisTelemetryMiddleware)


ALL = ["kafka", "confluent", "rabbit", "redis"]
#: FastStream 0.7's RabbitMQ subscribers take no max_workers (aio-pika runs each callback in
#: a task of its own anyway).
CONCURRENT = ["kafka", "confluent", "redis"]
BATCHING = ["kafka", "confluent", "redis"]


def middlewares(kit: Kit, telemetry: str | None, hoptrace_on: bool = True) -> list[Any]:
    ours = [HoptraceMiddleware()] if hoptrace_on else []
    if telemetry == "telemetry-first":
        return [kit.telemetry(), *ours]
    if telemetry == "hoptrace-first":
        return [*ours, kit.telemetry()]
    return ours


# ------------------------------------------------------------------- checks ---


@dataclass
class Seen:
    hop: str
    body: str
    transaction_id: str | None
    trace_id: str | None


async def publish_each_in_transaction(kit: Kit, broker: Any, name: str,
                                      n: int = N) -> dict[str, tuple[str, str]]:
    """Publish n messages, each in its own transaction; return body -> (tx, trace)."""
    sent = {}
    for i in range(n):
        body = f"m{i}"
        with hoptrace.transaction("checkout") as tx:
            await kit.publish(broker, body, name)
            sent[body] = (tx.transaction_id or "", hoptrace.current_trace_id() or "")
    return sent


def by_trace(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(f"{span.context.trace_id:032x}", []).append(span)
    return out


def ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        chain.append(span)
    return chain


def check_two_hops(seen: list[Seen], sent: dict[str, tuple[str, str]],
                   spans: list[ReadableSpan]) -> None:
    """Every handler saw its publisher's transaction and trace; each hop has one process span,
    a child of a send span, and hop B's process span descends from hop A's."""
    for hop in ("A", "B"):
        mine = [s for s in seen if s.hop == hop]
        assert len(mine) == N, (hop, len(mine))
        right = [s for s in mine if (s.transaction_id, s.trace_id) == sent[s.body]]
        assert len(right) == N, f"{hop}: {len(right)}/{N} handlers in the publisher's " \
            f"transaction and trace; e.g. {[s for s in mine if s not in right][:2]}"
    traces = by_trace(spans)
    index = {s.context.span_id: s for s in spans}
    for body, (tx, trace_id) in sent.items():
        trace = traces[trace_id]
        consumers = [s for s in trace if s.kind is SpanKind.CONSUMER]
        assert len(consumers) == 2, (body, [(s.name, s.instrumentation_scope.name)
                                            for s in consumers])
        for span in consumers:
            assert span.attributes.get(semconv.TRANSACTION_ID) == tx, span.name
            parent = index.get(span.parent.span_id) if span.parent else None
            assert parent is not None and parent.kind is SpanKind.PRODUCER, span.name
        first, second = sorted(consumers, key=lambda s: s.start_time or 0)
        assert first in ancestors(second, index)
    # Nothing but these traces: no orphan consumer or producer spans anywhere.
    stray = [s for s in spans if f"{s.context.trace_id:032x}" not in
             {t for _, t in sent.values()} and s.kind in (SpanKind.CONSUMER, SpanKind.PRODUCER)]
    assert not stray, [(s.name, s.instrumentation_scope.name) for s in stray]


async def run_two_hops(kit: Kit, mws: list[Any], *, concurrent: bool = False,
                       publisher_mws: list[Any] | None = None) -> tuple[list[Seen], dict[str, Any]]:
    """Publisher service -> subscriber A (publishes on) -> subscriber B, N messages."""
    a, b = kit.destination("a"), kit.destination("b")
    consumer = kit.broker(kit.url, middlewares=mws, logger=None)
    producer = kit.broker(kit.url, middlewares=publisher_mws if publisher_mws is not None
                          else mws, logger=None)
    seen: list[Seen] = []
    done = asyncio.Event()

    def saw(hop: str, body: str) -> None:
        seen.append(Seen(hop, body, hoptrace.current_transaction_id(),
                         hoptrace.current_trace_id()))

    if concurrent:
        @kit.subscriber(consumer, a, max_workers=4)
        async def hop_a(body: str) -> None:
            await asyncio.sleep(0.01 * (int(body[1:]) % 3))  # interleave the workers
            saw("A", body)
            await kit.publish(consumer, body, b)
    else:
        @kit.subscriber(consumer, a)
        @kit.publisher(consumer, b)
        async def hop_a(body: str) -> str:  # the returned value is published to b
            saw("A", body)
            return body

    @kit.subscriber(consumer, b)
    async def hop_b(body: str) -> None:
        saw("B", body)
        if sum(1 for s in seen if s.hop == "B") == N:
            done.set()

    async with consumer, producer:
        await consumer.start()
        await producer.connect()
        sent = await publish_each_in_transaction(kit, producer, a)
        try:
            await asyncio.wait_for(done.wait(), TIMEOUT)
        except TimeoutError:
            pass
    return seen, sent


# -------------------------------------------------------------------- tests ---


@pytest.mark.parametrize("name", ALL)
def test_two_hops_every_handler_in_the_publishers_transaction(
    name: str, spans: Any, client_level: None
) -> None:
    kit = _kit(name)
    seen, sent = asyncio.run(run_two_hops(kit, middlewares(kit, None)))
    finished = spans.all()
    check_two_hops(seen, sent, finished)
    # hoptrace's spans only, and one send and one process span per hop per message.
    kinds = Counter((s.kind, s.instrumentation_scope.name) for s in finished)
    assert kinds[(SpanKind.CONSUMER, "hoptrace")] == 2 * N
    assert kinds[(SpanKind.PRODUCER, "hoptrace")] == 2 * N


@pytest.mark.parametrize("order", ["telemetry-first", "hoptrace-first"])
@pytest.mark.parametrize("name", ALL)
def test_with_faststream_telemetry_one_process_span_per_hop(
    name: str, order: str, spans: Any, client_level: None
) -> None:
    kit = _kit(name)
    seen, sent = asyncio.run(run_two_hops(kit, middlewares(kit, order)))
    finished = spans.all()
    check_two_hops(seen, sent, finished)
    # The process spans are FastStream's, carrying hoptrace's attributes; hoptrace adds none.
    consumers = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert {s.instrumentation_scope.name for s in consumers} == \
        {"opentelemetry.instrumentation.faststream"}
    assert all(semconv.MESSAGING_MESSAGE_ID in s.attributes for s in consumers)
    assert not [s for s in finished if s.instrumentation_scope.name == "hoptrace"
                and s.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER)]


@pytest.mark.parametrize("name", CONCURRENT)
def test_concurrent_subscriber_every_handler_in_its_message_trace(
    name: str, spans: Any, client_level: None
) -> None:
    kit = _kit(name)
    seen, sent = asyncio.run(run_two_hops(kit, middlewares(kit, None), concurrent=True))
    check_two_hops(seen, sent, spans.all())


@pytest.mark.parametrize("telemetry", [None, "telemetry-first"])
@pytest.mark.parametrize("name", BATCHING)
def test_batch_subscriber_record_scope_restores_each_record(
    name: str, telemetry: str | None, spans: Any, client_level: None
) -> None:
    kit = _kit(name)
    topic = kit.destination("batch")
    consumer = kit.broker(kit.url, middlewares=middlewares(kit, telemetry), logger=None)
    producer = kit.broker(kit.url, middlewares=[HoptraceMiddleware()], logger=None)
    per_record: list[tuple[str, str | None, str | None]] = []
    batch_tx: list[str | None] = []
    done = asyncio.Event()

    @kit.subscriber(consumer, topic, batch=True)
    async def handle(bodies: list[str], message: Message) -> None:
        batch_tx.append(hoptrace.current_transaction_id())
        for body in hoptrace.faststream.iterate(message, bodies):
            per_record.append((body, hoptrace.current_transaction_id(),
                               hoptrace.current_trace_id()))
        if len(per_record) >= N:
            done.set()

    async def run() -> dict[str, tuple[str, str]]:
        async with consumer, producer:
            await producer.connect()
            sent = await publish_each_in_transaction(kit, producer, topic)
            await consumer.start()
            try:
                await asyncio.wait_for(done.wait(), TIMEOUT)
            except TimeoutError:
                pass
        return sent

    sent = asyncio.run(run())
    assert len(per_record) == N
    right = [r for r in per_record if (r[1], r[2]) == sent[r[0]]]
    assert len(right) == N, f"{len(right)}/{N} records in their own transaction and trace"
    # Never merged: the batch scope has a transaction of its own, none of the records'.
    assert batch_tx and all(tx is not None for tx in batch_tx)
    assert not set(batch_tx) & {tx for tx, _ in sent.values()}
    # The batch's process span (hoptrace's, or FastStream's it adopted) links once to every
    # record's send span.
    finished = spans.all()
    batch_spans = [s for s in finished if s.kind is SpanKind.CONSUMER
                   and semconv.MESSAGING_BATCH_MESSAGE_COUNT in s.attributes
                   and s.attributes.get(semconv.TRANSACTION_ID) in batch_tx]
    assert len(batch_spans) == len(batch_tx)
    linked = [f"{link.context.trace_id:032x}" for s in batch_spans for link in s.links]
    assert sorted(linked) == sorted(trace for _, trace in sent.values())
    assert sum(s.attributes[semconv.MESSAGING_BATCH_MESSAGE_COUNT] for s in batch_spans) == N
    scope = "opentelemetry.instrumentation.faststream" if telemetry else "hoptrace"
    assert {s.instrumentation_scope.name for s in batch_spans} == {scope}


@pytest.mark.parametrize("name", BATCHING)
def test_publish_batch_every_record_carries_the_context(
    name: str, spans: Any, client_level: None
) -> None:
    kit = _kit(name)
    topic = kit.destination("pubbatch")
    producer = kit.broker(kit.url, middlewares=[HoptraceMiddleware()], logger=None)
    consumer = kit.broker(kit.url, logger=None)  # no hoptrace: read the raw headers
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    @kit.subscriber(consumer, topic)
    async def handle(body: str, message: Message) -> None:
        got.append(dict(message.headers))
        if len(got) == N:
            done.set()

    async def run() -> tuple[str, str]:
        async with producer, consumer:
            await producer.connect()
            with hoptrace.transaction("bulk") as tx:
                await producer.publish_batch(*[f"m{i}" for i in range(N)],
                                             **{kit.target: topic})
                ids = (tx.transaction_id or "", hoptrace.current_trace_id() or "")
            await consumer.start()
            try:
                await asyncio.wait_for(done.wait(), TIMEOUT)
            except TimeoutError:
                pass
        return ids

    tx, trace_id = asyncio.run(run())
    send = spans.one(semconv.send_span_name(topic))
    assert send.attributes[semconv.MESSAGING_BATCH_MESSAGE_COUNT] == N
    assert f"{send.context.trace_id:032x}" == trace_id
    assert len(got) == N
    key = get_settings().baggage_key
    carrying = [h for h in got if baggage_entry(h.get("baggage", ""), key) == tx
                and h.get("traceparent", "")[36:52] == f"{send.context.span_id:016x}"]
    assert len(carrying) == N, f"{len(carrying)}/{N} records carry the batch's context"


def test_without_an_sdk_ids_still_flow(no_sdk: None, client_level: None) -> None:
    kit = _kit("kafka")
    seen, sent = asyncio.run(run_two_hops(kit, middlewares(kit, None)))
    right = [s for s in seen if (s.transaction_id, s.trace_id) == sent[s.body]]
    assert len(right) == 2 * N


def test_the_middleware_leaves_other_brokers_to_the_client_level(
    spans: Any, client_level: None
) -> None:
    """A broker without hoptrace's middleware keeps hoptrace.aiokafka's spans and scopes."""
    kit = _kit("kafka")
    HoptraceMiddleware()  # installed on some other broker of the process
    seen, sent = asyncio.run(run_two_hops(kit, [], publisher_mws=[]))
    kinds = Counter((s.kind, s.instrumentation_scope.name) for s in spans.all())
    assert kinds[(SpanKind.PRODUCER, "hoptrace")] == 2 * N  # aiokafka's send spans
    assert kinds[(SpanKind.CONSUMER, "hoptrace")] == 2 * N  # aiokafka's process spans
    right = [s for s in seen if (s.transaction_id, s.trace_id) == sent[s.body]]
    assert len(right) == 2 * N


@pytest.mark.parametrize("name", ["kafka", "rabbit", "redis"])
def test_example_app_runs(name: str) -> None:
    """examples/faststream_app.py: every handler's log lines carry its order's IDs."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    kit = _kit(name)
    script = Path(__file__).resolve().parents[2] / "examples" / "faststream_app.py"
    env = {**os.environ, "HOPTRACE_KAFKA_BOOTSTRAP": brokers.require("kafka").url
           if name == "kafka" else os.environ.get("HOPTRACE_KAFKA_BOOTSTRAP", ""),
           "HOPTRACE_AMQP_URL": kit.url if name == "rabbit" else os.environ.get("HOPTRACE_AMQP_URL", ""),
           "HOPTRACE_REDIS_URL": kit.url if name == "redis" else os.environ.get("HOPTRACE_REDIS_URL", "")}
    env = {k: v for k, v in env.items() if v}
    out = subprocess.run([sys.executable, str(script), "--broker", name], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = re.findall(r"tx=([0-9a-f]{32}) trace=([0-9a-f]{32})  (\w+) (?:a batch|(order-\d))",
                       out.stdout)
    published = {order: (tx, tr) for tx, tr, word, order in lines if word == "publishing"}
    assert len(published) == 3
    handled = [(word, order, (tx, tr)) for tx, tr, word, order in lines
               if word in ("shipping", "invoicing", "charging", "audited")]
    assert handled and all(published[order] == ids for _, order, ids in handled)
    assert {word for word, _, _ in handled} >= {"shipping", "invoicing"}
    assert "every handler in its order's transaction and trace: ok" in out.stdout
