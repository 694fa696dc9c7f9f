"""Issue 15, target 1 in instructions: hoptrace with spans, its floor, and OTel contrib.

Target 1 asks hoptrace's overhead with spans (every span sampled) to be at most half the
cheapest peer's. ``bench/results/summary.md`` measures it in CPU time, which moves with the
machine's load; this script counts callgrind instructions per message (produce + consume),
the method of ``bench/callgrind_cases.py`` (whose runner it uses): the clients' network calls
are no-op stand-ins, each case runs one function N times through ``starmap``, and callgrind
counts only inside ``starmap_next``, in the foreground thread.

Every case pays real OTLP encoding in that thread: its spans end into
:class:`ForegroundBatchProcessor`, which does a BatchSpanProcessor's ``on_end`` (a sampled
check and a queue append) and, every ``BATCH`` spans, the export that processor's thread
would do, ``encode_spans(batch).SerializeToString()``, at once. ``CALLS`` is a multiple of
``BATCH``, so the spans a case ends in the counted loop are encoded in it exactly once.
``CASE:simple`` runs the same case through a SimpleSpanProcessor (one export per span),
``CASE:drop`` through the same processor into an exporter that encodes nothing (the
difference is the encoding); ``CASE/send`` and ``CASE/receive`` count one half of the hop.
The ``proc_*`` cases count each processor's own machinery (one bare span ended, nothing
encoded) against ``proc_none`` (no processor).

Why not a SimpleSpanProcessor: its ``on_end`` attaches and detaches a context around every
export (+13.5k per span against +7.4k for BatchSpanProcessor's and +12.3k for this one's,
which includes the garbage collector walking the queued spans as a full BSP queue makes it
do), and one export per span re-encodes the resource and the scope every time: about +210k
per span in all, the same for every variant, so it would weigh on contrib's three spans
against two and on no real deployment.

Each case produces in a context of its own (a producer elsewhere) and then receives the
record and runs a handler that reads the current context, as ``hop_bench`` does. Cases,
per message:

``plain_confluent`` / ``plain_pika``
    The stand-ins alone, no tracing: the overheads and ratios are over these.
``floor``
    No hoptrace code: a PRODUCER span with the messaging conventions' attributes
    (``span_floor.SEND_ATTRS``), ``traceparent`` and ``baggage`` formatted into the
    record's headers; on the consume side the headers parsed back, a CONSUMER span
    (``span_floor.PROCESS_ATTRS``) child of the send span, its context (with the baggage
    entry) attached around the handler and detached. Two spans: what any implementation of
    "a span per hop, the handler in the producer's trace" pays.
``floor_promise``
    The same plus what hoptrace's spans add for its promise: ``hoptrace.transaction.id`` on
    both spans, ``hoptrace.queue_wait_ms`` on the process span.
``hop_fast``
    hoptrace on confluent-kafka (``_produce`` / ``_poll``, ``fast_spans=True``), the
    send span ended by the delivery report the stand-in producer calls back at once, the
    process span held until the next poll.
``otel_confluent``
    ``ConfluentKafkaInstrumentor.instrument_producer`` / ``instrument_consumer`` around the
    same stand-ins; the business ID carried as ``hop_bench.OtelBaggage`` does (a baggage
    entry attached around each produce). Contrib makes three spans per message (send,
    recv, process).
``hop_pika`` / ``otel_pika``
    The same pair on pika: hoptrace's ``basic_publish`` wrapper and ``basic_consume``
    callback wrapper against contrib's ``PikaInstrumentor.instrument_channel`` on a
    stand-in ``BlockingChannel``, the delivery handed to the callback at once.

    python bench/callgrind_peers.py           # every case; writes peers_instructions.json
    python bench/callgrind_peers.py floor hop_fast/send otel_confluent:drop   # some, printed
    python bench/callgrind_peers.py --run CASE 1024                 # what valgrind runs
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika  # type: ignore[import-untyped]
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from pika.adapters.blocking_connection import BlockingChannel  # type: ignore[import-untyped]
from pika.spec import Basic  # type: ignore[import-untyped]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_cases  # the shared runner
from span_floor import PROCESS_ATTRS, SEND_ATTRS

KAFKA_CASES = ("plain_confluent", "floor", "floor_promise", "hop_fast", "otel_confluent")
PIKA_CASES = ("plain_pika", "hop_pika", "otel_pika")
#: Each case's client, and the case that is that client with no tracing (its stand-ins).
PLAIN = {**dict.fromkeys(KAFKA_CASES, "plain_confluent"), **dict.fromkeys(PIKA_CASES, "plain_pika")}
PROC_CASES = ("proc_none", "proc_batch", "proc_bsp", "proc_simple")
CASES = KAFKA_CASES + PIKA_CASES
#: BatchSpanProcessor's default ``max_export_batch_size``.
BATCH = 512
#: A multiple of BATCH: every span a case ends in the counted loop is encoded in it.
CALLS = 2 * BATCH
TOPIC = "orders"
GROUP = "billing"
PAYLOAD = b'{"order": 42, "items": ["a", "b"]}'
BAGGAGE_KEY = "transaction.id"
RESULTS = Path(__file__).resolve().parent / "results" / "peers_instructions.json"


# --------------------------------------------------------------------- export ---


class OtlpEncoder(SpanExporter):
    """An exporter that encodes what it gets as OTLP protobuf (as ``hop_bench``'s sink does)."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        self._encode = encode_spans
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.bytes += len(self._encode(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class ForegroundBatchProcessor(SpanProcessor):
    """A BatchSpanProcessor's work done in the caller's thread, where callgrind counts it.

    ``on_end`` is what BatchSpanProcessor's is (skip an unsampled span, append to the queue);
    every ``size`` spans the queue is exported right there, as the processor's worker thread
    would export it.
    """

    def __init__(self, exporter: Any, size: int = BATCH) -> None:
        self._exporter = exporter
        self._size = size
        self._queue: list[Any] = []

    def on_end(self, span: Any) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        queue = self._queue
        queue.append(span)
        if len(queue) >= self._size:
            self._queue = []
            self._exporter.export(queue)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        queue, self._queue = self._queue, []
        if queue:
            self._exporter.export(queue)
        return True


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def encoding_provider(processor: str = "batch") -> Any:
    """A tracer provider whose spans end into an OTLP encoder.

    ``batch``: through :class:`ForegroundBatchProcessor`; ``simple``: through a
    SimpleSpanProcessor (one export per span); ``drop``: the first, with nothing encoded.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    exporter = OtlpEncoder()
    if processor == "simple":
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif processor == "batch":
        provider.add_span_processor(ForegroundBatchProcessor(exporter))
    elif processor == "drop":  # the same processor, nothing encoded: the encoding's share
        provider.add_span_processor(ForegroundBatchProcessor(_Drop()))
    else:
        raise ValueError(f"unknown processor {processor!r}")
    return provider


def _proc_case(case: str) -> Callable[[], object]:
    """One bare span per call, ended into a processor that exports to a dropping exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
    )

    provider = TracerProvider()
    kind = case.removeprefix("proc_")
    if kind == "batch":
        provider.add_span_processor(ForegroundBatchProcessor(_Drop()))
    elif kind == "bsp":
        provider.add_span_processor(BatchSpanProcessor(
            _Drop(), max_queue_size=1_000_000, schedule_delay_millis=100))
    elif kind == "simple":
        provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    start = provider.get_tracer("proc").start_span
    return lambda: start("send orders").end()


# ----------------------------------------------------------------- stand-ins ---

#: A case's two halves: send one message (in a context of its own), receive and handle it.
Hop = tuple[Callable[[], None], Callable[[], None]]
#: Each case produces in a context of its own, as a producer in another process would: a
#: consumer's handler scope, held until the next poll, must not parent the next send.
elsewhere = contextvars.Context


class _Kafka:
    """confluent-kafka stand-in: producer, consumer and the one record in flight.

    ``produce`` keeps the headers it is given, stamps the record's create time and calls the
    delivery callback at once (librdkafka would on the next ``poll`` / ``flush``); ``poll``
    returns the record.
    """

    def __init__(self) -> None:
        self._headers: Any = None
        self._timestamp = (1, 0)
        self.config = {"bootstrap.servers": "127.0.0.1:9092", "group.id": GROUP}

    def produce(self, topic: str, value: Any = None, *args: Any, **kwargs: Any) -> None:
        self._headers = kwargs.get("headers")
        self._timestamp = (1, time.time_ns() // 1_000_000)  # TIMESTAMP_CREATE_TIME
        callback = kwargs.get("on_delivery")
        if callback is not None:
            callback(None, self)

    def poll(self, timeout: float = -1) -> Any:
        return self

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 12345

    def key(self) -> None:
        return None

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> None:
        return None


def _floor_case(provider: Any, promise: bool) -> Hop:
    from opentelemetry import baggage
    from opentelemetry.context import attach, detach, get_current
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        TraceFlags,
        set_span_in_context,
    )

    start = provider.get_tracer("floor").start_span
    kafka = _Kafka()
    bits = random.getrandbits
    sampled = TraceFlags(TraceFlags.SAMPLED)
    producer, consumer = kafka.produce, kafka.poll
    set_baggage = baggage.set_baggage
    producer_kind, consumer_kind = SpanKind.PRODUCER, SpanKind.CONSUMER

    def send() -> None:
        tx = f"{bits(128):032x}"
        attrs = {**SEND_ATTRS, "hoptrace.transaction.id": tx} if promise else SEND_ATTRS
        span = start("send orders", kind=producer_kind, attributes=attrs)
        sent = span.get_span_context()
        producer(TOPIC, PAYLOAD, headers=[
            ("traceparent", f"00-{sent.trace_id:032x}-{sent.span_id:016x}-01".encode()),
            ("baggage", f"{BAGGAGE_KEY}={tx}".encode()),
        ])
        span.end()

    def receive() -> None:
        record = consumer(1.0)
        headers = dict(record.headers())
        _, trace_hex, span_hex, _ = headers["traceparent"].decode().split("-")
        key, _, value = headers["baggage"].decode().partition("=")
        parent = set_baggage(key, value, set_span_in_context(NonRecordingSpan(
            SpanContext(int(trace_hex, 16), int(span_hex, 16), True, sampled))))
        attrs = PROCESS_ATTRS
        if promise:
            waited = time.time_ns() / 1e6 - record.timestamp()[1]
            attrs = {**PROCESS_ATTRS, "hoptrace.transaction.id": value,
                     "hoptrace.queue_wait_ms": waited}
        process = start("process orders", context=parent, kind=consumer_kind,
                        attributes=attrs)
        token = attach(set_span_in_context(process, parent))
        get_current()  # the handler looks at its context, as logging would
        detach(token)
        process.end()

    return send, receive


def _plain_confluent() -> Hop:
    from opentelemetry.context import get_current

    kafka = _Kafka()

    def receive() -> None:
        kafka.poll(1.0)
        get_current()

    return lambda: kafka.produce(TOPIC, PAYLOAD), receive


def _hop_confluent() -> Hop:
    from opentelemetry.context import get_current

    import hoptrace
    import hoptrace.confluent_kafka as ck

    hoptrace.configure(fast_spans=True)
    kafka = _Kafka()
    produce, poll = ck._produce, ck._poll
    original_produce, original_poll = kafka.produce, kafka.poll
    owner = object()

    def send() -> None:
        produce(original_produce, None, TOPIC, (PAYLOAD,), {})

    def receive() -> None:
        poll(original_poll, owner, GROUP, (1.0,), {})
        get_current()

    return send, receive


def _otel_confluent(provider: Any) -> Hop:
    from hop_bench import OtelBaggage
    from opentelemetry.context import get_current
    from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor

    kafka: Any = _Kafka()
    producer: Any = ConfluentKafkaInstrumentor.instrument_producer(kafka, provider)
    consumer: Any = ConfluentKafkaInstrumentor.instrument_consumer(kafka, provider)
    scope = OtelBaggage()
    enter, leave = scope.__enter__, scope.__exit__

    def send() -> None:
        enter()
        producer.produce(TOPIC, PAYLOAD)
        leave(None, None, None)

    def receive() -> None:
        consumer.poll(1.0)
        get_current()

    return send, receive


# ----------------------------------------------------------------------- pika ---


class _PikaChannel(BlockingChannel):  # type: ignore[misc]
    """A ``BlockingChannel`` stand-in (its ``__init__`` never runs: no connection).

    ``basic_publish`` keeps the message in flight; :meth:`deliver` hands it to the consumer
    callback with properties as the consumer would decode them (a new object, the headers
    copied), as ``process_data_events`` would.
    """

    def __init__(self) -> None:  # no connection, unlike BlockingChannel's
        self._consumer_infos: dict[str, Any] = {}
        self._connection = _PikaConnection()  # what the `connection` property returns
        self._in_flight: Any = None
        self._tag = 0

    def basic_consume(self, queue: str, on_message_callback: Any, *args: Any,
                      **kwargs: Any) -> str:
        import types

        self._consumer_infos["ctag1.0"] = types.SimpleNamespace(
            on_message_callback=on_message_callback)
        return "ctag1.0"

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any = None, mandatory: bool = False) -> None:
        self._in_flight = (exchange, routing_key, body, properties)

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        return None

    def deliver(self) -> None:
        exchange, routing_key, body, sent = self._in_flight
        self._tag += 1
        method = Basic.Deliver(consumer_tag="ctag1.0", delivery_tag=self._tag,
                               redelivered=False, exchange=exchange, routing_key=routing_key)
        properties = pika.BasicProperties(
            content_type=sent.content_type, delivery_mode=sent.delivery_mode,
            headers=dict(sent.headers) if sent.headers else None)
        self._consumer_infos["ctag1.0"].on_message_callback(self, method, properties, body)


class _PikaConnection:
    class params:
        host = "127.0.0.1"
        port = 5672


def _on_message(channel: Any, method: Any, properties: Any, body: Any) -> None:
    from opentelemetry.context import get_current

    get_current()  # the handler looks at its context, as logging would
    channel.basic_ack(method.delivery_tag)


def _pika_case(case: str, provider: Any) -> Hop:
    """hop_bench's pika run: ``basic_publish`` of one properties object; a consumer callback
    that looks at its context and acks; each instrumented per channel."""
    channel: Any = _PikaChannel()
    if case == "hop_pika":
        import hoptrace
        import hoptrace.pika

        hoptrace.configure(fast_spans=True)
        hoptrace.pika.instrument_channel(channel)
        scope: Any = contextlib.nullcontext()
    elif case == "plain_pika":
        scope = contextlib.nullcontext()
    else:
        from hop_bench import OtelBaggage
        from opentelemetry.instrumentation.pika import PikaInstrumentor

        PikaInstrumentor.instrument_channel(channel, tracer_provider=provider)
        scope = OtelBaggage()
    channel.basic_consume(TOPIC, _on_message)
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=1)
    enter, leave, publish = scope.__enter__, scope.__exit__, channel.basic_publish

    def send() -> None:
        enter()
        publish("", TOPIC, PAYLOAD, properties)
        leave(None, None, None)

    return send, channel.deliver


# ---------------------------------------------------------------------- cases ---


def build(case: str, provider: Any = None) -> Callable[[], object]:
    """The function one call of ``case`` runs: ``NAME[/send|/receive][:PROCESSOR]``.

    ``NAME`` alone sends one message and receives it; ``/send`` only sends, ``/receive`` only
    receives (the message of one send made here, again and again). ``PROCESSOR``: ``batch``
    (the default), ``simple`` or ``drop`` (see :func:`encoding_provider`). Without
    ``provider``, one is made and installed globally (as hoptrace's cases need); a given
    ``provider`` must already be the global one.
    """
    spec, _, processor = case.partition(":")
    name, _, half = spec.partition("/")
    if name.startswith("proc_"):
        return _proc_case(name)
    if provider is None:
        from opentelemetry import trace

        provider = encoding_provider(processor or "batch")
        trace.set_tracer_provider(provider)
    send, receive = _hop(name, provider)
    if half == "receive":
        elsewhere().run(send)
        return receive
    if half == "send":
        return lambda: elsewhere().run(send)
    if half:
        raise ValueError(f"unknown half {half!r} in {case!r}")

    def one() -> None:
        elsewhere().run(send)
        receive()

    return one


def _hop(name: str, provider: Any) -> Hop:
    if name in ("floor", "floor_promise"):
        return _floor_case(provider, promise=name == "floor_promise")
    if name == "plain_confluent":
        return _plain_confluent()
    if name == "hop_fast":
        return _hop_confluent()
    if name == "otel_confluent":
        return _otel_confluent(provider)
    if name in PIKA_CASES:
        return _pika_case(name, provider)
    raise ValueError(f"unknown case {name!r}")


def _overheads(counts: dict[str, int]) -> dict[str, int]:
    """Each traced case's instructions per message over its client's plain case."""
    return {case: count - counts[PLAIN[case]] for case, count in counts.items()
            if case in PLAIN and PLAIN[case] in counts and case != PLAIN[case]}


def _ratios(overheads: dict[str, int]) -> dict[str, float]:
    pairs = [(case, "otel_confluent") for case in ("hop_fast", "floor", "floor_promise")]
    pairs.append(("hop_pika", "otel_pika"))
    return {f"{case}/{peer}": round(overheads[case] / overheads[peer], 3)
            for case, peer in pairs if case in overheads and peer in overheads}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:
        return callgrind_cases.cli(argv, __file__, CASES, build)
    counts: dict[str, int] = {}
    for case in argv or CASES:
        counts[case] = callgrind_cases.count_in(__file__, case, CALLS)
        print(f"{case:28} {counts[case] / 1000:8.1f}k instructions per message", flush=True)
    overheads = _overheads(counts)
    ratios = _ratios(overheads)
    print("\nover plain, per message (produce + consume):")
    for case, value in overheads.items():
        print(f"{case:28} {value / 1000:8.1f}k")
    for name, ratio in ratios.items():
        print(f"{name:28} {ratio:8.3f}")
    if not argv:
        RESULTS.write_text(json.dumps({
            "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": "callgrind instructions per message (produce + consume), counted in "
                      "starmap_next; spans encoded as OTLP in the foreground, batches of "
                      f"{BATCH}; bench/callgrind_peers.py",
            "calls": CALLS, "instructions_per_message": counts,
            "over_plain": overheads, "ratios_over_plain": ratios,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
