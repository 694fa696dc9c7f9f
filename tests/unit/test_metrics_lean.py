"""The lean histogram path exports exactly what the SDK's own ``Histogram.record`` exports.

Each test builds two MeterProviders alike: one records through
:class:`hoptrace.core._sdk_metrics.LeanHistogram`, the other through ``Histogram.record``. The
same values go to both, with the same attribute dicts, in the same contexts (a sampled span,
an unsampled one, none), and the collected data must be equal: names, descriptions, units,
temporality, attributes, bucket bounds and counts, sum, min, max, count and exemplars (all but
timestamps, which no two collections share).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal import _view_instrument_match
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import (
    DropAggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import hoptrace
from hoptrace.core import _sdk_metrics, metrics

BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0]
SEND = {"messaging.system": "rabbitmq", "messaging.operation.name": "send",
        "messaging.destination.name": "shop:orders", "server.port": 5672}
RECV = {"messaging.system": "kafka", "messaging.operation.name": "process",
        "messaging.destination.name": "orders", "messaging.consumer.group.name": "g1"}
VALUES = [0.0, 0.001, 0.004, 0.005, 0.0051, 0.02, 0.3, 0.3, 1.0, 7.5, 12.0, 600.0]
#: Whether the installed SDK offers exemplars (1.28 and later).
EXEMPLARS = _sdk_metrics._shape()[1]
DELTA: dict[type, AggregationTemporality] = {Histogram: AggregationTemporality.DELTA}
#: Whether the SDK drops a delta reader's aggregations at each collection (1.45.2 and
#: later): no binding survives one, so every record for such a reader goes the SDK's way.
DELTA_RESETS = "reset_on_collect" in inspect.signature(
    _view_instrument_match._ViewInstrumentMatch.__init__).parameters


@pytest.fixture(autouse=True)
def _pathway_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metric on, the opt-in pathway too, through any later configure()."""
    from hoptrace import _config

    monkeypatch.setenv("HOPTRACE_ENABLED_METRICS", "*")
    _config.reset()

_sampled = TracerProvider().get_tracer("test")
_unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")


@contextmanager
def active(kind: str) -> Iterator[None]:
    """Run the block with a sampled span, an unsampled one, or none current."""
    if kind == "none":
        yield
        return
    tracer = _sampled if kind == "sampled" else _unsampled
    span = tracer.start_span("hop")
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)
        span.end()


def snapshot(reader: InMemoryMetricReader) -> list[Any]:
    """What the reader exports, timestamps left out, in a comparable order."""
    data = reader.get_metrics_data()
    out: list[Any] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = []
                for p in metric.data.data_points:
                    row: dict[str, Any] = {"attributes": dict(p.attributes or {})}
                    for field in ("count", "sum", "min", "max", "bucket_counts", "explicit_bounds",
                                  "scale", "zero_count", "positive", "negative", "value"):
                        if hasattr(p, field):
                            row[field] = getattr(p, field)
                    row["exemplars"] = [
                        (e.value, dict(e.filtered_attributes or {}), e.span_id, e.trace_id)
                        for e in getattr(p, "exemplars", ())
                    ]
                    points.append(row)
                points.sort(key=lambda row: sorted(map(str, row["attributes"].items())))
                out.append((metric.name, metric.description, metric.unit,
                            type(metric.data).__name__,
                            getattr(metric.data, "aggregation_temporality", None), points))
    return sorted(out, key=lambda m: m[0])


class Pair:
    """Two providers alike: ``lean`` records through LeanHistogram, ``sdk`` through record."""

    def __init__(self, readers: Callable[[], list[InMemoryMetricReader]], **kwargs: Any) -> None:
        self.lean_readers, self.sdk_readers = readers(), readers()
        self.lean_provider = MeterProvider(metric_readers=self.lean_readers, **kwargs)
        self.sdk_provider = MeterProvider(metric_readers=self.sdk_readers, **kwargs)
        self.lean: list[Any] = []
        self.sdk: list[Any] = []

    def histogram(self, name: str) -> tuple[Any, Any]:
        made = []
        for provider in (self.lean_provider, self.sdk_provider):
            meter = provider.get_meter("hoptrace")
            try:
                made.append(meter.create_histogram(
                    name, unit="s", description="d", explicit_bucket_boundaries_advisory=BUCKETS))
            except TypeError:  # API < 1.23: the default buckets
                made.append(meter.create_histogram(name, unit="s", description="d"))
        lean = _sdk_metrics.lean_histogram(made[0])
        assert isinstance(lean, _sdk_metrics.LeanHistogram), "the installed SDK is a known shape"
        self.lean.append(lean)
        return lean, made[1].record

    def record(self, pair: tuple[Any, Any], value: float, attrs: dict[str, Any]) -> None:
        pair[0](value, attrs)
        pair[1](value, attrs)

    def compare(self) -> list[Any]:
        got = [snapshot(r) for r in self.lean_readers]
        want = [snapshot(r) for r in self.sdk_readers]
        assert repr(got) == repr(want)  # (repr: a NaN sum, recorded by SDKs before 1.44)
        return got

    def lean_was_used(self) -> None:
        assert any(h._bindings for h in self.lean), "the lean path never bound an attribute set"

    def close(self) -> None:
        self.lean_provider.shutdown()
        self.sdk_provider.shutdown()


def feed(pair: Pair, histograms: list[tuple[Any, Any]], kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        with active(kind):
            for h in histograms:
                for value in VALUES:
                    pair.record(h, value, SEND)
                    pair.record(h, value / 3, RECV)


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
def test_same_points_and_exemplars(
    temporality: str, exemplar_filter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)
    preferred = DELTA if temporality == "delta" else None
    pair = Pair(lambda: [InMemoryMetricReader(preferred_temporality=preferred)])
    try:
        hs = [pair.histogram("hoptrace.queue_wait"), pair.histogram("messaging.process.duration")]
        feed(pair, hs, ("sampled", "none", "unsampled"))
        first = pair.compare()
        feed(pair, hs, ("unsampled", "sampled"))  # a second collection: delta starts again
        second = pair.compare()
        pair.lean_was_used()
        points = [p for metric in first[0] for p in metric[5]]
        assert sum(p["count"] for p in points) == 2 * 2 * 3 * len(VALUES)
        assert second[0] != first[0] or temporality == "cumulative"
        exemplars = [e for p in points for e in p["exemplars"]]
        assert bool(exemplars) == (EXEMPLARS and exemplar_filter != "always_off")
    finally:
        pair.close()


def test_views_rename_drop_rebucket_and_filter_attributes() -> None:
    views = [
        View(instrument_name="hoptrace.queue_wait", name="renamed.wait",
             aggregation=ExplicitBucketHistogramAggregation([0.01, 1.0, 100.0])),
        View(instrument_name="hoptrace.queue_wait", name="wait.by.system",
             attribute_keys={"messaging.system"}),
        View(instrument_name="hoptrace.pathway.duration", aggregation=DropAggregation()),
        View(instrument_name="messaging.process.duration",
             aggregation=ExponentialBucketHistogramAggregation(max_size=20)),
    ]
    pair = Pair(lambda: [InMemoryMetricReader()], views=views)
    try:
        hs = [pair.histogram(n) for n in ("hoptrace.queue_wait", "hoptrace.pathway.duration",
                                          "messaging.process.duration")]
        feed(pair, hs, ("sampled", "none"))
        got = pair.compare()
        pair.lean_was_used()
        names = {metric[0] for metric in got[0]}
        assert names == {"renamed.wait", "wait.by.system", "messaging.process.duration"}
        by_system = next(m for m in got[0] if m[0] == "wait.by.system")[5]
        assert [p["attributes"] for p in by_system] == [{"messaging.system": "kafka"},
                                                        {"messaging.system": "rabbitmq"}]
        # The exemplars keep the attributes the View filtered out of the point.
        assert any(e[1].get("messaging.destination.name") for p in by_system
                                for e in p["exemplars"]) == EXEMPLARS
    finally:
        pair.close()


def test_two_readers_and_a_reader_added_later() -> None:
    pair = Pair(lambda: [InMemoryMetricReader(),
                         InMemoryMetricReader(preferred_temporality=DELTA)])
    try:
        hs = [pair.histogram("hoptrace.queue_wait")]
        feed(pair, hs, ("sampled",))
        pair.compare()
        late = InMemoryMetricReader(), InMemoryMetricReader()
        if not hasattr(pair.lean_provider, "add_metric_reader"):  # pragma: no cover - SDK < 1.43
            return
        pair.lean_provider.add_metric_reader(late[0])
        pair.sdk_provider.add_metric_reader(late[1])
        feed(pair, hs, ("none", "sampled"))
        pair.compare()
        assert snapshot(late[0]) == snapshot(late[1])
        assert sum(p["count"] for m in snapshot(late[0]) for p in m[5]) == 2 * 2 * len(VALUES)
        pair.lean_was_used()
    finally:
        pair.close()


def test_values_the_sdk_refuses_go_its_way() -> None:
    pair = Pair(lambda: [InMemoryMetricReader()])
    try:
        h = pair.histogram("hoptrace.queue_wait")
        pair.record(h, 0.5, SEND)  # binds
        for value in (-1.0, math.inf, math.nan, 0.25):
            pair.record(h, value, SEND)
        got = pair.compare()
        assert got[0][0][5][0]["count"] >= 2  # (before 1.44 the SDK records inf and NaN too)
    finally:
        pair.close()


def test_aggregations_not_found_exactly_take_the_sdk_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searches: list[object] = []
    find = _sdk_metrics.LeanHistogram._find

    def counted(self: Any, storages: Any, attributes: Any) -> Any:
        searches.append(attributes)
        find(self, storages, attributes)
        return None  # as if two aggregations had matched

    monkeypatch.setattr(_sdk_metrics.LeanHistogram, "_find", counted)
    pair = Pair(lambda: [InMemoryMetricReader()])
    try:
        h = pair.histogram("hoptrace.queue_wait")
        feed(pair, [h], ("sampled", "none"))
        got = pair.compare()
        assert sum(p["count"] for p in got[0][0][5]) == 2 * 2 * len(VALUES)
        assert searches == [SEND, RECV]  # searched once per dict, not at every record
    finally:
        pair.close()


def test_unknown_shape_falls_back_to_record(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    h = provider.get_meter("hoptrace").create_histogram("h")
    monkeypatch.setattr(_sdk_metrics, "_known", ("a shape it does not know", False))
    assert _sdk_metrics.lean_histogram(h) == h.record
    monkeypatch.setattr(_sdk_metrics, "_known", None)
    monkeypatch.setattr(h, "record", lambda *a, **k: None)  # someone wrapped this instrument
    assert not isinstance(_sdk_metrics.lean_histogram(h), _sdk_metrics.LeanHistogram)
    provider.shutdown()


def run_hops(provider: MeterProvider) -> Any:
    """Thirty hops over three edges, a seventh of the handlers failing; the live instruments."""
    metrics.use_meter_provider(provider)
    try:
        for i in range(30):
            with hoptrace.produce_scope(None, f"shop:q{i % 3}", "rabbitmq") as send:
                carrier = send.carrier
            try:
                with hoptrace.consume_scope(carrier, f"shop:q{i % 3}", "rabbitmq"):
                    if i % 7 == 0:
                        raise KeyError("handler failed")
            except KeyError:
                pass
        return metrics._instruments()
    finally:
        metrics.use_meter_provider(None)


def test_hoptrace_scopes_export_the_same_with_and_without_the_lean_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lean_reader, sdk_reader = InMemoryMetricReader(), InMemoryMetricReader()
    lean_provider = MeterProvider(metric_readers=[lean_reader])
    sdk_provider = MeterProvider(metric_readers=[sdk_reader])
    live = run_hops(lean_provider)
    lean = getattr(live.process, "__self__", None)  # (the LeanHistogram's bound record)
    assert isinstance(lean, _sdk_metrics.LeanHistogram) and lean._bindings
    monkeypatch.setattr(_sdk_metrics, "_known", ("forced off for the comparison", False))
    live = run_hops(sdk_provider)
    assert not isinstance(getattr(live.process, "__self__", None), _sdk_metrics.LeanHistogram)

    def histograms(reader: InMemoryMetricReader) -> list[Any]:
        # (Counts, not buckets: these are real durations; the tests above compare buckets.)
        return [(m[0], [(p["attributes"], p["count"]) for p in m[5]])
                for m in snapshot(reader) if m[3] == "Histogram"]

    got, want = histograms(lean_reader), histograms(sdk_reader)
    assert got == want
    assert {name for name, _ in got} == {metrics.OPERATION_DURATION, metrics.PROCESS_DURATION,
                                        metrics.QUEUE_WAIT, metrics.PATHWAY}
    errors = [p for name, points in got if name == metrics.PROCESS_DURATION for p in points
              if p[0].get("error.type") == "KeyError"]
    assert sum(p[1] for p in errors) == 5
    lean_provider.shutdown()
    sdk_provider.shutdown()


def inlined_offers(pair: Pair) -> list[bool]:
    """For each bound aggregation: whether the lean path makes its exemplar offer itself."""
    return [aggregation is not None for lean in pair.lean for bound in lean._bindings.values()
            for _, aggregation in bound[2] or ()]


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on"])
def test_exemplar_offers_made_by_the_lean_path_are_the_sdk_s(
    exemplar_filter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values on the boundaries (0.005, 1.0) and past the last one land in the buckets the
    # SDK's reservoir picks; the exemplar kept per bucket is the same, with its span IDs.
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)
    # (The second reader delta where a binding outlives its collections: see DELTA_RESETS.)
    pair = Pair(lambda: [InMemoryMetricReader(), InMemoryMetricReader(
        preferred_temporality=None if DELTA_RESETS else DELTA)])
    try:
        hs = [pair.histogram("hoptrace.queue_wait")]
        feed(pair, hs, ("sampled", "unsampled", "sampled"))
        got = pair.compare()
        assert inlined_offers(pair) == [EXEMPLARS] * 2 * 2  # two dicts, two readers each
        exemplars = [e for p in got[0][0][5] for e in p["exemplars"]]
        assert (len(exemplars) > 2 * len(BUCKETS) // 2) == EXEMPLARS  # several buckets each
        assert all(e[2] for e in exemplars)  # every one from a span
    finally:
        pair.close()


class EqualToEverything(trace.NonRecordingSpan):
    """A span class whose ``!=`` is not identity (equal to INVALID_SPAN, too)."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = trace.NonRecordingSpan.__hash__


@pytest.mark.parametrize("current", ["invalid_span", "not_a_span", "equal_to_everything",
                                     "sampled_flags_subclass"])
def test_odd_current_spans_are_judged_as_the_sdk_judges_them(current: str) -> None:
    sampled = trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1))
    value: object = {
        "invalid_span": trace.INVALID_SPAN,
        "not_a_span": object(),
        "equal_to_everything": EqualToEverything(sampled),
        "sampled_flags_subclass": trace.NonRecordingSpan(trace.SpanContext(
            0xABC, 0xDEF, False, type("Flags", (trace.TraceFlags,), {})(1))),
    }[current]
    pair = Pair(lambda: [InMemoryMetricReader()])
    try:
        hs = [pair.histogram("hoptrace.queue_wait")]
        token = otel_context.attach(otel_context.set_value(
            trace.propagation._SPAN_KEY, value))
        try:
            for _ in range(2):
                for value_ in VALUES:
                    pair.record(hs[0], value_, SEND)
        finally:
            otel_context.detach(token)
        got = pair.compare()
        kept = [e for p in got[0][0][5] for e in p["exemplars"]]
        assert bool(kept) == (EXEMPLARS and current == "sampled_flags_subclass")
    finally:
        pair.close()


def test_a_meter_switched_off_and_on_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair(lambda: [InMemoryMetricReader()])
    configure = getattr(pair.lean_provider, "_set_meter_configurator", None)
    if configure is None:
        pair.close()
        pytest.skip("this SDK cannot switch a meter off")
    from opentelemetry.sdk.metrics._internal import _MeterConfig

    def switch(enabled: bool) -> None:
        for provider in (pair.lean_provider, pair.sdk_provider):
            provider._set_meter_configurator(
                meter_configurator=lambda scope: _MeterConfig(is_enabled=enabled))

    try:
        hs = [pair.histogram("hoptrace.queue_wait")]
        feed(pair, hs, ("sampled",))
        switch(False)
        feed(pair, hs, ("sampled", "none"))
        switch(True)
        feed(pair, hs, ("unsampled",))
        got = pair.compare()
        assert sum(p["count"] for p in got[0][0][5]) == 2 * 2 * len(VALUES)
        assert pair.lean[0]._proxy is not None  # the config read without the calls
    finally:
        pair.close()


#: Values an explicit-bucket aggregation might trip on: zeros of both signs, the smallest
#: subnormal, each boundary and its neighbours either side, ints and a bool, the largest float.
HOSTILE = [0.0, -0.0, 5e-324, 0, 1, True, 7, 10**20, 1.7976931348623157e308,
           *BUCKETS, *(math.nextafter(b, 0.0) for b in BUCKETS),
           *(math.nextafter(b, math.inf) for b in BUCKETS), 0.3, 0.3]


def one_aggregation_bindings(pair: Pair) -> list[bool]:
    """For each bound attribute dict: whether ``record`` feeds its one aggregation itself."""
    return [bound[4] is not None for lean in pair.lean for bound in lean._bindings.values()]


@pytest.mark.parametrize("readers", [1, 2])
@pytest.mark.parametrize("record_min_max", [True, False])
@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
def test_the_inlined_aggregate_matches_the_sdk_s_on_hostile_values(
    readers: int, record_min_max: bool, exemplar_filter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lean path adds to the explicit-bucket aggregation's buckets, sum, min and max
    # itself: the same points as the SDK's own ``aggregate``, collection after collection
    # (a delta reader empties the buckets at each), with and without min/max, in every order.
    # With one reader and the trace-based or always-off filter, ``record`` makes those steps
    # (and the exemplar bucket's offer) itself; with two, ``_general`` and ``_aggregate``.
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)
    views = [View(instrument_name="hoptrace.queue_wait",
                  aggregation=ExplicitBucketHistogramAggregation(
                      BUCKETS, record_min_max=record_min_max))]
    delta = readers == 1 and record_min_max  # (one reader: cumulative or delta)
    pair = Pair(lambda: [InMemoryMetricReader(preferred_temporality=DELTA if delta else None),
                         InMemoryMetricReader(preferred_temporality=DELTA)][:readers],
                views=views)
    try:
        h = pair.histogram("hoptrace.queue_wait")
        for turn, kind in enumerate(("sampled", "none", "unsampled", "sampled")):
            values = HOSTILE if turn % 2 == 0 else HOSTILE[::-1]
            with active(kind):
                for value in values:
                    pair.record(h, value, SEND)
                    pair.record(h, value / 3, RECV)
            got = pair.compare()  # (each collection resets the delta reader's buckets)
            assert sum(p["count"] for p in got[-1][0][5]) == 2 * len(HOSTILE) * (
                1 if readers == 2 or delta else turn + 1)
        # (A delta reader on SDK 1.45.2+: nothing bound, every record the SDK's own way.)
        resets = DELTA_RESETS and (readers == 2 or delta)
        assert inlined_offers(pair) == ([] if resets else [EXEMPLARS] * 2 * readers)
        one = readers == 1 and EXEMPLARS and exemplar_filter != "always_on" and not resets
        assert one_aggregation_bindings(pair) == [one] * 2
        point = next(p for p in got[0][0][5] if p["attributes"] == SEND)
        assert point["count"] == (len(HOSTILE) if delta else 4 * len(HOSTILE))
        assert ("min" in point and point["min"] == 0.0) or not record_min_max
        exemplars = [e for p in got[0][0][5] for e in p["exemplars"]]
        assert bool(exemplars) == (EXEMPLARS and exemplar_filter != "always_off")
    finally:
        pair.close()


def test_one_aggregation_offers_exemplars_as_the_sdk_s_bucket_does() -> None:
    # One reader, the default trace-based filter: ``record`` writes the exemplar bucket's
    # fields itself for the SDK's spans and the API's non-recording ones (a sampled remote
    # parent), and calls the bucket's own ``offer`` for any other span class. Every value
    # lands in each bucket in turn, so each bucket's last exemplar (value, span and trace
    # IDs, filtered attributes) is compared, over two collections.
    remote = trace.NonRecordingSpan(trace.SpanContext(
        0x1234, 0x5678, True, trace.TraceFlags(trace.TraceFlags.SAMPLED)))

    class OwnSpan(trace.NonRecordingSpan):
        # Another getter (not its ``_context``): the filter and the bucket's offer ask it.
        def get_span_context(self) -> trace.SpanContext:
            return trace.SpanContext(0xEF, 0x12, True, trace.TraceFlags(1))

    own = OwnSpan(trace.SpanContext(0xAB, 0xCD, True, trace.TraceFlags(0)))  # (not sampled)
    # A View that keeps two attributes: the others are the exemplars' filtered attributes.
    views = [View(instrument_name="hoptrace.queue_wait",
                  attribute_keys={"messaging.system", "messaging.operation.name"})]
    pair = Pair(lambda: [InMemoryMetricReader()], views=views)
    try:
        h = pair.histogram("hoptrace.queue_wait")
        for span in (None, remote, own, None, own, remote):
            with active("sampled") if span is None else _current(span):
                for value in HOSTILE:
                    pair.record(h, value, SEND)
                    pair.record(h, value / 3, RECV)
            got = pair.compare()  # (a collection empties the reservoir: this span's only)
            exemplars = [e for p in got[0][0][5] for e in p["exemplars"]]
            assert bool(exemplars) == EXEMPLARS
            ids = {(e[2], e[3]) for e in exemplars}
            if span is not None and EXEMPLARS:
                assert ids == {(span.get_span_context().span_id,
                                span.get_span_context().trace_id)}
            assert all(span_id and trace_id for span_id, trace_id in ids)
            assert all(e[1].get("messaging.destination.name") for e in exemplars)
        assert one_aggregation_bindings(pair) == [EXEMPLARS] * 2
    finally:
        pair.close()


@contextmanager
def _current(span: Any) -> Iterator[None]:
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)
