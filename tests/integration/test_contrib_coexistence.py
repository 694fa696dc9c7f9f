"""OpenTelemetry's contrib instrumentation beside hoptrace's, for every client, in both orders,
through the real brokers.

A user who runs ``opentelemetry-instrument`` (or calls contrib's instrumentors) and also
instruments with hoptrace would otherwise get two send spans and two process spans per message,
two ``traceparent`` headers on Kafka, and a handler running in contrib's span. hoptrace takes
over: contrib's instrumentor, active before hoptrace's or asked to instrument after it, stays
off, and one warning names the ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` value to set.

For each client and each order ("contrib-first": contrib's ``instrument()`` then hoptrace's;
"hoptrace-first": the reverse) one message is published in a transaction and consumed, and the
test checks the hop: exactly one PRODUCER and one CONSUMER span, both hoptrace's, the consumer
a child of the producer; one ``traceparent`` on the message, naming that producer span; the
transaction ID on the message and in the handler; the handler inside hoptrace's process span;
exactly one take-over warning. Teardown uninstruments hoptrace, then contrib (which must not
raise, even after its ``instrument()`` was blocked).

Celery runs real prefork workers (one per order, started together) instrumented both ways
through ``HOPTRACE_CELERY_MODE=both-<order>`` in ``celery_apps/traced_app.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import brokers
import pytest
from opentelemetry.trace import SpanKind

import hoptrace
from hoptrace.core.instrumentor import reset_warnings

pytestmark = pytest.mark.integration

ORDERS = ("contrib-first", "hoptrace-first")
WARNING_RE = re.compile(r"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=([^\s,;]+)")

#: Kafka topics this module created, deleted at the end.
CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics() -> Iterator[None]:
    yield
    if CREATED:
        location = brokers.locate("kafka")
        if location is not None:
            brokers.delete_kafka_topics(location.url, CREATED)


def unique(client: str, order: str) -> str:
    return f"hoptrace-coexist-{client}-{order}-{uuid.uuid4().hex[:10]}"


def new_topic(client: str, order: str) -> str:
    topic = unique(client, order)
    CREATED.append(topic)
    return topic


def contrib_class(module: str, name: str) -> Any:
    """contrib's instrumentor class (skips the test when that contrib package is missing)."""
    return getattr(pytest.importorskip(module), name)


def confluent_consumer(confluent_kafka: Any, bootstrap: str, topic: str) -> Any:
    """A confluent-kafka consumer of ``topic``'s partition 0 from its beginning (made now: it
    is whichever Consumer class is in force), in a group of its own, no auto-commit."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    return consumer


def kafka_python_consumer(kafka: Any, bootstrap: str, topic: str) -> Any:
    """A kafka-python consumer of ``topic``'s partition 0 from its beginning, no group, no
    auto-commit, its iteration ending after 15 s without a record."""
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                   enable_auto_commit=False, consumer_timeout_ms=15000)
    consumer.assign([kafka.TopicPartition(topic, 0)])
    return consumer


def entry_point_name(cls: type) -> str:
    """The ``opentelemetry_instrumentor`` entry point contrib registers ``cls`` under: the name
    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes (read from the installed metadata)."""
    names = [
        ep.name
        for ep in entry_points(group="opentelemetry_instrumentor")
        if ep.attr == cls.__name__
        and (cls.__module__ == ep.module or cls.__module__.startswith(f"{ep.module}."))
        and getattr(importlib.import_module(ep.module), ep.attr, None) is cls
    ]
    assert len(names) == 1, f"no single entry point for {cls!r}: {names}"
    return names[0]


# ------------------------------------------------------------------ the two instrumentations ---


@dataclass
class Both:
    """Instruments one client with contrib's instrumentor and hoptrace's, in a given order."""

    undo: list[tuple[Callable[[], None], Any]]

    def __call__(self, order: str, contrib: Any, ours_on: Callable[[], None],
                 ours_off: Callable[[], None]) -> None:
        self.undo.append((ours_off, contrib))
        if order == "contrib-first":
            contrib.instrument()
            # The premise: contrib really is on before hoptrace comes (no dependency conflict).
            assert contrib.is_instrumented_by_opentelemetry
            ours_on()
        elif order == "hoptrace-first":
            ours_on()
            contrib.instrument()
        else:  # pragma: no cover - a typo in a parametrization
            raise ValueError(order)


@pytest.fixture
def both(caplog: pytest.LogCaptureFixture) -> Iterator[Both]:
    """Instrument both ways in the test; uninstrument hoptrace, then contrib, after it."""
    caplog.set_level(logging.WARNING, logger="hoptrace")
    reset_warnings()
    instrument = Both([])
    yield instrument
    errors: list[BaseException] = []
    for ours_off, contrib in reversed(instrument.undo):
        # contrib's uninstrument() after a blocked instrument() must not raise either.
        for step in (ours_off, contrib.uninstrument):
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if contrib.is_instrumented_by_opentelemetry:
            errors.append(AssertionError(f"{type(contrib).__name__} still reports instrumented"))
    reset_warnings()
    if errors:
        raise errors[0]


def take_over_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The entry point named by each take-over warning logger "hoptrace" wrote in the test."""
    return [
        match.group(1)
        for record in caplog.records
        if record.name == "hoptrace"
        for match in [WARNING_RE.search(record.getMessage())]
        if match
    ]


# ------------------------------------------------------------------------------ the checks ---


@dataclass
class Seen:
    """What the handler saw: hoptrace's IDs and the raw headers of the message."""

    transaction_id: str | None
    trace_id: str | None
    span_id: str | None
    headers: Any

    @classmethod
    def now(cls, headers: Any) -> Seen:
        return cls(hoptrace.current_transaction_id(), hoptrace.current_trace_id(),
                   hoptrace.current_span_id(), headers)


def header_values(headers: Any, key: str) -> list[str]:
    """Every value of ``key`` in a dict or a Kafka-style list of pairs, as text."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for k, v in items:
        k = k.decode() if isinstance(k, bytes) else k
        if isinstance(k, str) and k.lower() == key:
            out.append(v.decode() if isinstance(v, (bytes, bytearray)) else str(v))
    return out


def carried_transaction_ids(headers: Any) -> list[str]:
    """Transaction IDs in the headers: ``x-transaction-id`` and ``transaction.id`` baggage."""
    found = header_values(headers, "x-transaction-id")
    for value in header_values(headers, "baggage"):
        for member in value.split(","):
            key, _, rest = member.partition("=")
            if key.strip() == "transaction.id":
                found.append(unquote(rest.split(";")[0].strip()))
    return found


def describe(spans: Any) -> str:
    return ", ".join(
        f"{s.kind.name} {s.name!r} ({s.instrumentation_scope.name})" for s in spans.all()
    )


def assert_one_hop(spans: Any, seen: list[Seen], tx_id: str) -> None:
    """One hop, traced once, by hoptrace, with one traceparent and the transaction ID."""
    assert len(seen) == 1, f"handler ran {len(seen)} times"
    (got,) = seen
    producers = [s for s in spans.all() if s.kind == SpanKind.PRODUCER]
    consumers = [s for s in spans.all() if s.kind == SpanKind.CONSUMER]
    assert len(producers) == 1 and len(consumers) == 1, describe(spans)
    (send,), (process,) = producers, consumers
    assert send.instrumentation_scope.name == "hoptrace", describe(spans)
    assert process.instrumentation_scope.name == "hoptrace", describe(spans)
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id

    traceparents = header_values(got.headers, "traceparent")
    assert len(traceparents) == 1, f"traceparent headers: {traceparents}"
    _, trace_id, span_id, _ = traceparents[0].split("-")
    assert (trace_id, span_id) == (f"{send.context.trace_id:032x}",
                                   f"{send.context.span_id:016x}")
    carried = carried_transaction_ids(got.headers)
    assert carried and set(carried) == {tx_id}, f"headers: {got.headers!r}"

    assert got.transaction_id == tx_id
    assert got.trace_id == f"{send.context.trace_id:032x}"
    assert got.span_id == f"{process.context.span_id:016x}"  # inside hoptrace's span, alone


def assert_one_warning(caplog: pytest.LogCaptureFixture, contrib: type) -> None:
    assert take_over_warnings(caplog) == [entry_point_name(contrib)]


# ------------------------------------------------------------------------------------ pika ---


@pytest.mark.parametrize("order", ORDERS)
def test_pika(order: str, amqp_url: str, spans: Any, both: Both,
              caplog: pytest.LogCaptureFixture) -> None:
    pika = pytest.importorskip("pika")
    contrib = contrib_class("opentelemetry.instrumentation.pika", "PikaInstrumentor")
    import hoptrace.pika

    both(order, contrib(), hoptrace.pika.instrument, hoptrace.pika.uninstrument)
    queue = unique("pika", order)
    seen: list[Seen] = []

    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen.append(Seen.now(dict(props.headers or {})))
        ch.basic_ack(method.delivery_tag)

    # Channels made after both instrumentations are on, as an application's are.
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=True)
        with hoptrace.transaction("edge") as tx:
            channel.basic_publish("", queue, b"x")
        channel.basic_consume(queue, handler)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
    assert tx.transaction_id
    assert_one_hop(spans, seen, tx.transaction_id)
    assert_one_warning(caplog, contrib)


# -------------------------------------------------------------------------------- aio-pika ---


@pytest.mark.parametrize("order", ORDERS)
def test_aio_pika(order: str, amqp_url: str, spans: Any, both: Both,
                  caplog: pytest.LogCaptureFixture) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    contrib = contrib_class("opentelemetry.instrumentation.aio_pika", "AioPikaInstrumentor")
    import hoptrace.aio_pika

    both(order, contrib(), hoptrace.aio_pika.instrument, hoptrace.aio_pika.uninstrument)
    seen: list[Seen] = []

    async def run() -> str | None:
        connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique("aio-pika", order), auto_delete=True)
            with hoptrace.transaction("edge") as tx:
                await channel.default_exchange.publish(aio_pika.Message(b"x"),
                                                       routing_key=queue.name)
            delivered: asyncio.Future[asyncio.Task[Any]] = (
                asyncio.get_running_loop().create_future())

            async def on_message(message: Any) -> None:
                async with message.process():
                    seen.append(Seen.now(dict(message.headers or {})))
                    if not delivered.done():
                        delivered.set_result(asyncio.current_task())  # type: ignore[arg-type]

            tag = await queue.consume(on_message)
            try:
                task = await asyncio.wait_for(delivered, 10)
                # The task that ran the callback, with every wrapper around it: once it is
                # done, every span of the delivery has ended.
                await asyncio.wait_for(asyncio.shield(task), 10)
            finally:
                await queue.cancel(tag)
        return tx.transaction_id

    tx_id = asyncio.run(run())
    assert tx_id
    assert_one_hop(spans, seen, tx_id)
    assert_one_warning(caplog, contrib)


# -------------------------------------------------------------------------------- aiokafka ---


@pytest.mark.parametrize("order", ORDERS)
def test_aiokafka(order: str, kafka_bootstrap: str, spans: Any, both: Both,
                  caplog: pytest.LogCaptureFixture) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    contrib = contrib_class("opentelemetry.instrumentation.aiokafka", "AIOKafkaInstrumentor")
    import hoptrace.aiokafka

    both(order, contrib(), hoptrace.aiokafka.instrument, hoptrace.aiokafka.uninstrument)
    topic = new_topic("aiokafka", order)
    seen: list[Seen] = []

    async def run() -> str | None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            with hoptrace.transaction("edge") as tx:
                await producer.send_and_wait(topic, b"v")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap,
                                             auto_offset_reset="earliest",
                                             enable_auto_commit=False)
        consumer.assign([aiokafka.TopicPartition(topic, 0)])
        await consumer.start()
        try:
            # Awaited in this task (not through wait_for, a task of its own): the process scope
            # getone() opens is this task's context until the next getone() or stop().
            msg = await consumer.getone()
            seen.append(Seen.now(list(msg.headers)))  # the handler: right after getone()
        finally:
            await consumer.stop()  # closes the process scope getone() left open
        return tx.transaction_id

    tx_id = asyncio.run(asyncio.wait_for(run(), 30))
    assert tx_id
    assert_one_hop(spans, seen, tx_id)
    assert_one_warning(caplog, contrib)


# ------------------------------------------------------------------------- confluent-kafka ---


@pytest.mark.parametrize("order", ORDERS)
def test_confluent_kafka(order: str, kafka_bootstrap: str, spans: Any, both: Both,
                         caplog: pytest.LogCaptureFixture) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    contrib = contrib_class("opentelemetry.instrumentation.confluent_kafka",
                            "ConfluentKafkaInstrumentor")
    import hoptrace.confluent_kafka

    both(order, contrib(), hoptrace.confluent_kafka.instrument,
         hoptrace.confluent_kafka.uninstrument)
    topic = new_topic("confluent", order)
    seen: list[Seen] = []

    # Both replace the module's Producer/Consumer: clients made now get whichever is in force.
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
    with hoptrace.transaction("edge") as tx:
        producer.produce(topic, b"v", headers=[("x-app", b"1")])
    assert producer.flush(15) == 0
    consumer = confluent_consumer(confluent_kafka, kafka_bootstrap, topic)
    try:
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(Seen.now(list(msg.headers() or [])))  # scope open until next poll
    finally:
        consumer.close()  # closes the process scope poll() left open
    assert tx.transaction_id
    assert_one_hop(spans, seen, tx.transaction_id)
    assert header_values(seen[0].headers, "x-app") == ["1"]  # the caller's header kept
    assert_one_warning(caplog, contrib)


# ---------------------------------------------------------------------------- kafka-python ---


@pytest.mark.parametrize("order", ORDERS)
def test_kafka_python(order: str, kafka_bootstrap: str, spans: Any, both: Both,
                      caplog: pytest.LogCaptureFixture) -> None:
    kafka = pytest.importorskip("kafka")
    contrib = contrib_class("opentelemetry.instrumentation.kafka", "KafkaInstrumentor")
    import hoptrace.kafka_python

    both(order, contrib(), hoptrace.kafka_python.instrument, hoptrace.kafka_python.uninstrument)
    topic = new_topic("kafka-python", order)
    seen: list[Seen] = []

    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1)
    try:
        with hoptrace.transaction("edge") as tx:
            future = producer.send(topic, b"v")
        future.get(15)
        producer.flush(15)
    finally:
        producer.close(5)
    consumer = kafka_python_consumer(kafka, kafka_bootstrap, topic)
    try:
        for msg in consumer:
            seen.append(Seen.now(list(msg.headers or [])))
            break
    finally:
        consumer.close()
    assert tx.transaction_id
    assert_one_hop(spans, seen, tx.transaction_id)
    assert_one_warning(caplog, contrib)


# ---------------------------------------------------------------------------------- celery ---


@pytest.fixture(scope="module")
def celery_workers(amqp_url: str, redis_url: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One prefork worker per order, instrumented both ways in that order, started together."""
    pytest.importorskip("celery")
    pytest.importorskip("opentelemetry.instrumentation.celery")
    from celery_apps.harness import Worker, delete_queue
    from celery_apps.traced_app import build_app

    workers: dict[str, Any] = {}
    for order in ORDERS:
        queue = unique("celery", order)
        app = build_app(amqp_url, redis_url, queue, name=f"coexist-{order}")
        worker = Worker(amqp_url, redis_url, tmp_path_factory.mktemp(f"coexist-{order}"),
                        queue=queue, mode=f"both-{order}", concurrency=1)
        workers[order] = (app, worker)
    try:
        for _, worker in workers.values():
            worker.start()
        for app, worker in workers.values():
            worker.wait_ready(app)
        yield workers
    finally:
        # Stopped together: each warm shutdown can take seconds.
        stoppers = [threading.Thread(target=worker.stop) for _, worker in workers.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for app, worker in workers.values():
            delete_queue(app, worker.queue)


def worker_take_over_warnings(out: Path) -> dict[str, list[str]]:
    """Per worker process (log file), the entry points its take-over warnings named."""
    found: dict[str, list[str]] = {}
    for path in sorted(out.glob("logs-*.jsonl")):
        names = found.setdefault(path.name, [])
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            match = WARNING_RE.search(record.get("message", ""))
            if record.get("logger") == "hoptrace" and match:
                names.append(match.group(1))
    return found


@pytest.mark.parametrize("order", ORDERS)
def test_celery(order: str, celery_workers: dict[str, Any], spans: Any, both: Both,
                caplog: pytest.LogCaptureFixture) -> None:
    from celery import signals

    contrib = contrib_class("opentelemetry.instrumentation.celery", "CeleryInstrumentor")
    hoptrace_celery = importlib.import_module("hoptrace.celery")
    app, worker = celery_workers[order]
    published: list[dict[str, Any]] = []

    def on_published(sender: Any = None, headers: Any = None, **_: Any) -> None:
        published.append(dict(headers or {}))

    signals.after_task_publish.connect(on_published, weak=False)
    try:
        both(order, contrib(), lambda: hoptrace_celery.instrument(app),
             hoptrace_celery.uninstrument)
        with hoptrace.transaction("edge") as tx:
            result = app.tasks["traced.echo"].delay("coexist")
    finally:
        signals.after_task_publish.disconnect(on_published)
    returned = result.get(timeout=30)

    # The caller: one send span, hoptrace's; none of contrib's apply_async/... spans.
    producers = [s for s in spans.all() if s.kind == SpanKind.PRODUCER]
    assert [(s.name, s.instrumentation_scope.name) for s in producers] == [
        ("send traced.echo", "hoptrace")
    ], describe(spans)
    assert not [s for s in spans.all() if s.name.startswith("apply_async/")], describe(spans)
    (send,) = producers
    assert len(published) == 1
    (headers,) = published
    traceparents = header_values(headers, "traceparent")
    assert len(traceparents) == 1
    assert traceparents[0].split("-")[1:3] == [f"{send.context.trace_id:032x}",
                                               f"{send.context.span_id:016x}"]
    assert set(carried_transaction_ids(headers)) == {tx.transaction_id}
    assert_one_warning(caplog, contrib)

    # A second task on the same one-process worker: once its result is back, the echo task's
    # task_postrun receivers have all run, so every span it ended is in the span files.
    assert app.send_task("traced.add", args=(0, 0), queue=worker.queue).get(timeout=30) == 0
    worker_spans = worker.records.spans()
    echo = [s for s in worker_spans if s["kind"] == "CONSUMER" and "traced.echo" in s["name"]]
    assert [s["name"] for s in echo] == ["process traced.echo"], [
        (s["name"], s["kind"]) for s in worker_spans
    ]
    assert not [s["name"] for s in worker_spans if s["name"].startswith(("run/", "apply_async/"))]
    (process,) = echo
    assert process["attributes"].get("messaging.message.id") == result.id
    assert process["parent_id"] == f"{send.context.span_id:016x}"
    assert process["trace_id"] == f"{send.context.trace_id:032x}" == returned["trace_id"]
    assert returned["span_id"] == process["span_id"]  # the task ran in hoptrace's span, alone
    assert returned["transaction_id"] == tx.transaction_id
    assert process["attributes"].get("hoptrace.transaction.id") == tx.transaction_id
    # Each worker process instrumented both ways once and warned once.
    per_process = worker_take_over_warnings(worker.out)
    expected = [entry_point_name(contrib)]
    assert per_process and all(names == expected for names in per_process.values()), per_process
