"""The edge shortcut of the metric hooks exports exactly what the general path exports.

A hook finds its edge (``metrics._Edge``) and, once bound, counts through the edge's own
count cell and records through the one SDK aggregation bound for the edge's attributes
(``_sdk_metrics.record_one``). The general path counts through the tally's ``add`` and
records through the SDK's ``Histogram.record``. Each test drives the hooks with the same
inputs twice, once each way, under the same fake clock, and compares what the readers
export: names, descriptions, units, kinds, temporality, attributes, counts, sums, min, max,
bucket bounds and counts, and exemplars with their values, attributes and span and trace
IDs (not their timestamps, which no two runs share).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.metrics import NoOpMeter
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import DropAggregation, View
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from test_metrics_lean import DELTA_RESETS, snapshot

from hoptrace.core import _sdk_metrics, metrics

DELTA: dict[type, AggregationTemporality] = {Histogram: AggregationTemporality.DELTA}


@pytest.fixture(autouse=True)
def _pathway_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metric on, the opt-in pathway too, through any later configure()."""
    from hoptrace import _config

    monkeypatch.setenv("HOPTRACE_ENABLED_METRICS", "*")
    _config.reset()


class CountingIds(IdGenerator):
    """Span and trace IDs that both runs of a comparison get alike (reset before each)."""

    def __init__(self) -> None:
        self.next = 1

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return self.next << 64


_ids = CountingIds()
_sdk_tracer = TracerProvider(id_generator=_ids).get_tracer("edges")

#: Edges as the scopes name them: (system, operation, destination, extra attributes).
EDGES: list[tuple[str, str, str, Any]] = [
    ("rabbitmq", "process", "shop:orders:q", None),
    ("rabbitmq", "process", "shop:amq.gen-Xy1", None),
    ("rabbitmq", "process", "shop:amq.gen-Zz9", None),  # (folds with the one above)
    ("kafka", "process", "orders", {"messaging.consumer.group.name": "g1"}),
    ("kafka", "receive", "orders", {"messaging.consumer.group.name": "g1"}),
    ("kafka", "process", "orders", lambda: {"server.address": "b1", "server.port": 9092}),
    ("celery", "process", "tasks", {"celery.task.name": "add", "messaging.destination.name": "q"}),
    ("redis", "process", "jobs", {"server.port": True}),  # (a bool is no port)
]
SENDS: list[tuple[str, str, Any]] = [
    ("rabbitmq", "shop:orders", None),
    ("kafka", "orders", {"server.address": "b1", "server.port": 9092}),
    ("kafka", "orders", None),
]
#: Queue waits (ms): on, under and over the latency buckets' bounds, zero, huge, hostile.
WAITS: list[float | None] = [
    None, 0.0, -0.0, 5e-321, 0.1, 0.25, math.nextafter(0.25, 0.0), 2.5, 1000.0, 600_000.0,
    1e12, math.inf, math.nan, 7,
]
#: Durations (ns) the fake clock hands out between a start and an end.
DURATIONS_NS = [0, 1, 5_000_000, 5_000_001, 4_999_999, 10_000_000, 250_000_000,
                1_000_000_000, 10_000_000_000, 20_000_000_000, 123_456]


def _shortcut_possible() -> bool:
    """Whether the installed SDK lets the hooks record directly (a known shape with the
    meter's enabled flag readable: opentelemetry-sdk 1.41 to 1.45)."""
    histogram = MeterProvider().get_meter("probe").create_histogram("probe")
    lean = _sdk_metrics.lean_histogram(histogram)
    return isinstance(lean, _sdk_metrics.LeanHistogram) and lean.enabled is not None


SHORTCUT = _shortcut_possible()


class FakeClock:
    """``perf_counter_ns`` that moves on by the next chosen duration at each reading."""

    def __init__(self, seed: int) -> None:
        self.now = 10**12
        self.rng = random.Random(seed)

    def __call__(self) -> int:
        self.now += self.rng.choice(DURATIONS_NS)
        return self.now


@contextmanager
def current(kind: str) -> Iterator[None]:
    """Run the block with a sampled span, an unsampled one, the invalid span, or none."""
    if kind == "none":
        yield
        return
    if kind == "invalid":
        span: Any = trace.INVALID_SPAN
    else:
        # Fixed IDs: the exemplars of both runs must carry the same span and trace IDs.
        flags = trace.TraceFlags(0 if kind == "unsampled" else 1)
        span = trace.NonRecordingSpan(trace.SpanContext(0xABC0 + len(kind), 0xDEF, False, flags))
        if kind == "sdk":  # (an SDK span, sampled, child of the one above)
            span = _sdk_tracer.start_span("hop", context=trace.set_span_in_context(span))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def baggage_for(rng: random.Random, now_ms: int) -> Any:
    return rng.choice([
        None, {}, {"hoptrace.origin_ms": str(now_ms - 1500)},
        {"hoptrace.origin_ms": str(now_ms - 1500)}, {"hoptrace.origin_ms": str(now_ms + 10)},
        {"hoptrace.origin_ms": "12x"}, {"hoptrace.origin_ms": "0"},
        {"hoptrace.origin_ms": str(now_ms - 40 * 24 * 3600 * 1000)}, {"other": "1"},
    ])


def drive(seed: int, messages: int, collect: Callable[[], None] | None = None) -> None:
    """Feed the hooks ``messages`` deliveries and sends, chosen by ``seed``."""
    rng = random.Random(seed)
    now_ns = 1_700_000_000_000_000_000
    for i in range(messages):
        now_ns += 1_000_000
        with current(rng.choice(["sampled", "unsampled", "none", "invalid", "sdk"])):
            system, destination, extra = rng.choice(SENDS)
            record = metrics.send_started(system, destination, extra)
            failed = rng.random() < 0.1
        with current(rng.choice(["sampled", "none", "sdk"])):
            metrics.closed(record, KeyError("x") if failed else None)
        system, operation, destination, extra = rng.choice(EDGES)
        with current(rng.choice(["none", "sampled", "unsampled"])):
            record = metrics.consumed(
                system, operation, destination, extra, rng.choice(WAITS), rng.random() < 0.1,
                baggage_for(rng, now_ns // 1_000_000), now_ns, rng.choice([None, False, True]),
                rng.choice([{}, {"x-death": [{"count": 1}]}, None, [("a", b"b")]]))
        with current(rng.choice(["sampled", "unsampled", "sdk"])):
            if rng.random() < 0.05:
                metrics.retried(record)
            if rng.random() < 0.05:
                metrics.dead_lettered(record, "rejected")
            metrics.closed(record, ValueError("y") if rng.random() < 0.1 else None)
        if collect is not None and i % 37 == 36:
            collect()


@contextmanager
def general_path(on: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With ``on``: no edge shortcut (tallies' ``add``, the SDK's ``Histogram.record``)."""
    with monkeypatch.context() as patch:
        if on:
            patch.setattr(_sdk_metrics, "_known", ("the general path, for the comparison", False))
            patch.setattr(metrics, "_ATOMIC_NEXT", False)
        metrics._reset()
        _ids.next = 1
        try:
            yield
        finally:
            metrics.use_meter_provider(None)
            metrics._reset()


def run_both(
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], tuple[Any, list[InMemoryMetricReader]]],
    seed: int,
    messages: int = 300,
    collect_midway: bool = False,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Exports of the shortcut run, of the general run, and the shortcut run's live edges."""
    out: list[list[Any]] = []
    bound: list[Any] = []
    for general in (False, True):
        provider, readers = make()
        midway: list[Any] = []
        with general_path(general, monkeypatch):
            monkeypatch.setattr(metrics, "_perf_counter_ns", FakeClock(seed))
            metrics.use_meter_provider(provider)
            def collect(readers: list[Any] = readers, midway: list[Any] = midway) -> None:
                midway.append([snapshot(r) for r in readers])

            drive(seed, messages, collect if collect_midway else None)
            if not general:
                bound = [edge for edge in metrics._edges.values()
                         if edge.operation is not None or edge.process is not None]
            midway.append([snapshot(r) for r in readers])
        out.append(midway)
        provider.shutdown()
    return out[0], out[1], bound


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shortcut_exports_what_the_general_path_exports(
    exemplar_filter: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)

    def make() -> tuple[Any, list[InMemoryMetricReader]]:
        readers = [InMemoryMetricReader()]
        return MeterProvider(metric_readers=readers), readers

    got, want, bound = run_both(monkeypatch, make, seed)
    assert repr(got) == repr(want)
    names = {m[0] for m in got[-1][0]}
    assert {metrics.SENT_MESSAGES, metrics.CONSUMED_MESSAGES, metrics.OPERATION_DURATION,
            metrics.PROCESS_DURATION, metrics.QUEUE_WAIT, metrics.PATHWAY} <= names
    exemplars = [e for m in got[-1][0] for p in m[5] for e in p.get("exemplars", ())]
    assert bool(exemplars) == (exemplar_filter != "always_off")
    if exemplar_filter != "always_on":  # (always-on: a filter the shortcut leaves to the SDK)
        assert bool(bound) == SHORTCUT, "the shortcut was never taken"


def test_delta_readers_collected_midway_and_two_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, list[InMemoryMetricReader]]:
        readers = [InMemoryMetricReader(preferred_temporality=DELTA), InMemoryMetricReader()]
        return MeterProvider(metric_readers=readers), readers

    got, want, _ = run_both(monkeypatch, make, seed=7, collect_midway=True)
    assert len(got) > 5 and repr(got) == repr(want)


def test_one_delta_reader_collected_midway_takes_the_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> tuple[Any, list[InMemoryMetricReader]]:
        readers = [InMemoryMetricReader(preferred_temporality=DELTA)]
        return MeterProvider(metric_readers=readers), readers

    got, want, bound = run_both(monkeypatch, make, seed=8, collect_midway=True)
    # (SDK 1.45.2+ drops a delta reader's aggregations at each collection: nothing is bound,
    # every record takes the SDK's way; test_metrics_lean.DELTA_RESETS)
    assert repr(got) == repr(want) and bool(bound) == (SHORTCUT and not DELTA_RESETS)


@pytest.mark.parametrize("views", ["drop", "rename", "filter_attributes", "drop_one_edge"])
def test_views_that_drop_or_rename_instruments(views: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = {
        "drop": [View(instrument_name=metrics.QUEUE_WAIT, aggregation=DropAggregation())],
        "rename": [View(instrument_name=metrics.PROCESS_DURATION, name="renamed.process")],
        "filter_attributes": [View(instrument_name="*",
                                   attribute_keys={"messaging.system", "error.type"})],
        "drop_one_edge": [View(instrument_name=metrics.OPERATION_DURATION,
                               aggregation=DropAggregation()),
                          View(instrument_name=metrics.PATHWAY, name="pathway.again"),
                          View(instrument_name=metrics.PATHWAY)],
    }[views]

    def make() -> tuple[Any, list[InMemoryMetricReader]]:
        readers = [InMemoryMetricReader()]
        return MeterProvider(metric_readers=readers, views=chosen), readers

    got, want, _ = run_both(monkeypatch, make, seed=11)
    assert repr(got) == repr(want)
    names = {m[0] for m in got[-1][0]}
    assert (metrics.QUEUE_WAIT in names) == (views != "drop")
    assert ("renamed.process" in names) == (views == "rename")


class ListingProvider(ApiMeterProvider):
    """A MeterProvider that is not the SDK's: its instruments list every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, Any]]] = []
        self.callbacks: dict[str, Any] = {}

    def counts(self) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """What each observable counter reports now."""
        return {name: [(o.value, dict(o.attributes)) for o in callback(None)]
                for name, callback in self.callbacks.items()}

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        calls, callbacks = self.calls, self.callbacks

        class Instrument:
            def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
                self.name = name

            def record(self, amount: float, attributes: Any = None, context: Any = None) -> None:
                calls.append((self.name, amount, dict(attributes or {})))

        class Meter(NoOpMeter):
            def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
                return Instrument(name)

            def create_observable_counter(self, name: str, callbacks: Any = None,
                                          *args: Any, **kwargs: Any) -> Any:
                (callbacks_[name],) = callbacks
                return super().create_observable_counter(name, callbacks, *args, **kwargs)

        callbacks_ = callbacks

        return Meter(name)


def test_a_provider_not_the_sdk_s_gets_every_record(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    for general in (False, True):
        provider = ListingProvider()
        with general_path(general, monkeypatch):
            monkeypatch.setattr(metrics, "_perf_counter_ns", FakeClock(5))
            metrics.use_meter_provider(provider)
            drive(5, 200)
        seen.append(provider.calls)
    assert repr(seen[0]) == repr(seen[1]) and len(seen[0]) > 400
    assert {name for name, _, _ in seen[0]} == {
        metrics.OPERATION_DURATION, metrics.PROCESS_DURATION, metrics.QUEUE_WAIT, metrics.PATHWAY}


def test_providers_not_the_sdk_s_swapped_keep_their_own_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No storages tell these providers apart: each edge's count cells are its provider's.
    out = []
    for general in (False, True):
        first, second = ListingProvider(), ListingProvider()
        with general_path(general, monkeypatch):
            monkeypatch.setattr(metrics, "_perf_counter_ns", FakeClock(6))
            for provider, seed in ((first, 1), (second, 2), (first, 3)):
                metrics.use_meter_provider(provider)
                drive(seed, 50)
        out.append((first.counts(), second.counts(), first.calls, second.calls))
    assert repr(out[0]) == repr(out[1])
    assert sum(v for v, _ in out[0][1][metrics.SENT_MESSAGES]) == 50


def test_global_provider_swapped_at_runtime_and_metrics_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The global provider (what set_meter_provider sets) changes between messages: the
    # edges bound to the first provider's aggregations must not feed them any more.
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    out = []
    for general in (False, True):
        first_readers, second_readers = [InMemoryMetricReader()], [InMemoryMetricReader()]
        first = MeterProvider(metric_readers=first_readers)
        second = MeterProvider(metric_readers=second_readers)
        with general_path(general, monkeypatch):
            monkeypatch.setattr(metrics, "_perf_counter_ns", FakeClock(9))
            metrics.use_meter_provider(None)
            monkeypatch.setattr(metrics_api, "_METER_PROVIDER", first)
            drive(9, 120)
            monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)  # metrics off
            assert metrics.send_started("kafka", "orders", None) is None
            drive(10, 30)
            monkeypatch.setattr(metrics_api, "_METER_PROVIDER", second)
            drive(11, 120)
            monkeypatch.setattr(metrics_api, "_METER_PROVIDER", first)
            drive(12, 60)
            out.append([snapshot(r) for r in first_readers + second_readers])
        first.shutdown()
        second.shutdown()
    assert repr(out[0]) == repr(out[1])
    counts = {m[0]: sum(p.get("value", 0) for p in m[5]) for m in out[0][1]}
    assert counts[metrics.SENT_MESSAGES] == 120


@pytest.mark.parametrize("change", ["reader_added", "meter_switched_off"])
def test_a_reader_added_or_the_meter_switched_off(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the edges were bound: a reader added (new storages, two aggregations per edge
    # from then on), or the meter switched off and on again. The bound aggregations must be
    # left for the general path (and bound again when they are one more).
    out = []
    for general in (False, True):
        readers = [InMemoryMetricReader()]
        provider = MeterProvider(metric_readers=readers)
        with general_path(general, monkeypatch):
            monkeypatch.setattr(metrics, "_perf_counter_ns", FakeClock(13))
            metrics.use_meter_provider(provider)
            drive(13, 80)
            if change == "reader_added":
                add = getattr(provider, "add_metric_reader", None)  # (SDK 1.4x)
                if add is None:
                    pytest.skip("this SDK cannot add a reader")
                added = InMemoryMetricReader()
                add(added)
                readers.append(added)
            else:
                switch = getattr(provider, "_set_meter_configurator", None)
                if switch is None:
                    pytest.skip("this SDK cannot switch a meter off")
                from opentelemetry.sdk.metrics._internal import _MeterConfig
                switch(meter_configurator=lambda scope: _MeterConfig(is_enabled=False))
                drive(15, 40)
                switch(meter_configurator=lambda scope: _MeterConfig(is_enabled=True))
            drive(16, 80)
            out.append([snapshot(r) for r in readers])
        provider.shutdown()
    assert repr(out[0]) == repr(out[1])


def test_count_cells_and_tallies_land_in_one_point(monkeypatch: pytest.MonkeyPatch) -> None:
    # An edge's count cell and the tally's add (an equal dict built elsewhere, a retry's
    # dict) report one cumulative point per attribute set, in first-seen order.
    metrics._reset()
    tally = metrics._Tally()
    edge = metrics.edge_attributes("kafka", "send", "cells", None)
    tally.add(1, edge)
    cell = tally.counter(edge)
    assert cell is not None and tally.counter(edge) is cell
    for _ in range(4):
        next(cell)
    tally.add(2, dict(edge))
    assert [(o.value, o.attributes) for o in tally.observe()] == [(7, edge)]
    next(cell)
    assert [(o.value, o.attributes) for o in tally.observe()] == [(8, edge)]
    assert tally.counter(dict(edge)) is None  # (not an edge's cached dict: no cell)
    monkeypatch.setattr(metrics, "_ATOMIC_NEXT", False)
    assert tally.counter(edge) is None  # (no GIL: every count takes the lock)


def test_edges_and_cells_stay_bounded_with_many_destinations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past _MAX_EDGES the edges are not cached and get no count cell; their counts still
    # land (through the tally's add), and nothing grows past the caps.
    monkeypatch.setattr(metrics, "_MAX_EDGES", 20)
    readers = [InMemoryMetricReader()]
    provider = MeterProvider(metric_readers=readers)
    metrics._reset()
    metrics.use_meter_provider(provider)
    try:
        for i in range(60):
            for _ in range(2):
                record = metrics.send_started("kafka", f"topic-{i}", None)
                metrics.closed(record, None)
        live = metrics._instruments()
        assert live is not None
        assert len(metrics._edges) == 20 and len(metrics._tally_keys) == 20
        assert len(live.tallies["sent"]._counters) <= 20
        points = next(m for m in snapshot(readers[0]) if m[0] == metrics.SENT_MESSAGES)[5]
        assert len(points) == 60 and all(p["value"] == 2 for p in points)
    finally:
        metrics.use_meter_provider(None)
        metrics._reset()
        provider.shutdown()


def test_threads_sharing_edges_lose_no_count_or_record() -> None:
    # Count cells (next() without a lock) and direct records (under the aggregation's
    # lock) from several threads at once: every message is counted and recorded once.
    import threading

    readers = [InMemoryMetricReader()]
    provider = MeterProvider(metric_readers=readers)
    metrics._reset()
    metrics.use_meter_provider(provider)
    per_thread, threads = 3000, 4

    def work() -> None:
        for i in range(per_thread):
            record = metrics.send_started("kafka", f"t{i % 3}", None)
            metrics.closed(record, None)
            record = metrics.consumed("kafka", "process", f"t{i % 3}", None, 1.0, False, None,
                                      0, None, None)
            metrics.closed(record, None)

    try:
        running = [threading.Thread(target=work) for _ in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
        exported = {m[0]: m[5] for m in snapshot(readers[0])}
        for name in (metrics.SENT_MESSAGES, metrics.CONSUMED_MESSAGES):
            assert sum(p["value"] for p in exported[name]) == per_thread * threads, name
        for name in (metrics.OPERATION_DURATION, metrics.PROCESS_DURATION, metrics.QUEUE_WAIT):
            assert sum(p["count"] for p in exported[name]) == per_thread * threads, name
            assert all(sum(p["bucket_counts"]) == p["count"] for p in exported[name])
        assert any(edge.sent is not None for edge in metrics._edges.values())
    finally:
        metrics.use_meter_provider(None)
        metrics._reset()
        provider.shutdown()
