"""Per-message cost of hoptrace's metrics: one produce scope plus one consume scope, in-process.

Run with ``python bench/metrics_bench.py`` (``make bench`` calls it). No broker: the carrier
goes straight from the produce scope to the consume scope, so the figures are hoptrace's own
work per message. Variants, timed in turns within each repetition so that drift in the
machine's speed hits them alike:

* ``off_hooks_stubbed`` — no tracing SDK, no MeterProvider, and the metric hooks replaced by
  stubs that return at once: the floor for the next one;
* ``off`` — no tracing SDK and no MeterProvider (the API's proxy): what the metric hooks cost
  when metrics are off (``off`` minus ``off_hooks_stubbed``);
* ``metrics_api_noop`` — no tracing SDK; a MeterProvider whose instruments do nothing, so
  hoptrace does all its own metric work (attributes, tallies, origin) but the SDK none:
  hoptrace's own share is ``metrics_api_noop`` minus ``off``;
* ``metrics`` — no tracing SDK, an SDK MeterProvider with an InMemoryMetricReader;
* ``spans`` — SDK spans (BatchSpanProcessor, exporter drops them), no MeterProvider;
* ``spans_metrics`` — SDK spans and the SDK MeterProvider: the target is at most +10 % over
  ``spans`` (issue 15);
* ``spans_metrics_no_pathway`` — the same with ``hoptrace.pathway.duration`` switched off,
  which also drops the origin baggage entry from every message;
* ``spans_metrics_lean`` — also without ``messaging.client.operation.duration``: two
  histogram records per message instead of four;
* ``spans_metrics_sdk_record`` — ``spans_metrics`` with every histogram record going through
  the SDK's ``Histogram.record`` (hoptrace's lean histogram path switched off): the "before";
* ``floor`` — ``spans`` plus the same metrics recorded with no hoptrace metric code: the
  same SDK instruments (names, kinds, units, buckets; the SDK's default exemplar filter) in
  a MeterProvider of their own, fed through the OTel API beside the same scopes, with the
  attribute sets and the number of records per message that hoptrace makes (two counts as
  plain integers that observable counters report, four ``Histogram.record`` calls, two of
  them inside the span). The pathway's origin is held in a local, not carried on the wire,
  and the counts take no lock: a lower bound for any instrumentation that records these
  metrics through the SDK. ``check_floor`` verifies, before the timing, that it exports the
  same metrics, kinds, attribute sets and counts as hoptrace.

Writes bench/results/metrics.json. Every figure is the median over repetitions, with min/max.

``--callgrind`` also counts instructions per message for each variant under valgrind's
callgrind (counted only inside ``starmap_next``, the loop that runs the messages), which do
not move with the machine's load: ``--run VARIANT N`` is what valgrind runs.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
            "spans_metrics_no_pathway", "spans_metrics_lean", "spans_metrics_sdk_record", "floor")
#: What ``spans_metrics_lean`` switches off: two of the four histogram records per message.
LEAN = frozenset({"messaging.client.operation.duration", "hoptrace.pathway.duration"})


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

    def __init__(self, provider: MeterProvider) -> None:
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
        self.pathway = histogram(metrics.PATHWAY, metrics.LATENCY_BUCKETS)


_floor: Floor | None = None


def one_message_floor() -> None:
    """:func:`one_message` with hoptrace's metrics recorded through the OTel API directly.

    The records are made where hoptrace makes them: the send's count and duration and the
    processing duration inside their span (exemplars), the delivery's count, queue wait and
    pathway outside it.
    """
    floor = _floor
    assert floor is not None
    start = time.perf_counter_ns()
    with hoptrace.produce_scope(None, "bench", "rabbitmq") as send:
        headers = send.carrier
        origin_ns = time.time_ns()  # the transaction's start (hoptrace carries it as baggage)
        floor.sent[0] += 1
        floor.operation.record((time.perf_counter_ns() - start) / 1e9, SEND_ATTRS)
    with hoptrace.consume_scope(headers, "bench", "rabbitmq") as scope:
        start = time.perf_counter_ns()
        floor.process.record((time.perf_counter_ns() - start) / 1e9, PROCESS_ATTRS)
    floor.consumed[0] += 1
    if scope.queue_wait_ms is not None:
        floor.queue_wait.record(scope.queue_wait_ms / 1e3, PROCESS_ATTRS)
    floor.pathway.record(max(0, time.time_ns() - origin_ns) / 1e9, PROCESS_ATTRS)


def _message(name: str) -> Callable[[], None]:
    return one_message_floor if name == "floor" else one_message


_STUB = types.SimpleNamespace(
    stamp_origin=lambda ctx: ctx,
    send_started=lambda *args: None,
    consumed=lambda *args: None,
    closed=lambda *args: None,
    Record=metrics.Record,
)


@contextmanager
def variant(name: str, tracer_provider: Any, meter_provider: Any,
            floor: Floor | None = None) -> Iterator[None]:
    """Install the providers and settings of ``name``; restore the defaults after."""
    global _floor
    previous = getattr(trace, "_TRACER_PROVIDER")  # noqa: B009 - the API's private global
    spans = name.startswith("spans") or name == "floor"
    if name == "floor":
        _floor = floor
    setattr(trace, "_TRACER_PROVIDER", tracer_provider if spans else None)  # noqa: B010
    if name == "metrics_api_noop":
        metrics.use_meter_provider(NoOpInstrumentsProvider())
    elif "metrics" in name:
        metrics.use_meter_provider(meter_provider)
    if name.endswith("no_pathway"):
        _config.configure(disabled_metrics={metrics.PATHWAY})
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
    floor_reader = InMemoryMetricReader()
    floor_provider = MeterProvider(metric_readers=[floor_reader])
    floor = Floor(floor_provider)
    os.environ.pop("OTEL_PYTHON_METER_PROVIDER", None)
    check_floor(tracer_provider)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name in VARIANTS:  # warm up: instruments, caches, the edge's attribute dict
        with variant(name, tracer_provider, meter_provider, floor):
            loop_time(_message(name), min(loops, 2000))
    for _ in range(repeats):
        for name in VARIANTS:
            with variant(name, tracer_provider, meter_provider, floor):
                samples[name].append(loop_time(_message(name), loops))
    reader.get_metrics_data()  # the readers really hold the points
    floor_reader.get_metrics_data()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    floor_provider.shutdown()

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
        "metrics_no_pathway_over_spans_pct": 100 * (
            median("spans_metrics_no_pathway") / median("spans") - 1),
        "metrics_lean_over_spans_pct": 100 * (
            median("spans_metrics_lean") / median("spans") - 1),
        "metrics_sdk_record_over_spans_pct": 100 * (
            median("spans_metrics_sdk_record") / median("spans") - 1),
        "floor_over_spans_us": median("floor") - median("spans"),
        "floor_over_spans_pct": 100 * (median("floor") / median("spans") - 1),
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
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=1 << 20,
                                                          schedule_delay_millis=100))
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
                     bool(p.exemplars))  # (spans: the same records keep an exemplar)
                    for p in metric.data.data_points)
                bounds = {tuple(getattr(p, "explicit_bounds", ())) for p in metric.data.data_points}
                kind = metric.data
                out[metric.name] = (type(kind).__name__, metric.unit,
                                    getattr(kind, "is_monotonic", None),
                                    str(getattr(kind, "aggregation_temporality", None)), bounds,
                                    points)
    return out


def check_floor(tracer_provider: Any, messages: int = 20) -> None:
    """Raise unless ``floor`` exports what hoptrace does: names, kinds, attribute sets, counts
    and which points keep exemplars (the SDK's default filter, records in the same contexts).
    """
    hop_reader, floor_reader = InMemoryMetricReader(), InMemoryMetricReader()
    hop_provider = MeterProvider(metric_readers=[hop_reader])
    floor_provider = MeterProvider(metric_readers=[floor_reader])
    with variant("spans_metrics", tracer_provider, hop_provider):
        for _ in range(messages):
            one_message()
    with variant("floor", tracer_provider, None, Floor(floor_provider)):
        for _ in range(messages):
            one_message_floor()
    got, want = _exported(floor_reader), _exported(hop_reader)
    hop_provider.shutdown()
    floor_provider.shutdown()
    if got != want:
        raise AssertionError(f"the floor exports other metrics than hoptrace:\n{got}\n{want}")


def run_one(name: str, calls: int) -> None:
    """Run ``calls`` messages of variant ``name`` through ``starmap`` (what valgrind counts)."""
    import collections
    import itertools

    tracer_provider, meter_provider = _providers()
    floor_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    os.environ.pop("OTEL_PYTHON_METER_PROVIDER", None)
    message = _message(name)
    with variant(name, tracer_provider, meter_provider, Floor(floor_provider)):
        loop_time(message, 300)  # warm: instruments, caches, bindings
        collections.deque(itertools.starmap(message, itertools.repeat((), calls)), maxlen=0)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    floor_provider.shutdown()


def instructions(names: tuple[str, ...], calls: int) -> dict[str, int]:
    """Instructions per message of each variant, counted by callgrind (two at a time)."""
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
        batch, pending = pending[:2], pending[2:]
        procs = [(name, start(name)) for name in batch]
        for name, proc in procs:
            _, err = proc.communicate()
            found = re.search(r"Collected : (\d+)", err)
            if found is None:
                raise RuntimeError(f"callgrind gave no count for {name}: {err[-500:]}")
            counts[name] = int(found.group(1)) // calls
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer loops (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print, write no result file")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per message under callgrind")
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_one(args.run[0], int(args.run[1]))
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
        counts = instructions(VARIANTS, 500)
        spans = counts["spans"]
        result["instructions_per_message"] = counts
        result["instructions_over_spans_pct"] = {
            name: round(100 * (count / spans - 1), 1)
            for name, count in counts.items() if name.startswith("spans_") or name == "floor"
        }
        print(f"{'variant':<28}{'instructions/msg':>17}{'over spans':>12}")
        for name, count in counts.items():
            over = result["instructions_over_spans_pct"].get(name)
            print(f"{name:<28}{count:>17,}{'' if over is None else f'{over:+.1f} %':>12}")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
