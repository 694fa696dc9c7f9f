"""Per-message cost of hoptrace's metrics: one produce scope plus one consume scope, in-process.

Run with ``python bench/metrics_bench.py`` (``make bench`` calls it). No broker: the carrier
goes straight from the produce scope to the consume scope, so the figures are hoptrace's own
work per message. Variants, timed in turns within each repetition so that drift in the
machine's speed hits them alike:

* ``off_hooks_stubbed`` — no tracing SDK, no MeterProvider, and the metric hooks replaced by
  stubs (``lambda *args``) that return at once (the real hooks, off, now cost less: each
  returns at its first comparison, without the stub's packed arguments);
* ``off`` — no tracing SDK and no MeterProvider (the API's proxy): what the metric hooks cost
  when metrics are off (``off`` minus ``off_hooks_stubbed``);
* ``metrics_api_noop`` — no tracing SDK; a MeterProvider whose instruments do nothing, so
  hoptrace does all its own metric work (attributes, tallies, origin) but the SDK none:
  hoptrace's own share is ``metrics_api_noop`` minus ``off``;
* ``metrics`` — no tracing SDK, an SDK MeterProvider with an InMemoryMetricReader;
* ``spans`` — SDK spans (BatchSpanProcessor, exporter drops them), no MeterProvider;
* ``spans_metrics`` — SDK spans and the SDK MeterProvider, the default set of metrics: the
  target is at most +10 % over ``spans`` (issue 15);
* ``spans_metrics_pathway`` — the same with the opt-in ``hoptrace.pathway.duration`` on
  (``enabled_metrics``), which also carries the origin baggage entry on every message;
* ``spans_metrics_lean`` — the default set without ``messaging.client.operation.duration``:
  two histogram records per message instead of three;
* ``spans_metrics_sdk_record`` — ``spans_metrics`` with every histogram record going through
  the SDK's ``Histogram.record`` (hoptrace's lean histogram path switched off): the "before";
* ``sdk_api`` — ``spans`` plus the same metrics recorded with no hoptrace metric code: the
  same SDK instruments (names, kinds, units, buckets; the SDK's default exemplar filter) in
  a MeterProvider of their own, fed through the OTel API beside the same scopes, with the
  attribute sets and the number of records per message that hoptrace makes (two counts as
  plain integers that observable counters report, three ``Histogram.record`` calls, two of
  them inside the span). The counts take no lock: what an instrumentation pays that records
  these metrics the ordinary way;
* ``floor`` — ``spans`` plus the least work any implementation must do to record the same
  instruments into the SDK: after a first message through the API (which makes the SDK's
  aggregations), each of the three histogram records is the explicit-bucket aggregation's
  own steps on the aggregation found once (its lock, the sum, min, max and bucket count,
  the bucket found once for the aggregation and its exemplar reservoir), and for the two
  records made in a sampled span the exemplar bucket's fields written under the
  reservoir's lock, with the IDs read from the scope's span context; the two counts are
  plain integers as in ``sdk_api``. Nothing else: no attribute set is built or hashed, no
  function is called but the clocks (four ``perf_counter_ns`` for the durations and a
  ``time_ns`` per exemplar), the lock methods, ``bisect_left`` and ``get_span_context``; no
  meter-enabled check, no check of the value. ``floor`` minus ``spans`` is the SDK's share of
  target 6, which no instrumentation can go under; ``spans_metrics`` minus ``floor`` is
  hoptrace's own.

``check_floor`` verifies, before the timing, that ``sdk_api`` and ``floor`` export the same
metrics, kinds, attribute sets, counts and exemplar-keeping points as hoptrace.

Writes bench/results/metrics.json. Every figure is the median over repetitions, with min/max.

``--callgrind`` also counts instructions per message for each variant under valgrind's
callgrind (counted only inside ``starmap_next``, the loop that runs the messages), which do
not move with the machine's load, ``--jobs`` valgrind runs at a time, and gives the floor's
verdict (``floor`` in the JSON: its share of ``spans``, whether +10 % is within reach, and
how far hoptrace is above it). ``--count VARIANT,...`` counts only those variants, with no
timing and no file; ``--count hook_consumed,...`` counts one metric hook per call instead
(``HOOKS``: each as ``spans_metrics`` calls it for a message). ``--run VARIANT N`` is what
valgrind runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter_ns, time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, NoOpMeter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import hoptrace
from hoptrace import _config
from hoptrace.core import _sdk_metrics, hop, metrics

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("off_hooks_stubbed", "off", "metrics_api_noop", "metrics", "spans", "spans_metrics",
            "spans_metrics_pathway", "spans_metrics_lean", "spans_metrics_sdk_record",
            "sdk_api", "floor")
#: The variants whose figures are given over ``spans``.
OVER_SPANS = ("spans_metrics", "spans_metrics_pathway", "spans_metrics_lean",
              "spans_metrics_sdk_record", "sdk_api", "floor")
#: What ``spans_metrics_lean`` switches off: one of the three histogram records per message.
LEAN = frozenset({"messaging.client.operation.duration"})


class DropExporter(SpanExporter):
    """Drops every span: the span cost without the export cost."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class NoOpInstrumentsProvider(MeterProvider):
    """A provider hoptrace takes for a real one, whose instruments record nothing."""

    def __init__(self) -> None:
        pass

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return NoOpMeter("bench")


def one_message() -> None:
    """One message through both halves of a hop."""
    with hoptrace.produce_scope(None, "bench", "rabbitmq") as send:
        headers = send.carrier
    with hoptrace.consume_scope(headers, "bench", "rabbitmq"):
        pass


#: The attribute sets hoptrace's metrics carry for the two edges of :func:`one_message`.
SEND_ATTRS = {"messaging.system": "rabbitmq", "messaging.operation.name": "send",
              "messaging.destination.name": "bench"}
PROCESS_ATTRS = {"messaging.system": "rabbitmq", "messaging.operation.name": "process",
                 "messaging.destination.name": "bench"}


class Floor:
    """hoptrace's instruments, made through the OTel API alone (no hoptrace metric code)."""

    def __init__(self, provider: MeterProvider, reader: InMemoryMetricReader | None = None) -> None:
        self.provider, self.reader = provider, reader
        meter = provider.get_meter("floor")
        self.sent = [0]
        self.consumed = [0]

        def counter(name: str, cell: list[int] | None, attrs: dict[str, Any]) -> None:
            def observe(_options: CallbackOptions) -> list[Observation]:
                return [] if cell is None else [Observation(cell[0], attrs)]

            meter.create_observable_counter(name, callbacks=[observe], unit="{message}")

        def histogram(name: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(name, unit="s",
                                          explicit_bucket_boundaries_advisory=list(buckets))

        counter(metrics.SENT_MESSAGES, self.sent, SEND_ATTRS)
        counter(metrics.CONSUMED_MESSAGES, self.consumed, PROCESS_ATTRS)
        for name in (metrics.CLOCK_SKEW, metrics.RETRIES, metrics.DEAD_LETTERS):
            counter(name, None, PROCESS_ATTRS)  # (made, as hoptrace makes them; no record)
        self.operation = histogram(metrics.OPERATION_DURATION, metrics.SEMCONV_BUCKETS)
        self.process = histogram(metrics.PROCESS_DURATION, metrics.SEMCONV_BUCKETS)
        self.queue_wait = histogram(metrics.QUEUE_WAIT, metrics.LATENCY_BUCKETS)


class AggregationFloor(Floor):
    """:class:`Floor`'s instruments, fed through the SDK's aggregations directly.

    The first message goes through the API (the SDK makes the aggregations then, as for
    any first record); :meth:`bind` then finds, in the provider's one reader storage, the
    one aggregation each histogram has (one attribute set each).
    """

    def __init__(self, provider: MeterProvider, reader: InMemoryMetricReader | None = None) -> None:
        super().__init__(provider, reader)
        self.bound = False

    def bind(self) -> None:
        storages = self.provider._measurement_consumer._reader_storages
        (storage,) = storages.values()

        def aggregation(histogram: Any) -> Any:
            (match,) = storage._instrument_view_instrument_matches[histogram]
            (found,) = match._attributes_aggregation.values()
            assert type(found).__name__ == "_ExplicitBucketHistogramAggregation"
            return found

        self.aggregations = tuple(aggregation(h) for h in (self.operation, self.process,
                                                          self.queue_wait))
        self.bound = True


_floor: Any = None


def one_message_api() -> None:
    """:func:`one_message` with hoptrace's metrics recorded through the OTel API directly.

    The records are made where hoptrace makes them: the send's count and duration and the
    processing duration inside their span (exemplars), the delivery's count and queue wait
    outside it.
    """
    floor = _floor
    assert floor is not None
    start = time.perf_counter_ns()
    with hoptrace.produce_scope(None, "bench", "rabbitmq") as send:
        headers = send.carrier
        floor.sent[0] += 1
        floor.operation.record((time.perf_counter_ns() - start) / 1e9, SEND_ATTRS)
    with hoptrace.consume_scope(headers, "bench", "rabbitmq") as scope:
        start = time.perf_counter_ns()
        floor.process.record((time.perf_counter_ns() - start) / 1e9, PROCESS_ATTRS)
    floor.consumed[0] += 1
    if scope.queue_wait_ms is not None:
        floor.queue_wait.record(scope.queue_wait_ms / 1e3, PROCESS_ATTRS)


def one_message_floor() -> None:  # noqa: C901 - the steps written out, no call
    """:func:`one_message_api` with each record made as the least work the SDK needs.

    Written out three times rather than called: a helper's call would count against the
    floor. The records keep the order and the contexts of :func:`one_message_api`.
    """
    floor = _floor
    if not floor.bound:  # the first message: the SDK makes the aggregations
        one_message_api()
        floor.bind()
        return
    operation, process, queue_wait = floor.aggregations
    start = perf_counter_ns()
    with hoptrace.produce_scope(None, "bench", "rabbitmq") as send:
        headers = send.carrier
        floor.sent[0] += 1
        value = (perf_counter_ns() - start) / 1e9
        agg = operation
        at = bisect_left(agg._boundaries, value)
        lock = agg._lock
        lock.acquire()
        counts = agg._value
        if counts is None:
            counts = agg._value = [0] * (len(agg._boundaries) + 1)
        counts[at] += 1
        agg._sum += value
        if value < agg._min:
            agg._min = value
        if value > agg._max:
            agg._max = value
        lock.release()
        context = send.span.get_span_context()
        if context[3] & 1:  # sampled: the trace-based filter keeps an exemplar
            reservoir = agg._reservoir
            lock = reservoir._lock
            lock.acquire()
            bucket = reservoir._reservoir_storage[at]
            bucket._ExemplarBucket__value = value
            bucket._ExemplarBucket__time_unix_nano = time_ns()
            bucket._ExemplarBucket__attributes = SEND_ATTRS
            bucket._ExemplarBucket__span_id = context[1]
            bucket._ExemplarBucket__trace_id = context[0]
            bucket._ExemplarBucket__offered = True
            lock.release()
    with hoptrace.consume_scope(headers, "bench", "rabbitmq") as scope:
        start = perf_counter_ns()
        value = (perf_counter_ns() - start) / 1e9
        agg = process
        at = bisect_left(agg._boundaries, value)
        lock = agg._lock
        lock.acquire()
        counts = agg._value
        if counts is None:
            counts = agg._value = [0] * (len(agg._boundaries) + 1)
        counts[at] += 1
        agg._sum += value
        if value < agg._min:
            agg._min = value
        if value > agg._max:
            agg._max = value
        lock.release()
        context = scope.span.get_span_context()
        if context[3] & 1:
            reservoir = agg._reservoir
            lock = reservoir._lock
            lock.acquire()
            bucket = reservoir._reservoir_storage[at]
            bucket._ExemplarBucket__value = value
            bucket._ExemplarBucket__time_unix_nano = time_ns()
            bucket._ExemplarBucket__attributes = PROCESS_ATTRS
            bucket._ExemplarBucket__span_id = context[1]
            bucket._ExemplarBucket__trace_id = context[0]
            bucket._ExemplarBucket__offered = True
            lock.release()
    floor.consumed[0] += 1
    wait_ms = scope.queue_wait_ms
    if wait_ms is not None:  # (outside the span, as hoptrace records it: no exemplar)
        value = wait_ms / 1e3
        agg = queue_wait
        at = bisect_left(agg._boundaries, value)
        lock = agg._lock
        lock.acquire()
        counts = agg._value
        if counts is None:
            counts = agg._value = [0] * (len(agg._boundaries) + 1)
        counts[at] += 1
        agg._sum += value
        if value < agg._min:
            agg._min = value
        if value > agg._max:
            agg._max = value
        lock.release()



def _floor_of(name: str) -> Floor:
    """The instruments of ``sdk_api`` or ``floor``, in a MeterProvider and reader of their own."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return (AggregationFloor if name == "floor" else Floor)(provider, reader)


def _message(name: str) -> Callable[[], None]:
    return {"sdk_api": one_message_api, "floor": one_message_floor}.get(name, one_message)


_STUB = types.SimpleNamespace(
    stamp_origin=lambda ctx: ctx,
    send_started=lambda *args: None,
    consumed=lambda *args: None,
    closed=lambda *args: None,
    Record=metrics.Record,
    # hop skips the hooks when the provider is the one known off: never here, so the stubs run
    provider_source=types.SimpleNamespace(_METER_PROVIDER=None),
    off_provider=object(),
)


@contextmanager
def variant(name: str, tracer_provider: Any, meter_provider: Any,
            floor: Floor | None = None) -> Iterator[None]:
    """(``floor``: the instruments of ``sdk_api``, or ``floor``'s AggregationFloor.)"""
    """Install the providers and settings of ``name``; restore the defaults after."""
    global _floor
    previous = getattr(trace, "_TRACER_PROVIDER")  # noqa: B009 - the API's private global
    spans = name.startswith("spans") or name in ("sdk_api", "floor")
    if name in ("sdk_api", "floor"):
        _floor = floor
    setattr(trace, "_TRACER_PROVIDER", tracer_provider if spans else None)  # noqa: B010
    if name == "metrics_api_noop":
        metrics.use_meter_provider(NoOpInstrumentsProvider())
    elif "metrics" in name:
        metrics.use_meter_provider(meter_provider)
    if name.endswith("pathway"):
        _config.configure(enabled_metrics={metrics.PATHWAY})
    if name.endswith("lean"):
        _config.configure(disabled_metrics=LEAN)
    if name == "off_hooks_stubbed":
        setattr(hop, "metrics", _STUB)  # noqa: B010
    known = _sdk_metrics._known
    if name.endswith("sdk_record"):  # instruments rebuilt (new provider): Histogram.record
        _sdk_metrics._known = ("switched off by the benchmark", False)
    try:
        yield
    finally:
        _sdk_metrics._known = known
        _floor = None
        setattr(hop, "metrics", metrics)  # noqa: B010
        metrics.use_meter_provider(None)
        _config.reset()
        setattr(trace, "_TRACER_PROVIDER", previous)  # noqa: B010


def loop_time(fn: Callable[[], None], loops: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(loops):
        fn()
    return (time.perf_counter_ns() - start) / loops / 1000


def run(loops: int, repeats: int) -> dict[str, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=1 << 20,
                                                          schedule_delay_millis=100))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    floors = {name: _floor_of(name) for name in ("sdk_api", "floor")}
    os.environ.pop("OTEL_PYTHON_METER_PROVIDER", None)
    check_floor(tracer_provider)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name in VARIANTS:  # warm up: instruments, caches, the edge's attribute dict
        with variant(name, tracer_provider, meter_provider, floors.get(name)):
            loop_time(_message(name), min(loops, 2000))
    for _ in range(repeats):
        for name in VARIANTS:
            with variant(name, tracer_provider, meter_provider, floors.get(name)):
                samples[name].append(loop_time(_message(name), loops))
    reader.get_metrics_data()  # the readers really hold the points
    tracer_provider.shutdown()
    meter_provider.shutdown()
    for floor in floors.values():
        assert floor.reader is not None
        floor.reader.get_metrics_data()
        floor.provider.shutdown()

    figures = {
        name: {"median_us": statistics.median(values), "min_us": min(values),
               "max_us": max(values)}
        for name, values in samples.items()
    }

    def overheads_by(stat: str) -> dict[str, float]:
        def median(name: str) -> float:
            return figures[name][stat]

        return {
        "hooks_when_off_us": median("off") - median("off_hooks_stubbed"),
        "hoptrace_own_metric_work_us": median("metrics_api_noop") - median("off"),
        "metrics_without_spans_us": median("metrics") - median("off"),
        "metrics_over_spans_us": median("spans_metrics") - median("spans"),
        "metrics_over_spans_pct": 100 * (median("spans_metrics") / median("spans") - 1),
        "metrics_pathway_over_spans_pct": 100 * (
            median("spans_metrics_pathway") / median("spans") - 1),
        "metrics_lean_over_spans_pct": 100 * (
            median("spans_metrics_lean") / median("spans") - 1),
        "metrics_sdk_record_over_spans_pct": 100 * (
            median("spans_metrics_sdk_record") / median("spans") - 1),
        "sdk_api_over_spans_us": median("sdk_api") - median("spans"),
        "sdk_api_over_spans_pct": 100 * (median("sdk_api") / median("spans") - 1),
        "floor_over_spans_us": median("floor") - median("spans"),
        "floor_over_spans_pct": 100 * (median("floor") / median("spans") - 1),
        "hoptrace_over_floor_pct_of_spans": 100 * (
            median("spans_metrics") - median("floor")) / median("spans"),
        }

    # On a busy machine the fastest repetition is the least disturbed one: both are given.
    overheads, overheads_min = overheads_by("median_us"), overheads_by("min_us")
    return {
        "case": "produce_scope + consume_scope per message, in-process, no broker",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "loops": loops,
        "repeats": repeats,
        "variants_us": figures,
        "overheads": overheads,
        "overheads_from_min": overheads_min,
        "targets": {"spans_metrics_vs_spans<=+10%": overheads["metrics_over_spans_pct"] <= 10},
    }


def _providers() -> tuple[Any, Any]:
    """The providers of a counted run: the span processor's thread never wakes while it
    counts (no batch fills, no timer runs out), so no export is counted with a message."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(
        DropExporter(), max_queue_size=1 << 20, max_export_batch_size=1 << 20,
        schedule_delay_millis=1e9))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def _exported(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Per metric: its kind, unit, bucket bounds and, per attribute set, its count."""
    out: dict[str, Any] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = sorted(
                    (sorted((p.attributes or {}).items()),
                     getattr(p, "count", getattr(p, "value", None)),
                     bool(getattr(p, "exemplars", None)))  # (the same records keep one)
                    for p in metric.data.data_points)
                bounds = {tuple(getattr(p, "explicit_bounds", ())) for p in metric.data.data_points}
                kind = metric.data
                out[metric.name] = (type(kind).__name__, metric.unit,
                                    getattr(kind, "is_monotonic", None),
                                    str(getattr(kind, "aggregation_temporality", None)), bounds,
                                    points)
    return out


def check_floor(tracer_provider: Any, messages: int = 20) -> None:
    """Raise unless ``sdk_api`` and ``floor`` export what hoptrace does: names, kinds,
    attribute sets, counts and which points keep exemplars (the SDK's default filter,
    records in the same contexts).
    """
    hop_reader = InMemoryMetricReader()
    hop_provider = MeterProvider(metric_readers=[hop_reader])
    with variant("spans_metrics", tracer_provider, hop_provider):
        for _ in range(messages):
            one_message()
    want = _exported(hop_reader)
    hop_provider.shutdown()
    for name in ("sdk_api", "floor"):
        floor = _floor_of(name)
        with variant(name, tracer_provider, None, floor):
            for _ in range(messages):
                _message(name)()
        assert floor.reader is not None
        got = _exported(floor.reader)
        floor.provider.shutdown()
        if got != want:
            raise AssertionError(f"{name} exports other metrics than hoptrace:\n{got}\n{want}")


#: One metric hook each, as ``spans_metrics`` calls it for a message (``--count hook_…``);
#: the origin's stamp as ``spans_metrics_pathway`` calls it.
HOOKS = ("hook_stamp_origin", "hook_send_started", "hook_closed_send", "hook_consumed",
         "hook_closed_process")


def _hook(name: str, tracer_provider: Any) -> Callable[[], object]:
    """One hook's call as :func:`one_message` makes it (warm: after 300 messages), alone:
    the send's end and the processing's end inside a sampled span, the delivery outside
    one with the baggage a message carries (its origin entry) and a dict carrier."""
    from opentelemetry import context as otel_context

    ctx = otel_context.get_current()
    if name == "hook_stamp_origin":
        return lambda: metrics.stamp_origin(ctx)
    if name == "hook_send_started":
        return lambda: metrics.send_started("rabbitmq", "bench", None)
    baggage = {"transaction.id": "x", metrics.ORIGIN_BAGGAGE_KEY: str(time_ns() // 1_000_000)}
    now_ns, carrier = time_ns(), {"traceparent": "00-…"}
    if name == "hook_consumed":
        return lambda: metrics.consumed("rabbitmq", "process", "bench", None, 1.0, False,
                                        baggage, now_ns, None, carrier)
    span = tracer_provider.get_tracer("bench").start_span("hop")
    otel_context.attach(trace.set_span_in_context(span))  # (for the rest of this run)
    record = (metrics.send_started("rabbitmq", "bench", None) if name == "hook_closed_send"
              else metrics.consumed("rabbitmq", "process", "bench", None, 1.0, False, None,
                                    now_ns, None, carrier))
    return lambda: metrics.closed(record, None)


def run_one(name: str, calls: int) -> None:
    """Run ``calls`` messages of variant ``name`` through ``starmap`` (what valgrind counts),
    or ``calls`` calls of one hook (a name in :data:`HOOKS`) in ``spans_metrics``."""
    import collections
    import itertools

    tracer_provider, meter_provider = _providers()
    floor = _floor_of(name)
    os.environ.pop("OTEL_PYTHON_METER_PROVIDER", None)
    message = _message(name)
    hooked = "spans_metrics_pathway" if name == "hook_stamp_origin" else "spans_metrics"
    with variant(hooked if name in HOOKS else name, tracer_provider, meter_provider, floor):
        loop_time(message, 300)  # warm: instruments, caches, bindings
        if name in HOOKS:
            message = _hook(name, tracer_provider)  # type: ignore[assignment]
        collections.deque(itertools.starmap(message, itertools.repeat((), calls)), maxlen=0)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    floor.provider.shutdown()


def instructions(names: tuple[str, ...], calls: int, jobs: int = 2) -> dict[str, int]:
    """Instructions per message of each variant, counted by callgrind (``jobs`` at a time)."""
    import re
    import subprocess

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=starmap_next", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--run", name, str(calls)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    counts: dict[str, int] = {}
    pending = list(names)
    while pending:
        batch, pending = pending[:jobs], pending[jobs:]
        procs = [(name, start(name)) for name in batch]
        for name, proc in procs:
            _, err = proc.communicate()
            found = re.search(r"Collected : (\d+)", err)
            if found is None:
                raise RuntimeError(f"callgrind gave no count for {name}: {err[-500:]}")
            counts[name] = int(found.group(1)) // calls
    return counts


def _floor_verdict(counts: dict[str, int]) -> dict[str, Any]:
    """The floor in instructions: its share of spans, and hoptrace's distance above it."""
    spans, floor, hop = counts["spans"], counts["floor"], counts["spans_metrics"]
    pct = round(100 * (floor - spans) / spans, 1)
    return {
        "floor_over_spans": floor - spans,
        "floor_over_spans_pct": pct,
        "reachable": pct < 10,  # (the floor alone at +10 % or more: target 6 out of reach)
        "hoptrace_over_floor": hop - floor,
        "hoptrace_over_floor_pct_of_spans": round(100 * (hop - floor) / spans, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer loops (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print, write no result file")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per message under callgrind")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time")
    parser.add_argument("--count", metavar="VARIANT,...",
                        help="only count these variants' instructions (no timing, no file)")
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_one(args.run[0], int(args.run[1]))
        return 0
    if args.count:
        names = tuple(args.count.split(","))
        counted = instructions(names, 500, args.jobs)
        spans = counted.get("spans")
        for name, count in counted.items():
            over = f"{100 * (count / spans - 1):+.1f} %" if spans else ""
            print(f"{name:<28}{count:>17,}{over:>12}")
        return 0
    loops, repeats = (500, 3) if args.quick else (args.loops, args.repeats)
    result = run(loops, repeats)
    print(f"{'variant':<28}{'median µs/msg':>14}{'min':>9}{'max':>9}")
    for name, figure in result["variants_us"].items():
        print(f"{name:<28}{figure['median_us']:>14.2f}{figure['min_us']:>9.2f}"
              f"{figure['max_us']:>9.2f}")
    print(f"{'overhead (from medians | from mins)':<36}")
    for key, value in result["overheads"].items():
        print(f"{key:<36}{value:>9.2f}{result['overheads_from_min'][key]:>9.2f}")
    if args.callgrind:
        counts = instructions(VARIANTS, 500, args.jobs)
        spans = counts["spans"]
        result["instructions_per_message"] = counts
        result["instructions_over_spans_pct"] = {
            name: round(100 * (counts[name] / spans - 1), 1) for name in OVER_SPANS
        }
        print(f"{'variant':<28}{'instructions/msg':>17}{'over spans':>12}")
        for name, count in counts.items():
            over = result["instructions_over_spans_pct"].get(name)
            print(f"{name:<28}{count:>17,}{'' if over is None else f'{over:+.1f} %':>12}")
        result["floor"] = floor = _floor_verdict(counts)
        print(f"floor (the SDK's least work for these metrics): {floor['floor_over_spans']:+,} "
              f"instructions per message = {floor['floor_over_spans_pct']:+.1f} % of spans "
              f"({'under' if floor['reachable'] else 'at or over'} the +10 % of target 6); "
              f"hoptrace above it: {floor['hoptrace_over_floor']:+,} = "
              f"{floor['hoptrace_over_floor_pct_of_spans']:+.1f} % of spans")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
