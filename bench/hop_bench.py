"""One messaging hop (produce + consume) per client, under every variant, side by side.

This is the per-message half of ``make bench`` (``bench/run.py`` drives it). One call of this
script with ``--variant V`` is one interpreter running variant ``V`` on every client in turn,
and prints one JSON line; ``run.py`` calls it for every variant, interleaved, five times.

Variants (see ``VARIANTS``): ``plain``; ``static`` (the plain client sending the very header
bytes hoptrace writes, as constants, with no tracing code: the physical floor);
``hop_prop`` (hoptrace, propagation-only); ``hop_fast`` and ``hop_exact`` (hoptrace with
spans, ``fast_spans=True`` / ``False``); ``otel`` (the OTel contrib instrumentation);
``ddtrace``; and the sampled production setup, ``s_*``: ``ParentBased(TraceIdRatioBased(0.01))``
(ddtrace: a 0.01 sampling rule) and a new transaction / root span per message.

The same business ID on every message: hoptrace carries its transaction ID (minted per
message at the publish, or by ``hoptrace.transaction`` in the sampled setup); OTel carries a
``transaction.id`` baggage entry set per message; ddtrace a ``transaction.id`` baggage item
on a context activated per message (in the sampled setup, on the root span's context).

Every SDK variant exports through the same sink: a BatchSpanProcessor (a queue no run fills,
100 ms delay: see docs/performance.md, finding 9) into an exporter that encodes the batch as
OTLP protobuf (``encode_spans(...).SerializeToString()``) and drops the bytes; its byte and
span counts give bytes per span. ddtrace ships with its own encoder to a stub agent
(``bench/dd_agent_stub.py``), which counts the bytes; a trace processor counts the spans.

Per client, one run produces N messages (measured until every one is acknowledged), then
consumes them (measured until the last is handled; the handler looks at the current context,
as logging would). Each of the two windows (:class:`Window`) measures wall time and the
process's CPU time (user + system, every thread), and ends by exporting every span the
variant finished, so export and encoding are inside it. CPU time is the instrumentation's own
cost, which waiting for a broker on a busy machine does not blur; ``run.py`` takes its
targets from it. Producer and consumer run in this one process for every client, so no
other process does the application's work. Celery has no worker here: the
consume side runs each message through Celery's own worker request
(``celery.worker.request.Request.execute``: signals, task tracer, the task), i.e. the solo
pool's work minus its event loop. Celery has no broker in its row at all: ``apply_async``
publishes into a stub producer (Celery builds and signals the message, kombu does not send
it), and the messages it kept are then executed. A round trip through RabbitMQ added
hundreds of µs of broker noise per task on a shared 2-core machine, larger than every
instrumentation's cost; what Celery's AMQP client pays per header is in the kombu row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

AMQP_URL = os.environ.get("HOPTRACE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: pika reads kombu's "//" (the default vhost) as vhost "" and needs "/%2F".
PIKA_URL = AMQP_URL[:-2] + "/%2F" if AMQP_URL.endswith("//") else AMQP_URL
KAFKA = os.environ.get("HOPTRACE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CLIENTS = ("confluent-kafka", "kafka-python", "aiokafka", "kombu", "pika", "aio-pika", "celery")
VARIANTS = (
    "plain", "static", "hop_prop", "hop_fast", "hop_exact", "otel", "ddtrace",
    "s_hop_prop", "s_hop_fast", "s_hop_exact", "s_otel", "s_ddtrace",
)
#: Which peer instruments which client (no entry: that peer has no instrumentation for it).
OTEL_CLIENTS = {"confluent-kafka", "kafka-python", "aiokafka", "pika", "aio-pika", "celery"}
DDTRACE_CLIENTS = {"confluent-kafka", "aiokafka", "kombu", "celery"}
#: Header names that are instrumentation's, when the probe reads what hoptrace wrote.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
PAYLOAD = b'{"order": 42, "items": ["a", "b"]}'
BAGGAGE_KEY = "transaction.id"


def applies(variant: str, client: str) -> bool:
    """Whether ``variant`` has anything to measure on ``client``."""
    base = variant.removeprefix("s_")
    if base == "otel":
        return client in OTEL_CLIENTS
    if base == "ddtrace":
        return client in DDTRACE_CLIENTS
    return True


def is_trace_header(name: str) -> bool:
    return name.lower() in TRACE_HEADERS or name.lower().startswith("x-")


def new_business_id() -> str:
    return f"{random.getrandbits(128):032x}"


# --------------------------------------------------------------------------------------------
# The sink every SDK variant exports through, and the variants' set-up


class Sink:
    """Counts what the exporter received: spans and OTLP-encoded bytes."""

    spans = 0
    bytes = 0
    provider: Any = None
    dd_tracer: Any = None

    @classmethod
    def totals(cls) -> tuple[int, int]:
        """Flush whatever is queued; return (spans, bytes) so far."""
        if cls.provider is not None:
            cls.provider.force_flush(30_000)
        if cls.dd_tracer is not None:
            cls.dd_tracer.flush()
            time.sleep(0.2)
            return cls.spans, dd_agent_bytes()
        return cls.spans, cls.bytes


class Window:
    """One measured window: wall time and the process's CPU time (user + system, all threads).

    The CPU clock counts every thread of this interpreter: the client's own threads
    (librdkafka's, kafka-python's sender, pika's and aio-pika's I/O), the BatchSpanProcessor's
    export thread encoding OTLP, ddtrace's writer thread encoding msgpack. Every client runs
    producer and consumer in this one process (Celery too: see the module doc), so no other
    process does the application's work. :meth:`stop` first exports every span the variant
    has finished (``force_flush``; ddtrace: ``tracer.flush()``), so no variant leaves its export
    cost to run after the window. A garbage collection before the window starts it from the
    same heap state in every variant.
    """

    def __init__(self) -> None:
        gc.collect()
        self.cpu0 = time.process_time_ns()
        self.wall0 = time.perf_counter_ns()

    def stop(self) -> tuple[int, int]:
        """Flush the spans; return (wall ns, CPU ns) since the window started."""
        if Sink.provider is not None:
            Sink.provider.force_flush(30_000)
        if Sink.dd_tracer is not None:
            Sink.dd_tracer.flush()
        return time.perf_counter_ns() - self.wall0, time.process_time_ns() - self.cpu0


def dd_agent_bytes() -> int:
    import urllib.request

    url = os.environ["DD_TRACE_AGENT_URL"] + "/bench/bytes"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(json.loads(resp.read())["bytes"])


def install_sdk(sampled: bool) -> Any:
    """A global SDK provider exporting through the OTLP-encoding sink; return it."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class OtlpEncodingSink(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            Sink.bytes += len(encode_spans(spans).SerializeToString())
            Sink.spans += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    kwargs = {"sampler": ParentBased(TraceIdRatioBased(0.01))} if sampled else {}
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(BatchSpanProcessor(
        OtlpEncodingSink(), max_queue_size=1_000_000, schedule_delay_millis=100
    ))
    trace.set_tracer_provider(provider)
    Sink.provider = provider
    return provider


class OtelBaggage:
    """OTel's way to carry the business ID: a baggage entry set per message."""

    def __init__(self) -> None:
        from opentelemetry import baggage, context

        self._set = baggage.set_baggage
        self._attach = context.attach
        self._detach = context.detach
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = self._attach(self._set(BAGGAGE_KEY, new_business_id()))

    def __exit__(self, *exc: object) -> None:
        self._detach(self._token)


class OtelRoot(OtelBaggage):
    """The sampled setup for OTel: a root span per message, with the baggage entry."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace

        self._tracer = trace.get_tracer("bench")
        self._cm: Any = None

    def __enter__(self) -> None:
        self._cm = self._tracer.start_as_current_span("job")
        self._cm.__enter__()
        super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._cm.__exit__(None, None, None)


class DdBaggage:
    """ddtrace's way: a context carrying a ``transaction.id`` baggage item, per message."""

    def __init__(self) -> None:
        from ddtrace.trace import Context, tracer

        self._context = Context
        self._provider = tracer.context_provider

    def __enter__(self) -> None:
        ctx = self._context()
        ctx.set_baggage_item(BAGGAGE_KEY, new_business_id())
        self._provider.activate(ctx)

    def __exit__(self, *exc: object) -> None:
        self._provider.activate(None)


class DdRoot:
    """The sampled setup for ddtrace: a root span per message, the baggage item on it."""

    def __init__(self) -> None:
        from ddtrace.trace import tracer

        self._tracer = tracer
        self._span: Any = None

    def __enter__(self) -> None:
        self._span = self._tracer.trace("job")
        self._span.context.set_baggage_item(BAGGAGE_KEY, new_business_id())

    def __exit__(self, *exc: object) -> None:
        self._span.finish()


class HoptraceTransaction:
    """The sampled setup for hoptrace: a new transaction per message."""

    def __init__(self) -> None:
        import hoptrace

        self._transaction = hoptrace.transaction
        self._cm: Any = None

    def __enter__(self) -> None:
        self._cm = self._transaction("job")
        self._cm.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)


def setup(variant: str) -> Callable[[], Any]:
    """Install ``variant`` on every client; return the factory of its per-message scope."""
    sampled = variant.startswith("s_")
    base = variant.removeprefix("s_")
    if base in ("plain", "static"):
        return contextlib.nullcontext
    if base.startswith("hop_"):
        import hoptrace
        import hoptrace.aio_pika
        import hoptrace.aiokafka
        import hoptrace.celery
        import hoptrace.confluent_kafka
        import hoptrace.kafka_python
        import hoptrace.kombu
        import hoptrace.pika

        if base == "hop_prop":
            hoptrace.configure(propagation_only=True)
        else:
            install_sdk(sampled)
            hoptrace.configure(fast_spans=(base == "hop_fast"))
        for module in (hoptrace.aio_pika, hoptrace.aiokafka, hoptrace.celery,
                       hoptrace.confluent_kafka, hoptrace.kafka_python, hoptrace.kombu,
                       hoptrace.pika):
            module.instrument()
        return HoptraceTransaction if sampled else contextlib.nullcontext
    if base == "otel":
        install_sdk(sampled)
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
        from opentelemetry.instrumentation.kafka import KafkaInstrumentor
        from opentelemetry.instrumentation.pika import PikaInstrumentor

        for instrumentor in (AioPikaInstrumentor, AIOKafkaInstrumentor, CeleryInstrumentor,
                             ConfluentKafkaInstrumentor, KafkaInstrumentor, PikaInstrumentor):
            instrumentor().instrument()
        return OtelRoot if sampled else OtelBaggage
    if base == "ddtrace":
        # Set by run.py before this interpreter started: DD_TRACE_AGENT_URL (the stub), and
        # for the sampled setup DD_TRACE_SAMPLING_RULES at 0.01.
        import ddtrace
        from ddtrace.trace import TraceFilter, tracer

        class CountSpans(TraceFilter):
            def process_trace(self, trace: Any) -> Any:
                Sink.spans += len(trace)
                return trace

        tracer.configure(trace_processors=[CountSpans()])
        # DD_KAFKA_PROPAGATION_ENABLED=true (set by run.py): without it ddtrace writes no
        # header on Kafka records, so the consumer could not carry the business ID.
        ddtrace.patch(kafka=True, aiokafka=True, kombu=True, celery=True)
        Sink.dd_tracer = tracer
        return DdRoot if sampled else DdBaggage
    raise ValueError(variant)


# --------------------------------------------------------------------------------------------
# The clients: each produces `count` messages, then consumes them. Returns
# (produce ns, consume ns, the trace headers of the last message consumed).

Headers = dict[str, str]


def _new_name() -> str:
    return f"hoptrace-bench-{uuid.uuid4().hex[:10]}"


def _delete_topic(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        for future in AdminClient({"bootstrap.servers": KAFKA}).delete_topics([topic]).values():
            future.result(10)
    except Exception:
        pass


def _kafka_headers(raw: Any) -> Headers:
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw or ()
            if is_trace_header(k)}


def confluent_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    import confluent_kafka
    from opentelemetry.context import get_current

    topic = _new_name()
    producer = confluent_kafka.Producer({"bootstrap.servers": KAFKA, "linger.ms": 5})
    producer.produce(topic, PAYLOAD)
    producer.flush(30)
    headers = [(k, v.encode()) for k, v in static.items()] if static else None
    produce = producer.produce
    window = Window()
    for i in range(count):
        with scope():
            produce(topic, PAYLOAD, headers=headers)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    produce = window.stop()
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": KAFKA, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    while True:  # the warm-up record, untimed
        msg = consumer.poll(5)
        if msg is not None and msg.error() is None:
            break
    seen = 0
    window = Window()
    while seen < count:
        msg = consumer.poll(5)
        if msg is None or msg.error() is not None:
            continue
        get_current()
        seen += 1
    consume = window.stop()
    last = _kafka_headers(msg.headers())
    consumer.close()
    _delete_topic(topic)
    return produce, consume, last


def kafka_python_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from opentelemetry.context import get_current

    topic = _new_name()
    producer = KafkaProducer(bootstrap_servers=KAFKA, linger_ms=5)
    producer.send(topic, PAYLOAD).get(30)
    headers = [(k, v.encode()) for k, v in static.items()] if static else None
    send = producer.send
    window = Window()
    for _ in range(count):
        with scope():
            send(topic, PAYLOAD, headers=list(headers) if headers else None)
    producer.flush(60)
    produce = window.stop()
    producer.close(5)
    consumer = KafkaConsumer(bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=30000)
    consumer.assign([TopicPartition(topic, 0)])
    iterator = iter(consumer)
    next(iterator)  # the warm-up record, untimed
    window = Window()
    for seen, msg in enumerate(iterator, 1):  # noqa: B007  (the last one's headers are read)
        get_current()
        if seen == count:
            break
    consume = window.stop()
    last = _kafka_headers(msg.headers)
    del iterator
    consumer.close()
    _delete_topic(topic)
    return produce, consume, last


async def _aiokafka(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from opentelemetry.context import get_current

    topic = _new_name()
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=5)
    await producer.start()
    try:
        await producer.send_and_wait(topic, PAYLOAD)
        headers = [(k, v.encode()) for k, v in static.items()] if static else None
        futures = []
        window = Window()
        for _ in range(count):
            with scope():
                futures.append(await producer.send(
                    topic, PAYLOAD, headers=list(headers) if headers else None
                ))
        await asyncio.gather(*futures)
        produce = window.stop()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()
    try:
        await consumer.getone()  # the warm-up record, untimed
        seen = 0
        window = Window()
        async for msg in consumer:  # noqa: B007  (the last one's headers are read)
            get_current()
            seen += 1
            if seen == count:
                break
        consume = window.stop()
        last = _kafka_headers(msg.headers)
    finally:
        await consumer.stop()
    _delete_topic(topic)
    return produce, consume, last


def aiokafka_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    return asyncio.run(_aiokafka(count, scope, static))


def _amqp_headers(raw: Any) -> Headers:
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (raw or {}).items()
            if is_trace_header(k)}


def kombu_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    import kombu
    from opentelemetry.context import get_current

    name = _new_name()
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct", auto_delete=True),
                        routing_key="k", queue_arguments={"x-expires": 600_000})
    received = 0
    last: Headers = {}

    def on_message(body: Any, message: Any) -> None:
        nonlocal received, last
        get_current()
        received += 1
        if received == count:
            last = _amqp_headers(message.headers)
        message.ack()

    with kombu.Connection(AMQP_URL) as conn:
        queue(conn.channel()).declare()
        try:
            producer = conn.Producer()
            publish = producer.publish
            exchange = queue.exchange
            window = Window()
            for _ in range(count):
                with scope():
                    publish({"order": 42}, exchange=exchange, routing_key="k",
                            headers=dict(static) if static else None)
            produce = window.stop()
            window = Window()
            with conn.Consumer(queue, callbacks=[on_message], prefetch_count=1000):
                while received < count:
                    conn.drain_events(timeout=30)
            consume = window.stop()
        finally:
            queue(conn.channel()).delete()
    return produce, consume, last


def pika_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    import pika
    from opentelemetry.context import get_current

    connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    queue = _new_name()
    channel.queue_declare(queue, arguments={"x-expires": 600_000})
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=1,
                                      headers=dict(static) if static else None)
    received = 0
    last: Headers = {}

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal received, last
        get_current()
        received += 1
        if received == count:
            last = _amqp_headers(props.headers)
        ch.basic_ack(method.delivery_tag)

    try:
        publish = channel.basic_publish
        window = Window()
        for _ in range(count):
            with scope():
                publish("", queue, PAYLOAD, properties)
        produce = window.stop()
        tag = channel.basic_consume(queue, on_message)
        window = Window()
        deadline = time.monotonic() + 120
        while received < count and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.01)
        consume = window.stop()
        channel.basic_cancel(tag)
        if received < count:
            raise RuntimeError(f"pika: consumed {received} of {count}")
    finally:
        channel.queue_delete(queue)
        connection.close()
    return produce, consume, last


async def _aio_pika(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    import aio_pika
    from opentelemetry.context import get_current

    connection = await aio_pika.connect(PIKA_URL)
    received = 0
    last: Headers = {}
    done = asyncio.Event()

    async def on_message(message: Any) -> None:
        nonlocal received, last
        get_current()
        received += 1
        await message.ack()
        if received == count:
            last = _amqp_headers(message.headers)
            done.set()

    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(_new_name(), arguments={"x-expires": 600_000})
        exchange = channel.default_exchange
        name = queue.name
        try:
            window = Window()
            for _ in range(count):
                with scope():
                    await exchange.publish(
                        aio_pika.Message(PAYLOAD, headers=dict(static) if static else None),
                        routing_key=name,
                    )
            produce = window.stop()
            window = Window()
            tag = await queue.consume(on_message)
            await asyncio.wait_for(done.wait(), 120)
            consume = window.stop()
            await queue.cancel(tag)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    return produce, consume, last


def aio_pika_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    return asyncio.run(_aio_pika(count, scope, static))


class _StubConnection:
    def _reraise_as_library_errors(self, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext()


class _StubProducer:
    """A kombu producer stand-in: keeps each message Celery publishes, sends nothing."""

    connection = _StubConnection()

    def __init__(self) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.sent.append((body, kwargs))


def celery_run(count: int, scope: Callable[[], Any], static: Headers | None) -> Any:
    """Celery in one process: ``apply_async`` into a stub producer, then each message through
    the worker's own ``Request.execute`` (no broker, no worker loop: see the module doc)."""
    from celery import Celery
    from celery.worker.request import Request
    from kombu.message import Message
    from kombu.serialization import dumps
    from opentelemetry.context import get_current

    app = Celery("bench", broker="memory://", set_as_current=False)

    @app.task(name="bench.order")
    def order(n: int) -> None:
        get_current()

    producer = _StubProducer()
    apply_async = order.apply_async
    extra = {"headers": dict(static)} if static else {}
    apply_async((0,), producer=producer, **extra)  # the first one: lazy set-up, untimed
    window = Window()
    for _ in range(count):
        with scope():
            apply_async((1,), producer=producer, **extra)
    produce = window.stop()

    messages = []  # what the transport would hand the worker: untimed
    for body, kwargs in producer.sent[1:]:
        ctype, encoding, data = dumps(body, serializer=kwargs.get("serializer") or "json")
        properties = {k: kwargs[k] for k in ("correlation_id", "reply_to", "priority")
                      if kwargs.get(k) is not None}
        messages.append(Message(
            body=data, delivery_tag=len(messages) + 1, content_type=ctype,
            content_encoding=encoding, headers=kwargs.get("headers") or {},
            properties=properties,
            delivery_info={"exchange": "", "routing_key": "celery", "redelivered": False},
        ))
    window = Window()
    for message in messages:
        Request(message, app=app, task=order, hostname="bench@local").execute()
    consume = window.stop()
    return produce, consume, _amqp_headers(messages[-1].headers)


RUNS: dict[str, Callable[[int, Callable[[], Any], Headers | None], Any]] = {
    "confluent-kafka": confluent_run,
    "kafka-python": kafka_python_run,
    "aiokafka": aiokafka_run,
    "kombu": kombu_run,
    "pika": pika_run,
    "aio-pika": aio_pika_run,
    "celery": celery_run,
}


def run_variant(variant: str, clients: list[str], counts: dict[str, int],
                static: dict[str, Headers]) -> dict[str, Any]:
    """Run ``variant`` on ``clients``; return per client µs per message, spans and bytes."""
    scope = setup(variant)
    out: dict[str, Any] = {}
    for client in clients:
        if not applies(variant, client):
            continue
        count = counts[client]
        spans0, bytes0 = Sink.totals()
        headers = static.get(client) if variant == "static" else None
        if client == "celery" and variant.removeprefix("s_") == "ddtrace":
            # ddtrace's kombu integration (off by default in ddtrace.patch_all) would also
            # trace Celery's own publishes: a Celery user of ddtrace gets the celery one only.
            import kombu  # noqa: F401  (ddtrace patches kombu when it is first imported)
            from ddtrace.contrib.internal.kombu.patch import unpatch

            unpatch()
        (produce_ns, produce_cpu), (consume_ns, consume_cpu), last = RUNS[client](
            count, scope, headers
        )
        spans1, bytes1 = Sink.totals()
        out[client] = {
            "produce_us": produce_ns / count / 1000,
            "consume_us": consume_ns / count / 1000,
            "total_us": (produce_ns + consume_ns) / count / 1000,
            "produce_cpu_us": produce_cpu / count / 1000,
            "consume_cpu_us": consume_cpu / count / 1000,
            "cpu_us": (produce_cpu + consume_cpu) / count / 1000,
            "messages": count,
            "spans": spans1 - spans0,
            "bytes": bytes1 - bytes0,
            "headers": last,
        }
    if Sink.provider is not None:
        Sink.provider.shutdown()
    return out


def _iter_counts(spec: str) -> Iterator[tuple[str, int]]:
    for item in spec.split(","):
        client, _, count = item.partition("=")
        yield client, int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--counts", required=True, help="client=N,client=N,...")
    parser.add_argument("--static", default="{}", help="JSON: client -> headers (static)")
    args = parser.parse_args()
    counts = dict(_iter_counts(args.counts))
    result = run_variant(args.variant, list(counts), counts, json.loads(args.static))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
