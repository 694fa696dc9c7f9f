"""Issue 15, targets 1 and 2 (b) in instructions: hoptrace with spans, its floor, the peers.

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
record and runs a handler that reads the current context, as ``hop_bench`` does. Every
client that a peer instruments gets its cases, named ``KIND_CLIENT`` (``confluent``,
``kafkapython``, ``aiokafka``, ``pika``, ``aiopika``, ``kombu``, ``celery``), on stand-ins
that keep the message in flight between the send and the receive (the Kafka clients' from
``bench/callgrind_cases.py``, the AMQP clients' and Celery's from ``bench/callgrind_amqp.py``).
Kinds, per message:

``plain``
    The stand-ins alone, no tracing: the overheads and ratios are over these.
``floor``
    No hoptrace code: a PRODUCER span with the messaging conventions' attributes
    (``span_floor.SEND_ATTRS``), ``traceparent`` and ``baggage`` formatted into the
    message's headers as the client takes them; on the consume side the headers parsed
    back, a CONSUMER span (``span_floor.PROCESS_ATTRS``) child of the send span, its context
    (with the baggage entry) attached around the handler and detached. Two spans: what any
    implementation of "a span per hop, the handler in the producer's trace" pays.
``floor_promise`` (confluent-kafka)
    The same plus what hoptrace's spans add for its promise: ``hoptrace.transaction.id`` on
    both spans, ``hoptrace.queue_wait_ms`` on the process span.
``hop``
    hoptrace's wrappers (``fast_spans=True``) around the same stand-ins. On the Kafka
    clients the process span is held until the next poll; on confluent-kafka the send span
    is ended by the delivery report the stand-in producer calls back at once.
``otel``
    OTel contrib's wrappers around the same stand-ins (put on them as the instrumentor puts
    them on the client's classes: wrapt for kafka-python, aiokafka and aio-pika, the proxies
    of ``instrument_producer`` / ``instrument_channel`` for confluent-kafka and pika, the
    signal receivers for Celery), the business ID carried as ``hop_bench.OtelBaggage``
    does (a baggage entry attached around each send). Contrib makes three spans per message
    on confluent-kafka (send, recv, process), two elsewhere; on kafka-python and aiokafka
    its receive span ends before the handler runs.
``ddtrace`` (confluent-kafka, aiokafka, kombu, Celery)
    ddtrace's integration wrappers, the business ID a baggage item on a context activated
    per send (``hop_bench.DdBaggage``). ddtrace encodes each trace (msgpack) as its last
    span ends, in that thread, so the count includes its encoding as the OTel cases'
    include OTLP's; its writer thread only sends the bytes (not counted, as no OTel case
    sends; what that thread still does to a payload is to put the string table in front).
    Celery's distributed tracing, off by default in ddtrace, is switched on so the task
    runs in the publisher's trace as in every other case; Kafka's header propagation is
    switched on as ``run.py`` switches it on for ``hop_bench``. On the Kafka clients
    ddtrace's consume span, like contrib's, ends before the handler runs.

Target 2 (b), the production setup, has kinds of its own, on every client OTel contrib
instruments (not kombu), set up as ``hop_bench``'s 1% variants: the provider samples with
``ParentBased(TraceIdRatioBased(0.01))``, and each send runs inside a new root span opened
around it, so 99% of messages record nothing:

``s_hop``
    hoptrace's wrappers (``fast_spans=True``), each send inside ``hoptrace.transaction``
    (``hop_bench.HoptraceTransaction``: the root span and a new transaction ID).
``s_hopd``
    The same with the SDK's default ``RandomIdGenerator`` in place of :class:`SeededIds`
    (informational: not the verdict). :class:`SeededIds` is that generator with the message
    roots' trace IDs taken from a seeded stream: each message pays one Python call for its
    root's trace ID and the wrapper that marks the root (:class:`_MessageRoot`), which
    production does not pay and ``s_prop`` does not either. The global ``random`` is seeded
    with the case's seed as the warm-up begins, so the count repeats, but the messages
    recorded are not :class:`SeededIds`' (nor contrib's): :func:`recorded_in` counts them, in
    a run of the case outside valgrind.
``s_otel``
    OTel contrib's wrappers, each send inside a root span with the business ID a baggage
    entry attached on it (``hop_bench.OtelRoot``).
``s_prop``
    hoptrace propagation-only (no SDK, as ``hop_bench``'s ``s_hop_prop``), each send inside
    ``hoptrace.transaction``: target 2 (a)'s reference, counted beside them.

ddtrace has no such kind: target 2 (b) compares with OTel contrib alone, and ddtrace's 1%
rule could not sample the same messages (its trace IDs come from its own generator, which
no seed here reaches).

Which 1% are recorded is decided by the root's trace ID, so ``s_hop`` and ``s_otel`` draw
it from the same seeded stream (:class:`SeededIds`): the n-th message's root gets the n-th
trace ID of ``random.Random(seed)`` on both sides, whatever else each side draws (span IDs,
contrib's own ``recv`` roots on confluent-kafka: another stream), so both record exactly
the same messages. A case ``NAME@SEED`` uses that seed (1 without one); the full run counts
``SAMPLED_CALLS`` messages at each of ``SEEDS`` (:func:`recorded`: how many of them are
sampled). At 1% a queue of ``BATCH`` spans fills only every ~17,000 messages, so these
cases export what is queued every ``BATCH`` messages instead (as a BatchSpanProcessor's
timer does), counted from the end of the warm-up: every span a counted message records is
encoded in the count.

The full run counts each client's cases under one valgrind, each case in a child forked
from an interpreter that imported what they all import (``callgrind_cases.count_many``),
and the ddtrace cases each in an interpreter of its own (see :func:`count`).

    python bench/callgrind_peers.py           # every case; writes peers_instructions.json
    python bench/callgrind_peers.py --sampled # only target 2 (b)'s cases, into the same file
    python bench/callgrind_peers.py s_hop_pika@2 s_otel_pika@2     # printed
    python bench/callgrind_peers.py s_hopd_pika@2   # printed, with the messages it recorded
    python bench/callgrind_peers.py floor_confluent hop_pika/send otel_celery:drop  # printed
    python bench/callgrind_peers.py --run CASE 1024                 # what valgrind runs

Every case runs with no meter provider (hoptrace's metrics off), as ``make bench`` counts
them. ``BENCH_METER=readerless`` installs an SDK ``MeterProvider`` with no metric reader
(what ``opentelemetry-instrument`` sets with ``OTEL_METRICS_EXPORTER=none``) and
``BENCH_METER=reader`` one with an ``InMemoryMetricReader`` (its default OTLP metrics
exporter's reader records the same way; nothing is collected in the count)::

    BENCH_METER=reader python bench/callgrind_peers.py s_prop_pika s_hopd_pika@1  # printed
"""

from __future__ import annotations

import contextvars
import datetime
import importlib
import itertools
import json
import os
import random
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika  # type: ignore[import-untyped]
from opentelemetry.context import get_current
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from pika.adapters.blocking_connection import BlockingChannel  # type: ignore[import-untyped]
from pika.spec import Basic  # type: ignore[import-untyped]
from wrapt import wrap_function_wrapper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_amqp  # the AMQP clients' stand-ins
import callgrind_cases  # the shared runner and the Kafka clients' stand-ins
from span_floor import PROCESS_ATTRS, SEND_ATTRS

PROC_CASES = ("proc_none", "proc_batch", "proc_bsp", "proc_simple")
#: BatchSpanProcessor's default ``max_export_batch_size``.
BATCH = 512
#: A multiple of BATCH: every span a case ends in the counted loop is encoded in it.
CALLS = 2 * BATCH
#: Target 2 (b)'s kinds (the module doc): hoptrace's and contrib's, then hoptrace's reference,
#: then hoptrace's with the SDK's default ID generator.
SAMPLED_KINDS = ("s_hop", "s_otel", "s_prop", "s_hopd")
#: The 1% kinds whose provider the case's seed reaches (``s_hopd``: through ``random``).
SEEDED_KINDS = ("s_hop", "s_otel", "s_hopd")
#: The sampler's ratio, as ``hop_bench``'s 1% variants set it.
RATE = 0.01
#: Messages counted per sampled case: a multiple of BATCH (see the module doc), about 40
#: recorded at 1%.
SAMPLED_CALLS = 8 * BATCH
#: The seeds of the trace IDs that decide which messages are recorded, one count each.
SEEDS = (1, 2)
#: The calls ``callgrind_cases.repeat_calls`` makes before the counted loop.
WARMUP = 200
TOPIC = "orders"
GROUP = "billing"
PAYLOAD = b'{"order": 42, "items": ["a", "b"]}'
BAGGAGE_KEY = "transaction.id"
QUEUE = callgrind_amqp.QUEUE
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


class SeededIds(RandomIdGenerator):
    """The SDK's ``RandomIdGenerator`` whose message roots' trace IDs come from a seeded stream.

    A trace ID asked for right after :meth:`message_root` is the next of the messages'
    stream, ``random.Random(seed)``; every other ID is the SDK's own draw, from the global
    ``random`` (seeded as each case is built, so the counts repeat). Each message's root
    draws the same trace ID on every kind, so the same messages are sampled. The span IDs
    are the SDK generator's inherited methods, as production's are: hoptrace's C entries run
    that body themselves for any ``RandomIdGenerator`` that does not override it, and the
    SDK calls it, on every kind alike. Only the roots' trace IDs take a Python method of
    this class's own, on every kind.
    """

    def __init__(self, seed: int) -> None:
        self._roots = random.Random(seed).getrandbits
        self._root_next = False

    def message_root(self) -> None:
        """The next trace ID asked for is a message's root's."""
        self._root_next = True

    def generate_trace_id(self) -> int:
        if self._root_next:
            self._root_next = False
            return self._roots(128) or 1
        return super().generate_trace_id()


def sampled_setup(seed: int, default_ids: bool = False) -> dict[str, Any]:
    """The tracer provider's arguments of the 1% kinds: the sampler, the seeded IDs (with
    ``default_ids``, none: the SDK's ``RandomIdGenerator``, as ``s_hopd`` has it)."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampler = ParentBased(TraceIdRatioBased(RATE))
    return {"sampler": sampler} if default_ids else {
        "sampler": sampler, "id_generator": SeededIds(seed)}


def message_roots(seed: int, calls: int, skip: int = WARMUP) -> list[int]:
    """The root trace IDs :class:`SeededIds` gives messages ``skip + 1`` to ``skip + calls``."""
    draw = random.Random(seed).getrandbits
    roots = [draw(128) or 1 for _ in range(skip + calls)]
    return roots[skip:]


def recorded(seed: int, calls: int = SAMPLED_CALLS, skip: int = WARMUP) -> int:
    """How many of those messages ``ParentBased(TraceIdRatioBased(RATE))`` samples."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    ratio = TraceIdRatioBased(RATE)
    return sum(1 for t in message_roots(seed, calls, skip)
               if t & ratio.TRACE_ID_LIMIT < ratio.bound)


def recorded_run(case: str, calls: int = SAMPLED_CALLS) -> int:
    """How many of the ``calls`` counted messages of the 1% ``case`` are recorded: the root
    ``job`` spans its sink receives after the warm-up, the case built, warmed up and called
    as under valgrind (what every case imports imported first, as there), here natively.

    The sink's class is wrapped, not the provider's processors: the spans' path is the
    counted one. Run in an interpreter of its own (:func:`recorded_in`).
    """
    roots = [0]
    export = OtlpEncoder.export

    def counting(self: OtlpEncoder, spans: Any) -> SpanExportResult:
        roots[0] += sum(1 for span in spans if span.name == "job" and span.parent is None)
        return export(self, spans)

    OtlpEncoder.export = counting  # type: ignore[method-assign]
    for module in PRELOAD:
        importlib.import_module(module)
    one = build(case)
    for _ in range(WARMUP):  # callgrind_cases.repeat_calls' warm-up
        one()
    before = roots[0]
    for _ in range(calls):
        one()
    return roots[0] - before


def recorded_in(case: str, calls: int = SAMPLED_CALLS) -> int:
    """:func:`recorded_run` in an interpreter of its own (``script --recorded CASE N``), the
    environment the count's (``PYTHONHASHSEED=0``)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, "--recorded", case, str(calls)], capture_output=True,
        text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return int(out.stdout.split()[-1])


def encoding_provider(processor: str = "batch", seed: int | None = None,
                      default_ids: bool = False) -> Any:
    """A tracer provider whose spans end into an OTLP encoder.

    ``batch``: through :class:`ForegroundBatchProcessor`; ``simple``: through a
    SimpleSpanProcessor (one export per span); ``drop``: the first, with nothing encoded.
    With ``seed``, the 1% kinds' provider (:func:`sampled_setup`, ``default_ids`` passed on).
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(**({} if seed is None else sampled_setup(seed, default_ids)))
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


def _handler() -> None:
    get_current()  # the handler looks at its context, as logging would


def _contrib_tracer(module: str, provider: Any) -> Any:
    """The tracer a contrib instrumentor makes for itself."""
    from opentelemetry import trace

    return trace.get_tracer(module, tracer_provider=provider,
                            schema_url="https://opentelemetry.io/schemas/1.11.0")


class _Floor:
    """The floor's work, on whichever client carries it (see the module doc).

    :meth:`send` starts the send span, hands ``traceparent`` and ``baggage`` to the client's
    send and ends the span; :meth:`process` parses them back from the headers the client
    delivered, starts the process span and attaches its context around the handler.
    """

    def __init__(self, provider: Any, promise: bool) -> None:
        from opentelemetry import baggage
        from opentelemetry.context import attach, detach
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            TraceFlags,
            set_span_in_context,
        )

        self._start = provider.get_tracer("floor").start_span
        self._promise = promise
        self._bits = random.getrandbits
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._set_baggage = baggage.set_baggage
        self._attach, self._detach = attach, detach
        self._remote, self._span_context = NonRecordingSpan, SpanContext
        self._in_context = set_span_in_context
        self._producer, self._consumer = SpanKind.PRODUCER, SpanKind.CONSUMER

    def send(self, deliver: Callable[[str, str], object]) -> None:
        tx = f"{self._bits(128):032x}"
        attrs = {**SEND_ATTRS, "hoptrace.transaction.id": tx} if self._promise else SEND_ATTRS
        span = self._start("send orders", kind=self._producer, attributes=attrs)
        sent = span.get_span_context()
        deliver(f"00-{sent.trace_id:032x}-{sent.span_id:016x}-01", f"{BAGGAGE_KEY}={tx}")
        span.end()

    def process(self, headers: Any, handler: Callable[[], object], sent_ms: float = 0) -> None:
        traceparent, entry = headers["traceparent"], headers["baggage"]
        if type(traceparent) is bytes:  # Kafka's header values
            traceparent, entry = traceparent.decode(), entry.decode()
        _, trace_hex, span_hex, _ = traceparent.split("-")
        key, _, value = entry.partition("=")
        parent = self._set_baggage(key, value, self._in_context(self._remote(
            self._span_context(int(trace_hex, 16), int(span_hex, 16), True, self._sampled))))
        attrs = PROCESS_ATTRS
        if self._promise:
            waited = time.time_ns() / 1e6 - sent_ms
            attrs = {**PROCESS_ATTRS, "hoptrace.transaction.id": value,
                     "hoptrace.queue_wait_ms": waited}
        process = self._start("process orders", context=parent, kind=self._consumer,
                              attributes=attrs)
        token = self._attach(self._in_context(process, parent))
        handler()
        self._detach(token)
        process.end()


def _dd_tracer() -> Any:
    """ddtrace's global tracer, set up to count: no agent is contacted while it counts.

    ddtrace encodes a trace (msgpack, its agent's format) when the trace's last span ends,
    in the thread that ends it (``NativeWriter.write`` → ``encoder.put``), so the count
    includes it; its writer thread only sends the encoded bytes, as the OTel cases' export
    would, and neither is counted. The interval keeps that thread from trying to.
    """
    for name, value in (("DD_TRACE_AGENT_URL", "http://127.0.0.1:9"),
                        ("DD_TRACE_WRITER_INTERVAL_SECONDS", "3600"),
                        ("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false"),
                        ("DD_REMOTE_CONFIGURATION_ENABLED", "false"),
                        ("DD_TRACE_STARTUP_LOGS", "false"),
                        # As run.py sets it: without it ddtrace writes no Kafka header.
                        ("DD_KAFKA_PROPAGATION_ENABLED", "true"),
                        # Off by default: on, the task runs in the publisher's trace (the
                        # business ID with it), as every other case's handler does.
                        ("DD_CELERY_DISTRIBUTED_TRACING", "true")):
        os.environ.setdefault(name, value)
    from ddtrace.trace import tracer

    return tracer


class _Client:
    """One client's stand-ins and its cases: each method returns a :data:`Hop`.

    ``plain``: the stand-ins alone; ``floor``: the floor's work carried by them; ``hop``:
    hoptrace's wrappers around them (``fast_spans=True``); ``otel`` (and ``ddtrace`` where
    that peer has an integration): the peer's wrappers, the business ID carried as
    ``hop_bench`` carries it.
    """

    peers: tuple[str, ...] = ("otel",)

    def otel_scope(self) -> Any:
        """The scope contrib's sends run in: a new business ID (``hop_bench.OtelBaggage``);
        the 1% kind sets a root span's (:func:`_hop`)."""
        from hop_bench import OtelBaggage

        return OtelBaggage()

    def plain(self) -> Hop:
        raise NotImplementedError

    def floor(self, floor: _Floor) -> Hop:
        raise NotImplementedError

    def hop(self) -> Hop:
        raise NotImplementedError

    def otel(self, provider: Any) -> Hop:
        raise NotImplementedError

    def ddtrace(self) -> Hop:
        raise NotImplementedError


def _hoptrace() -> None:
    import hoptrace

    hoptrace.configure(fast_spans=True)


def _scoped(scope: Any, send: Callable[[], object]) -> Callable[[], None]:
    """``send`` inside a fresh business-ID scope (``hop_bench``'s ``OtelBaggage`` /
    ``DdBaggage``), as the peers' variants send."""
    enter, leave = scope.__enter__, scope.__exit__

    def scoped() -> None:
        enter()
        send()
        leave(None, None, None)

    return scoped


# ------------------------------------------------------------- confluent-kafka ---


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


class _Confluent(_Client):
    peers = ("otel", "ddtrace")

    def plain(self) -> Hop:
        kafka = _Kafka()

        def receive() -> None:
            kafka.poll(1.0)
            _handler()

        return lambda: kafka.produce(TOPIC, PAYLOAD), receive

    def floor(self, floor: _Floor) -> Hop:
        kafka = _Kafka()
        produce = kafka.produce

        def deliver(traceparent: str, entry: str) -> None:
            produce(TOPIC, PAYLOAD, headers=[("traceparent", traceparent.encode()),
                                             ("baggage", entry.encode())])

        def receive() -> None:
            record = kafka.poll(1.0)
            floor.process(dict(record.headers()), _handler, record.timestamp()[1])

        return lambda: floor.send(deliver), receive

    def hop(self) -> Hop:
        import hoptrace.confluent_kafka as ck

        _hoptrace()
        kafka = _Kafka()
        produce, poll = ck._produce, ck._poll
        original_produce, original_poll = kafka.produce, kafka.poll
        owner = object()

        def send() -> None:
            produce(original_produce, None, TOPIC, (PAYLOAD,), {})

        def receive() -> None:
            poll(original_poll, owner, GROUP, (1.0,), {})
            _handler()

        return send, receive

    def otel(self, provider: Any) -> Hop:
        from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor

        kafka: Any = _Kafka()
        producer: Any = ConfluentKafkaInstrumentor.instrument_producer(kafka, provider)
        consumer: Any = ConfluentKafkaInstrumentor.instrument_consumer(kafka, provider)

        def receive() -> None:
            consumer.poll(1.0)
            _handler()

        return _scoped(self.otel_scope(), lambda: producer.produce(TOPIC, PAYLOAD)), receive

    def ddtrace(self) -> Hop:
        """ddtrace's ``produce`` / ``poll`` wrappers, put on the stand-in as
        ``ddtrace.patch(kafka=True)`` puts them on its producer and consumer classes."""
        _dd_tracer()
        import confluent_kafka
        import ddtrace
        from ddtrace.contrib.internal.kafka import patch
        from hop_bench import DdBaggage

        ddtrace.patch(kafka=True)

        class Kafka(_Kafka, confluent_kafka.Message):
            """The same stand-in, a ``confluent_kafka.Message`` too: ddtrace traces only the
            records that are. What ddtrace's classes keep from their configuration."""

            _dd_bootstrap_servers = "127.0.0.1:9092"
            _dd_cluster_id = "bench-cluster"  # asked of the broker once, then kept
            _group_id = GROUP

        wrap_function_wrapper(Kafka, "produce", patch.traced_produce)
        wrap_function_wrapper(Kafka, "poll", patch.traced_poll_or_consume)
        kafka = Kafka()

        def receive() -> None:
            kafka.poll(1.0)
            _handler()

        return _scoped(DdBaggage(), lambda: kafka.produce(TOPIC, PAYLOAD)), receive


# ------------------------------------------------------- kafka-python, aiokafka ---


class _SentFuture(callgrind_cases._Future):
    """A send future the broker has acknowledged: aiokafka's and kafka-python's, as far as
    their instrumentations read it. A callback added to it runs at once, as on an
    acknowledged future (the stand-in producers acknowledge every send at once, as
    confluent-kafka's calls its delivery report), so hoptrace's send span ends there."""

    _produce_future = types.SimpleNamespace(topic_partition=(TOPIC, 0))  # contrib's partition
    metadata = types.SimpleNamespace(topic=TOPIC, partition=0, offset=12345)

    def add_callback(self, fn: Any, *args: Any) -> None:  # kafka-python's
        fn(*args, self.metadata)

    def add_done_callback(self, fn: Any) -> None:  # aiokafka's (an asyncio future)
        fn(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def result(self) -> Any:
        return self.metadata


_SENT = _SentFuture()


_drive = callgrind_cases.run_coroutine


class _KafkaRecords(_Client):
    """kafka-python's and aiokafka's cases: a producer's ``send`` and a consumer's call that
    returns one record (``callgrind_cases._Record``), on stand-in classes made per case (so
    the wrappers put on them stay there), the record's headers in flight between.

    ``_call`` turns what a call returns into its result (aiokafka's coroutines run to the end
    without a loop); ``_RECEIVE`` names the consumer's call; ``_HOPTRACE`` / ``_CONTRIB`` the
    modules whose ``_wrap_send`` and ``_WRAP_RECEIVE`` wrap them.
    """

    _RECEIVE = _WRAP_RECEIVE = _HOPTRACE = _CONTRIB = ""
    producer_type: Any
    consumer_type: Any

    @staticmethod
    def _call(result: Any) -> Any:
        return result

    def __init__(self) -> None:
        self.producer, self.consumer = self.producer_type(), self.consumer_type()

    def _receive(self) -> Any:
        return self._call(getattr(self.consumer, self._RECEIVE)())

    def plain(self) -> Hop:
        send, call = self.producer.send, self._call

        def receive() -> None:
            self._receive()
            _handler()

        return lambda: call(send(TOPIC, PAYLOAD)), receive

    def floor(self, floor: _Floor) -> Hop:
        send, call = self.producer.send, self._call

        def deliver(traceparent: str, entry: str) -> None:
            call(send(TOPIC, PAYLOAD, headers=[("traceparent", traceparent.encode()),
                                               ("baggage", entry.encode())]))

        def receive() -> None:
            floor.process(dict(self._receive().headers), _handler)

        return lambda: floor.send(deliver), receive

    def hop(self) -> Hop:
        module = importlib.import_module(self._HOPTRACE)
        _hoptrace()
        send = module._wrap_send(self.producer_type.send)
        receive_record = getattr(module, self._WRAP_RECEIVE)(
            getattr(self.consumer_type, self._RECEIVE))
        producer, consumer, call = self.producer, self.consumer, self._call

        def receive() -> None:
            call(receive_record(consumer))
            _handler()

        return lambda: call(send(producer, TOPIC, PAYLOAD)), receive

    def otel(self, provider: Any) -> Hop:
        utils = importlib.import_module(f"{self._CONTRIB}.utils")
        tracer = _contrib_tracer(self._CONTRIB, provider)
        wrap_function_wrapper(self.producer_type, "send", utils._wrap_send(tracer, None))
        wrap_function_wrapper(self.consumer_type, self._RECEIVE,
                              getattr(utils, self._WRAP_RECEIVE)(tracer, None))
        send, receive = self.plain()
        return _scoped(self.otel_scope(), send), receive


class _KafkaPython(_KafkaRecords):
    """kafka-python's ``KafkaProducer.send`` and ``KafkaConsumer.__next__``."""

    _RECEIVE, _WRAP_RECEIVE = "__next__", "_wrap_next"
    _HOPTRACE, _CONTRIB = "hoptrace.kafka_python", "opentelemetry.instrumentation.kafka"

    def __init__(self) -> None:
        wire: list[Any] = [[]]

        class Producer:
            config = {"bootstrap_servers": ["127.0.0.1:9092"]}

            def send(self, topic: str, value: Any = None, key: Any = None,
                     headers: Any = None, partition: Any = None,
                     timestamp_ms: Any = None) -> Any:
                wire[0] = headers or []
                return _SENT

        class Consumer(callgrind_cases._KafkaConsumer):
            config = {"group_id": GROUP, "bootstrap_servers": ["127.0.0.1:9092"]}

            def __next__(self) -> Any:
                return callgrind_cases._Record(wire[0])

        self.producer_type, self.consumer_type = Producer, Consumer
        super().__init__()


class _AioClient:
    _bootstrap_servers = "127.0.0.1:9092"
    _client_id = "aiokafka-producer-1"
    _dd_cluster_id = "bench-cluster"  # what ddtrace asks the broker once, then keeps

    async def _wait_on_metadata(self, topic: str) -> None:
        return None


class _AioKafka(_KafkaRecords):
    """aiokafka's ``AIOKafkaProducer.send`` and ``AIOKafkaConsumer.getone``."""

    peers = ("otel", "ddtrace")
    _RECEIVE, _WRAP_RECEIVE = "getone", "_wrap_getone"
    _HOPTRACE, _CONTRIB = "hoptrace.aiokafka", "opentelemetry.instrumentation.aiokafka"

    @staticmethod
    def _call(result: Any) -> Any:
        return _drive(result)

    def __init__(self) -> None:
        wire: list[Any] = [[]]

        class Producer:
            client = _AioClient()
            _key_serializer = _value_serializer = None

            def _partition(self, *args: Any) -> int:
                return 0

            async def send(self, topic: str, value: Any = None, key: Any = None,
                           partition: Any = None, timestamp_ms: Any = None,
                           headers: Any = None) -> Any:
                wire[0] = headers or []
                return _SENT

        class Consumer(callgrind_cases._KafkaConsumer):
            _client = _AioClient()
            _group_id = GROUP

            async def getone(self, *partitions: Any) -> Any:
                return callgrind_cases._Record(wire[0])

        self.producer_type, self.consumer_type = Producer, Consumer
        super().__init__()

    def ddtrace(self) -> Hop:
        """ddtrace's aiokafka wrappers, put on the stand-in classes as
        ``ddtrace.patch(aiokafka=True)`` puts them on aiokafka's."""
        _dd_tracer()
        import ddtrace
        from ddtrace.contrib.internal.aiokafka import patch
        from hop_bench import DdBaggage

        ddtrace.patch(aiokafka=True)
        wrap_function_wrapper(self.producer_type, "send", patch.traced_send)
        wrap_function_wrapper(self.consumer_type, "getone", patch.traced_getone)
        send, receive = self.plain()
        return _scoped(DdBaggage(), send), receive


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
    _handler()
    channel.basic_ack(method.delivery_tag)


class _Pika(_Client):
    """hop_bench's pika run: ``basic_publish`` of one properties object; a consumer callback
    that looks at its context and acks; each instrumented per channel."""

    def __init__(self) -> None:
        self.channel: Any = _PikaChannel()
        self.properties = pika.BasicProperties(content_type="application/json",
                                               delivery_mode=1)

    def _run(self, scope: Any = None, on_message: Any = _on_message) -> Hop:
        channel, properties = self.channel, self.properties
        channel.basic_consume(TOPIC, on_message)
        publish = channel.basic_publish

        def send() -> None:
            publish("", TOPIC, PAYLOAD, properties)

        return (send if scope is None else _scoped(scope, send)), channel.deliver

    def plain(self) -> Hop:
        return self._run()

    def floor(self, floor: _Floor) -> Hop:
        properties = self.properties

        def on_message(channel: Any, method: Any, props: Any, body: Any) -> None:
            floor.process(props.headers, lambda: _on_message(channel, method, props, body))

        send, receive = self._run(on_message=on_message)

        def deliver(traceparent: str, entry: str) -> None:
            properties.headers = {"traceparent": traceparent, "baggage": entry}
            send()

        return lambda: floor.send(deliver), receive

    def hop(self) -> Hop:
        import hoptrace.pika

        _hoptrace()
        hoptrace.pika.instrument_channel(self.channel)
        return self._run()

    def otel(self, provider: Any) -> Hop:
        from opentelemetry.instrumentation.pika import PikaInstrumentor

        PikaInstrumentor.instrument_channel(self.channel, tracer_provider=provider)
        return self._run(self.otel_scope())


# ---------------------------------------------------------------------- kombu ---


class _KombuMessage(callgrind_amqp._KombuMessage):
    """A delivered message, with the channel ddtrace reads the broker's address from."""

    channel = types.SimpleNamespace(connection=types.SimpleNamespace(
        host="127.0.0.1:5672", virtual_host="/"))


class _Kombu(_Client):
    """``Producer.publish`` and ``Consumer._receive_callback`` (hoptrace's) or
    ``Producer._publish`` and ``Consumer.receive`` (ddtrace's) around stand-ins that keep /
    hand over the headers; the message as ``callgrind_amqp`` delivers it."""

    peers = ("ddtrace",)

    def __init__(self) -> None:
        from kombu.entity import Exchange

        self.headers: Any = None
        self.exchange = Exchange("bench", type="direct")  # type: ignore[no-untyped-call]
        self.producer = callgrind_amqp._KombuProducer()
        self.consumer = callgrind_amqp._KombuConsumer()

    def _publish(self, producer: Any, body: Any, **kwargs: Any) -> None:
        self.headers = kwargs.get("headers")

    def _message(self) -> Any:
        return _KombuMessage(dict(self.headers) if self.headers else {})

    @staticmethod
    def _receive(consumer: Any, message: Any) -> None:
        _handler()

    def _run(self, publish: Any, receive: Any, headers: Any = None) -> Hop:
        producer, consumer, exchange, message = (self.producer, self.consumer, self.exchange,
                                                 self._message)
        body = {"order": 42}
        return (lambda: publish(producer, body, exchange=exchange, routing_key="k",
                                headers=headers),
                lambda: receive(consumer, message()))

    def plain(self) -> Hop:
        return self._run(self._publish, self._receive)

    def floor(self, floor: _Floor) -> Hop:
        publish, producer, consumer, exchange = (self._publish, self.producer, self.consumer,
                                                 self.exchange)
        body, receive = {"order": 42}, self._receive

        def deliver(traceparent: str, entry: str) -> None:
            publish(producer, body, exchange=exchange, routing_key="k",
                    headers={"traceparent": traceparent, "baggage": entry})

        def consume() -> None:
            message = self._message()
            floor.process(message.headers, lambda: receive(consumer, message))

        return lambda: floor.send(deliver), consume

    def hop(self) -> Hop:
        import hoptrace.kombu as hk

        _hoptrace()
        return self._run(hk._wrap_publish(self._publish), hk._wrap_receive(self._receive))

    def ddtrace(self) -> Hop:
        """ddtrace's kombu integration: its ``_publish`` / ``receive`` wrappers, on stand-in
        classes carrying the integration's pin, as ``ddtrace.patch(kombu=True)`` sets them
        on kombu's."""
        _dd_tracer()
        import ddtrace
        from ddtrace._trace.pin import Pin
        from ddtrace.contrib.internal.kombu.patch import traced_publish, traced_receive
        from hop_bench import DdBaggage
        from kombu import messaging

        ddtrace.patch(kombu=True)
        kombu = self

        class Producer(callgrind_amqp._KombuProducer):
            def _publish(self, body: Any, priority: Any, content_type: Any,
                         content_encoding: Any, headers: Any, *args: Any) -> None:
                kombu.headers = headers

        class Consumer(callgrind_amqp._KombuConsumer):
            def receive(self, body: Any, message: Any) -> None:
                _handler()

        for stand_in, real in ((Producer, messaging.Producer), (Consumer, messaging.Consumer)):
            pin = Pin.get_from(real)
            assert pin is not None, "ddtrace.patch(kombu=True) pins kombu's classes"
            pin.onto(stand_in)
        wrap_function_wrapper(Producer, "_publish", traced_publish)
        wrap_function_wrapper(Consumer, "receive", traced_receive)
        producer, consumer, body = Producer(), Consumer(), {"order": 42}
        # Producer.publish's call: body, priority, content type and encoding, headers,
        # properties, routing key, mandatory, immediate, exchange name, declare.
        args = (body, 0, "application/json", "utf-8")
        rest = ({"delivery_mode": 2}, "k", False, False, "bench", ())

        def send() -> None:
            producer._publish(*args, {}, *rest)

        def receive() -> None:
            message = self._message()
            consumer.receive(body, message)

        return _scoped(DdBaggage(), send), receive


# ------------------------------------------------------------------- aio-pika ---


class _AioIncoming(callgrind_amqp._AioIncoming):
    """A delivered message, with the properties contrib reads its IDs from."""

    def __init__(self, headers: dict[str, Any], message_id: str, timestamp: Any) -> None:
        super().__init__(headers, message_id, timestamp)
        self.properties = types.SimpleNamespace(message_id=message_id, correlation_id=None)


class _AioPika(_Client):
    """``Exchange.publish`` of a new ``aio_pika.Message`` per send and a ``Queue.consume``
    callback, on stand-in classes (new per case, so contrib's wrappers stay on them)."""

    def __init__(self) -> None:
        import aio_pika

        self.sent: Any = None
        client = self
        # The broker's URL where each contrib release looks for it on aiormq's channel.
        url = types.SimpleNamespace(host="127.0.0.1", port=5672)
        channel = types.SimpleNamespace(
            _connection=types.SimpleNamespace(url=url),
            connection=types.SimpleNamespace(url=url, connection=types.SimpleNamespace(url=url)))

        class Exchange(callgrind_amqp._AioExchange):
            async def publish(self, message: Any, routing_key: str, **kwargs: Any) -> None:
                client.sent = message

        class Queue:
            callback: Any = None

            async def consume(self, callback: Any, **kwargs: Any) -> str:
                self.callback = callback
                return "ctag1.0"

        Exchange.channel = Queue.channel = channel  # type: ignore[attr-defined]
        self.exchange_type, self.queue_type = Exchange, Queue
        self.exchange, self.queue = Exchange(), Queue()
        self.message = aio_pika.Message
        self.message_id = "5f0c2e4b6a0d4e2f9b1c3d5e7f9a1b2c"
        self.timestamp = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def _incoming(self) -> Any:
        headers = self.sent.headers
        return _AioIncoming(dict(headers) if headers else {}, self.message_id, self.timestamp)

    def _run(self, publish: Any, callback: Any, scope: Any = None) -> Hop:
        exchange, queue, message, incoming = (self.exchange, self.queue, self.message,
                                              self._incoming)
        _drive(queue.consume(callback))

        def send() -> None:
            _drive(publish(exchange, message(PAYLOAD), QUEUE))

        return ((send if scope is None else _scoped(scope, send)),
                lambda: _drive(queue.callback(incoming())))

    @staticmethod
    async def _on_message(message: Any) -> None:
        _handler()

    def plain(self) -> Hop:
        return self._run(self.exchange_type.publish, self._on_message)

    def floor(self, floor: _Floor) -> Hop:
        exchange, message, on_message = self.exchange, self.message, self._on_message

        def deliver(traceparent: str, entry: str) -> None:
            _drive(exchange.publish(message(PAYLOAD, headers={
                "traceparent": traceparent, "baggage": entry}), QUEUE))

        async def callback(incoming: Any) -> None:
            floor.process(incoming.headers, lambda: _drive(on_message(incoming)))

        _, receive = self._run(self.exchange_type.publish, callback)
        return lambda: floor.send(deliver), receive

    def hop(self) -> Hop:
        import hoptrace.aio_pika as ha

        _hoptrace()
        return self._run(ha._wrap_publish(self.exchange_type.publish),
                         ha._wrap_callback(QUEUE, self._on_message))

    def otel(self, provider: Any) -> Hop:
        """Contrib's own ``Exchange.publish`` / ``Queue.consume`` wrappers, put on the
        stand-in classes instead of aio-pika's."""
        from unittest import mock

        from opentelemetry.instrumentation.aio_pika import aio_pika_instrumentor as module

        tracer = _contrib_tracer("opentelemetry.instrumentation.aio_pika", provider)
        with mock.patch.object(module, "Exchange", self.exchange_type), \
                mock.patch.object(module, "Queue", self.queue_type):
            module.AioPikaInstrumentor._instrument_exchange(tracer)
            module.AioPikaInstrumentor._instrument_queue(tracer)
        return self._run(lambda exchange, message, key: exchange.publish(message, key),
                         self._on_message, self.otel_scope())


# --------------------------------------------------------------------- celery ---

TASK_ID = "8d1c0c59-6a4e-4f7e-9c7a-2b1f0c3d4e5f"


def _order(n: int) -> None:
    """The Celery task (it never runs: the cases send its signals around the handler)."""


class _Celery(_Client):
    """Celery's ``amqp.send_task_message`` and a worker's task run, with no broker.

    The publish sends ``before_task_publish`` / ``after_task_publish`` around the send, when
    they have receivers, as ``send_task_message`` does, and keeps the message's headers; the
    run builds the task's request from them (as the worker's ``Request`` does) and sends
    ``task_prerun`` and ``task_postrun`` around the task, through Celery's own signals
    (``callgrind_amqp``'s Celery run).
    """

    peers = ("otel", "ddtrace")

    def __init__(self) -> None:
        from celery import Celery, _state, signals  # type: ignore[import-untyped]

        # Current: the peers find the task of a publish by its name in the current app.
        previous = _state._tls.current_app
        app = Celery("bench", broker="memory://", set_as_current=True)
        _UNDO.append(lambda: setattr(_state._tls, "current_app", previous))

        app.task(name="bench.order")(_order)  # one callable for every app: no warning
        self.app, self.signals = app, signals
        self.template = app.amqp.as_task_v2(TASK_ID, "bench.order", args=(1,), kwargs={})
        self.headers: Any = None

    def _send_task_message(self, producer: Any, name: str, message: Any, exchange: str = "",
                           routing_key: str = "celery", **kwargs: Any) -> None:
        headers, properties, body, _ = message
        before, after = self.signals.before_task_publish, self.signals.after_task_publish
        if before.receivers:
            before.send(sender=name, body=body, exchange=exchange, routing_key=routing_key,
                        declare=[], headers=headers, properties=properties,
                        retry_policy=None)
        self.headers = headers  # kombu's publish
        if after.receivers:
            after.send(sender=name, body=body, headers=headers, exchange=exchange,
                       routing_key=routing_key)

    def _publish(self, send: Any, extra: Callable[[], dict[str, str]] | None = None
                 ) -> Callable[[], None]:
        headers, properties, body, sent_event = self.template
        producer = object()

        def publish() -> None:
            message = dict(headers)
            if extra is not None:
                message.update(extra())
            send(producer, "bench.order", (message, properties, body, sent_event),
                 exchange="", routing_key="celery")

        return publish

    def _run(self, process: _Floor | None = None) -> Callable[[], None]:
        from celery.app.task import Context  # type: ignore[import-untyped]

        class _Task:
            name = "bench.order"
            app = self.app  # where ddtrace's integration keeps its settings
            request: Any = None

        task = _Task()
        prerun, postrun = self.signals.task_prerun.send, self.signals.task_postrun.send

        def execute() -> None:
            prerun(sender=task, task_id=TASK_ID, task=task, args=(1,), kwargs={})
            _handler()
            postrun(sender=task, task_id=TASK_ID, task=task, args=(1,), kwargs={},
                    retval=None, state="SUCCESS")

        def run() -> None:
            headers = dict(self.headers)  # as the worker decodes them
            task.request = Context({
                **headers,
                "delivery_info": {"exchange": "", "routing_key": "celery",
                                  "redelivered": False, "priority": 0},
                "args": (1,), "kwargs": {}, "is_eager": False, "hostname": "bench@local",
            })
            if process is None:
                execute()
            else:
                process.process(headers, execute)

        return run

    def plain(self) -> Hop:
        return self._publish(self._send_task_message), self._run()

    def floor(self, floor: _Floor) -> Hop:
        carried: list[dict[str, str]] = []

        def deliver(traceparent: str, entry: str) -> None:
            carried.append({"traceparent": traceparent, "baggage": entry})
            publish()

        publish = self._publish(self._send_task_message, carried.pop)
        return lambda: floor.send(deliver), self._run(floor)

    def hop(self) -> Hop:
        import hoptrace.celery as hc

        _hoptrace()
        hc.instrument(self.app)
        _UNDO.append(hc.uninstrument)
        return self._publish(hc._wrap_sender(self._send_task_message)), self._run()

    def otel(self, provider: Any) -> Hop:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        instrumentor.instrument(tracer_provider=provider)
        _UNDO.append(instrumentor.uninstrument)
        return _scoped(self.otel_scope(), self._publish(self._send_task_message)), self._run()

    def ddtrace(self) -> Hop:
        """ddtrace's Celery integration, connected to Celery's signals as
        ``ddtrace.patch(celery=True)`` connects it for every app."""
        _dd_tracer()
        import ddtrace
        from ddtrace.contrib.internal.celery.app import patch_app, unpatch_app
        from hop_bench import DdBaggage

        ddtrace.patch(celery=True)
        patch_app(self.app)  # type: ignore[no-untyped-call]
        _UNDO.append(lambda: unpatch_app(self.app))  # type: ignore[no-untyped-call]
        return _scoped(DdBaggage(), self._publish(self._send_task_message)), self._run()


# ---------------------------------------------------------------------- cases ---

#: Each client's stand-ins and cases, by the name its cases end with.
CLIENTS: dict[str, type[_Client]] = {
    "confluent": _Confluent, "kafkapython": _KafkaPython, "aiokafka": _AioKafka,
    "pika": _Pika, "aiopika": _AioPika, "kombu": _Kombu, "celery": _Celery,
}
#: The client each name stands for in the targets.
CLIENT_NAMES = {"confluent": "confluent-kafka", "kafkapython": "kafka-python",
                "aiokafka": "aiokafka", "pika": "pika", "aiopika": "aio-pika",
                "kombu": "kombu", "celery": "celery"}


def client_cases(client: str) -> tuple[str, ...]:
    """``client``'s cases, plain first: its floor, hoptrace, each peer it has, and target
    2 (b)'s 1% kinds where OTel contrib instruments it."""
    extra = ("floor_promise",) if client == "confluent" else ()
    sampled = SAMPLED_KINDS if "otel" in CLIENTS[client].peers else ()
    kinds = ("plain", "floor", *extra, "hop", *CLIENTS[client].peers, *sampled)
    return tuple(f"{kind}_{client}" for kind in kinds)


CASES = tuple(case for client in CLIENTS for case in client_cases(client))
#: Target 2 (b)'s cases, as the full run counts them: the SDK kinds at each seed.
SAMPLED_CASES = tuple(
    case for client in CLIENTS for case in ("plain_" + client, *(
        f"{kind}_{client}@{seed}" if kind != "s_prop" else f"{kind}_{client}"
        for kind in SAMPLED_KINDS for seed in (SEEDS if kind != "s_prop" else (0,))))
    if f"s_hop_{client}" in CASES)


def name_of(case: str) -> str:
    """``KIND_CLIENT`` of a case name (without its half, seed and processor)."""
    return case.partition(":")[0].partition("@")[0].partition("/")[0]


def client_of(case: str) -> str:
    """The client a case name stands for (``confluent``, ``pika``, ...)."""
    return name_of(case).rpartition("_")[2]


#: Callbacks that undo what a case connected process-wide (Celery's signals): the tests
#: build several cases in one interpreter.
_UNDO: list[Callable[[], object]] = []


def reset() -> None:
    """Undo what the cases built so far connected process-wide."""
    while _UNDO:
        _UNDO.pop()()


def build(case: str, provider: Any = None) -> Callable[[], object]:
    """The function one call of ``case`` runs: ``NAME[/send|/receive][@SEED][:PROCESSOR]``.

    ``NAME`` alone sends one message and receives it; ``/send`` only sends, ``/receive`` only
    receives (the message of one send made here, again and again). ``PROCESSOR``: ``batch``
    (the default), ``simple`` or ``drop`` (see :func:`encoding_provider`). ``SEED``: the 1%
    kinds' (:class:`SeededIds`; 1 without one; ``s_hopd``'s seeds the global ``random``, as
    the built case is returned: the warm-up and the count make the same draws every run).
    Without ``provider``, one is made and installed globally (as hoptrace's cases need); a
    given ``provider`` must already be the global one (for the 1% kinds, made with
    :func:`sampled_setup`). ``s_prop`` installs none.
    """
    spec, _, processor = case.partition(":")
    spec, _, seed = spec.partition("@")
    name, _, half = spec.partition("/")
    _install_meter(os.environ.get("BENCH_METER", ""))
    if name.startswith("proc_"):
        return _proc_case(name)
    kind = name.rpartition("_")[0]
    sampled = kind in SEEDED_KINDS
    if provider is None and kind != "s_prop":
        from opentelemetry import trace

        provider = encoding_provider(processor or "batch",
                                     int(seed or 1) if sampled else None,
                                     default_ids=kind == "s_hopd")
        trace.set_tracer_provider(provider)
    send, receive = _hop(name, provider)
    if sampled:  # the SDK's RandomIdGenerator (and SeededIds' span IDs) draw from it
        random.seed(int(seed or 1))
    if sampled and not half:
        return _exporting(send, receive, provider.force_flush)
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


def _install_meter(kind: str) -> None:
    """Set the global meter provider ``BENCH_METER`` names (see the module's docstring)."""
    if not kind:
        return
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    if kind not in ("readerless", "reader"):
        raise ValueError(f"BENCH_METER={kind!r}: readerless or reader")
    readers = [InMemoryMetricReader()] if kind == "reader" else []
    metrics.set_meter_provider(MeterProvider(metric_readers=readers))


def _exporting(send: Callable[[], None], receive: Callable[[], None],
               flush: Callable[[], object]) -> Callable[[], None]:
    """A 1% case's call: one message, and every ``BATCH`` messages from the end of the
    warm-up on, the export of what is queued (a BatchSpanProcessor's timer)."""
    calls = itertools.count(1 - WARMUP)

    def one() -> None:
        elsewhere().run(send)
        receive()
        if next(calls) % BATCH == 0:
            flush()

    return one


class _MessageRoot:
    """A scope that opens a message's root (``scope``), its trace ID from the messages'
    stream of ``ids`` (:class:`SeededIds`)."""

    def __init__(self, ids: SeededIds, scope: Any) -> None:
        self._root_next, self._enter, self._exit = (
            ids.message_root, scope.__enter__, scope.__exit__)

    def __enter__(self) -> None:
        self._root_next()
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit(*exc)


def _hop(name: str, provider: Any) -> Hop:
    kind, _, client = name.rpartition("_")
    if client not in CLIENTS or name not in client_cases(client):
        raise ValueError(f"unknown case {name!r}")
    stand_ins = CLIENTS[client]()
    if kind in ("floor", "floor_promise"):
        return stand_ins.floor(_Floor(provider, promise=kind == "floor_promise"))
    if kind == "otel":
        return stand_ins.otel(provider)
    if kind in SAMPLED_KINDS:
        from hop_bench import HoptraceTransaction, OtelRoot

        if kind == "s_otel":
            ids = provider.id_generator
            stand_ins.otel_scope = (  # type: ignore[method-assign]
                lambda: _MessageRoot(ids, OtelRoot()))
            return stand_ins.otel(provider)
        send, receive = stand_ins.hop()
        if kind == "s_prop":  # no SDK, as hop_bench's s_hop_prop
            import hoptrace

            hoptrace.configure(propagation_only=True)
            return _scoped(HoptraceTransaction(), send), receive
        if kind == "s_hopd":  # the SDK's own generator: the root's trace ID as in production
            return _scoped(HoptraceTransaction(), send), receive
        scope = _MessageRoot(provider.id_generator, HoptraceTransaction())
        return _scoped(scope, send), receive
    method: Callable[[], Hop] = getattr(stand_ins, kind)
    return method()


def _overheads(counts: dict[str, int]) -> dict[str, int]:
    """Each traced case's instructions per message over its client's plain case."""
    out = {}
    for case, count in counts.items():
        kind, _, client = name_of(case).rpartition("_")
        plain = f"plain_{client}"
        if kind != "plain" and plain in counts:
            out[case] = count - counts[plain]
    return out


def calls_of(case: str) -> int:
    """Messages counted for ``case``: more for the 1% kinds (:data:`SAMPLED_CALLS`)."""
    return SAMPLED_CALLS if name_of(case).startswith("s_") else CALLS


def _with_default_ids(entry: dict[str, Any], client: str, over: dict[str, int],
                      recorded_by: dict[str, int]) -> None:
    """Add ``s_hopd`` to ``client``'s ``entry`` of :func:`_sampled` where it was counted at
    each of the entry's seeds: its overhead at each, their mean, the messages it recorded
    (``recorded_by``, :func:`recorded_in`) and the mean over propagation-only's."""
    cases = {seed: f"s_hopd_{client}@{seed}" for seed in entry["per_seed"]}
    if not all(case in over for case in cases.values()):
        return
    for seed, case in cases.items():
        entry["per_seed"][seed]["s_hopd"] = over[case]
    hopd = round(sum(over[case] for case in cases.values()) / len(cases))
    prop = entry["s_prop"]
    got = {seed: recorded_by.get(case) for seed, case in cases.items()}
    entry.update({
        "s_hopd": hopd,
        "s_hopd_recorded": got,
        "s_hopd_over_s_prop": round(hopd / prop, 3) if prop else None,
    })
    # The default generator records messages of its own, more or fewer than the seeded
    # cases': its mean is also read at their counts, so that both count the same recorded share.
    per_recorded = recorded_cost({int(seed): figures["s_hop"]
                                  for seed, figures in entry["per_seed"].items()})
    if per_recorded is not None and all(isinstance(n, int) for n in got.values()):
        at_seeded = round(sum(
            over[case] + (recorded(int(seed)) - got[seed]) * per_recorded / SAMPLED_CALLS
            for seed, case in cases.items()) / len(cases))
        entry.update({
            "recorded_cost": round(per_recorded),
            "s_hopd_at_seeded": at_seeded,
            "s_hopd_at_seeded_over_s_prop": round(at_seeded / prop, 3) if prop else None,
        })


def recorded_cost(hop_by_seed: dict[int, int]) -> float | None:
    """What one recorded message adds to a 1% case's count, in instructions: the slope of
    ``s_hop``'s overhead per message (``hop_by_seed``, per seed) over the messages each seed
    records (:func:`recorded`), fitted by least squares, times the messages counted; None
    when the seeds do not record at least two different numbers of messages."""
    points = [(recorded(seed), count) for seed, count in hop_by_seed.items()]
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    slope = (sum((n - mean_n) * (c - mean_c) for n, c in points)
             / sum((n - mean_n) ** 2 for n, _ in points))
    return slope * SAMPLED_CALLS


def _sampled(counts: dict[str, int],
             recorded_by: dict[str, int] | None = None) -> dict[str, Any]:
    """Target 2 (b) from the 1% cases' counts: per client, hoptrace's and contrib's
    overheads at each seed and their mean, the ratio, hoptrace propagation-only's and the
    mean over it; beside them ``s_hopd``'s (:func:`_with_default_ids`), with the messages it
    recorded at each seed (``recorded_by``: per case)."""
    over = _overheads(counts)
    clients: dict[str, Any] = {}
    for client in CLIENTS:
        seeds = [seed for seed in SEEDS
                 if f"s_hop_{client}@{seed}" in over and f"s_otel_{client}@{seed}" in over]
        if not seeds:
            continue
        hop = [over[f"s_hop_{client}@{seed}"] for seed in seeds]
        otel = [over[f"s_otel_{client}@{seed}"] for seed in seeds]
        ratios = [round(h / o, 3) for h, o in zip(hop, otel, strict=True)]
        mean, prop = round(sum(hop) / len(hop)), over.get(f"s_prop_{client}")
        clients[client] = {
            "s_hop": mean, "s_otel": round(sum(otel) / len(otel)),
            "ratio": round(sum(hop) / sum(otel), 3), "ratios": ratios,
            "s_prop": prop, "s_hop_over_s_prop": round(mean / prop, 3) if prop else None,
            "per_seed": {str(seed): {"s_hop": h, "s_otel": o}
                         for seed, h, o in zip(seeds, hop, otel, strict=True)},
        }
        _with_default_ids(clients[client], client, over, recorded_by or {})
    return {
        "setup": f"ParentBased(TraceIdRatioBased({RATE})), a root span per message around "
                 "the send; each message's root trace ID from random.Random(seed), the same "
                 "on both sides (SeededIds); s_hopd: hoptrace with the SDK's default "
                 "RandomIdGenerator, the global random seeded with the seed (its own "
                 "messages recorded: s_hopd_recorded)",
        "calls": SAMPLED_CALLS, "seeds": list(SEEDS),
        "recorded_messages": {str(seed): recorded(seed) for seed in SEEDS},
        "instructions_per_message": counts, "over_plain": over, "clients": clients,
    }


def _ratios(overheads: dict[str, int]) -> dict[str, float]:
    """hoptrace's and the floors' overheads over each peer's, per client."""
    out = {}
    for client, stand_ins in CLIENTS.items():
        for peer in stand_ins.peers:
            base = overheads.get(f"{peer}_{client}")
            for kind in ("hop", "floor", "floor_promise"):
                case = f"{kind}_{client}"
                if base and case in overheads:
                    out[f"{case}/{peer}_{client}"] = round(overheads[case] / base, 3)
    return out


#: Modules every case of the one valgrind run imports anyway (see ``count_many``).
PRELOAD = ("hoptrace", "hoptrace.confluent_kafka", "hoptrace.kafka_python", "hoptrace.aiokafka",
           "hoptrace.pika", "hoptrace.kombu", "hoptrace.aio_pika", "hoptrace.celery",
           "opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.common.trace_encoder",
           "hop_bench", "aio_pika", "celery", "kombu.entity", "wrapt")


def count(cases: list[str], calls: int = CALLS) -> dict[str, int]:
    """Instructions per message of ``cases``: those ddtrace runs each in an interpreter of
    its own (:func:`callgrind_cases.count_in`), the others a client at a time in children of
    one interpreter (:func:`callgrind_cases.count_many`: the imports paid once per client).

    A client whose run fails is run once more: a process that lives for minutes under
    valgrind can be brought down by what it did not do (hoptrace's extension module rebuilt
    under it, in a shared working tree).
    """
    counts: dict[str, int] = {}
    for client in CLIENTS:
        mine = [case for case in cases if client_of(case) == client]
        shared = [case for case in mine if not case.startswith("ddtrace_")]
        for attempt in (1, 2):
            try:
                counts.update(callgrind_cases.count_many(__file__, shared, calls, PRELOAD)
                              if shared else {})
                break
            except RuntimeError as failed:
                if attempt == 2:
                    raise
                print(f"{client}: the run failed, once more ({str(failed)[-300:]})",
                      file=sys.stderr, flush=True)
        for case in mine:
            if case not in counts:
                counts[case] = callgrind_cases.count_in(__file__, case, calls)
    return {case: counts[case] for case in cases}


def _recorded_by(sampled: dict[str, int]) -> dict[str, int]:
    """The messages each whole ``s_hopd`` case of ``sampled`` recorded (:func:`recorded_in`),
    printed as they come."""
    out = {}
    for case in sampled:
        if name_of(case).startswith("s_hopd_") and "/" not in case and ":" not in case:
            out[case] = recorded_in(case, SAMPLED_CALLS)
            print(f"{case:28} {out[case]} of {SAMPLED_CALLS} messages recorded", flush=True)
    return out


def _print_sampled(target2: dict[str, Any]) -> None:
    """The 1% summary: per client, the overheads and ratios of :func:`_sampled`."""
    print(f"\n1% sampled, {SAMPLED_CALLS} messages, recorded per seed: "
          f"{target2['recorded_messages']}")
    for client, entry in target2["clients"].items():
        print(f"{client:12} s_hop {entry['s_hop'] / 1000:6.1f}k  s_otel "
              f"{entry['s_otel'] / 1000:6.1f}k  ratio {entry['ratio']:.3f} "
              f"(per seed {entry['ratios']})  s_prop "
              f"{(entry['s_prop'] or 0) / 1000:6.1f}k  s_hop/s_prop "
              f"{entry['s_hop_over_s_prop'] or 0:.3f}")
        if "s_hopd" in entry:
            print(f"{'':12} s_hopd (the SDK's default IDs) {entry['s_hopd'] / 1000:6.1f}k  "
                  f"s_hopd/s_prop {entry['s_hopd_over_s_prop'] or 0:.3f}  recorded per "
                  f"seed {entry['s_hopd_recorded']}")
        if "s_hopd_at_seeded" in entry:
            print(f"{'':12} s_hopd at the seeded cases' recorded counts "
                  f"{entry['s_hopd_at_seeded'] / 1000:6.1f}k  s_hopd/s_prop "
                  f"{entry['s_hopd_at_seeded_over_s_prop'] or 0:.3f}  (one recorded message "
                  f"{entry['recorded_cost'] / 1000:.0f}k)")


def main(argv: list[str]) -> int:
    if argv[:1] in (["--run"], ["--run-many"]):
        return callgrind_cases.cli(argv, __file__, CASES, build)
    if argv[:1] == ["--recorded"]:
        print(recorded_run(argv[1], int(argv[2])))
        return 0
    started = time.monotonic()
    counts: dict[str, int] = {}
    sampled: dict[str, int] = {}
    only_sampled = argv == ["--sampled"]
    if argv and not only_sampled:
        for case in argv:
            found = sampled if name_of(case).startswith("s_") else counts
            found[case] = callgrind_cases.count_in(__file__, case, calls_of(case))
    else:
        if not only_sampled:
            counts = count([case for case in CASES if not name_of(case).startswith("s_")])
        sampled = count(list(SAMPLED_CASES), SAMPLED_CALLS)
    for case, value in {**counts, **sampled}.items():
        print(f"{case:28} {value / 1000:8.1f}k instructions per message", flush=True)
    recorded_by = _recorded_by(sampled)
    overheads = _overheads(counts)
    ratios = _ratios(overheads)
    print("\nover plain, per message (produce + consume):")
    for case, value in {**overheads, **_overheads(sampled)}.items():
        print(f"{case:28} {value / 1000:8.1f}k")
    for name, ratio in ratios.items():
        print(f"{name:40} {ratio:8.3f}")
    target2 = _sampled(sampled, recorded_by) if sampled else None
    if target2:
        _print_sampled(target2)
    elapsed = time.monotonic() - started
    print(f"\n{len(counts) + len(sampled)} cases in {elapsed / 60:.1f} minutes")
    if only_sampled and RESULTS.exists():
        data = json.loads(RESULTS.read_text())
        data["sampled"] = target2
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    elif not argv:
        RESULTS.write_text(json.dumps({
            "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": "callgrind instructions per message (produce + consume), counted in "
                      "starmap_next; spans encoded as OTLP in the foreground, batches of "
                      f"{BATCH} (ddtrace: its msgpack encoding at each trace's end); "
                      "bench/callgrind_peers.py",
            "calls": CALLS, "minutes": round(elapsed / 60, 1), "clients": CLIENT_NAMES,
            "instructions_per_message": counts,
            "over_plain": overheads, "ratios_over_plain": ratios,
            "sampled": target2,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
