"""A transaction's root under ``ParentBased(TraceIdRatioBased(r))``: decided before it is built.

In the production setup each message starts a transaction whose span is the root of a new
trace, and 99% of them are dropped. ``Starter.start_lazy`` takes the trace ID from the ID
generator and decides it as ``TraceIdRatioBased`` does (in C when the module is built: ``_sdk_spans.start_lazy_of``) (``trace_id & TRACE_ID_LIMIT <
bound``) before the span's attributes are built; a dropped root is the SDK's
``NonRecordingSpan``, made directly; a sampled one is ``tracer.start_span``'s, given that trace
ID. These tests run the same transactions three ways with the same seeded ID generator: that
shortcut, ``tracer.start_span`` with the shortcut switched off ("generic") and with
``fast_spans=False`` ("sdk"), and require the same spans, headers, trace
flags and SDK-internal span counts every way.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

import hoptrace
from hoptrace.core import _sdk_spans, semconv
from hoptrace.core.transaction import transaction

LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT
RATIOS = (0.0, 0.01, 0.5, 1.0)


class EdgeIds(IdGenerator):
    """Seeded trace IDs, every third one at the ratio's bound (bound - 1, bound, bound + 1)."""

    def __init__(self, bound: int, seed: int = 11, random_ids: bool = True) -> None:
        self.rng = random.Random(seed)
        self.bound = bound
        self.random_ids = random_ids
        self.n = 0

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        self.n += 1
        high = self.rng.getrandbits(64) << 64
        if self.n % 3 == 0:
            low = max(0, min(LIMIT, self.bound + self.rng.choice((-1, 0, 1))))
            return high | low or 1
        return self.rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return self.random_ids


class Counting(Sampler):
    """A root sampler hoptrace cannot reason about: TraceIdRatioBased(0.5), counted."""

    def __init__(self) -> None:
        self.inner = TraceIdRatioBased(0.5)
        self.asked = 0

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        self.asked += 1
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "Counting"


class Subclassed(TraceIdRatioBased):
    """A TraceIdRatioBased whose decision hoptrace must not assume."""

    asked = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        type(self).asked += 1
        return super().should_sample(*args, **kwargs)


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    yield
    trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
    hoptrace.reset()


class Taken:
    """How many roots the shortcut decided, and how many attribute sets were built."""

    def __init__(self) -> None:
        self.roots = 0
        self.built = 0


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Taken:
    seen = Taken()
    original = transaction._span_attributes

    def counted(self: transaction) -> Any:
        seen.built += 1
        return original(self)

    monkeypatch.setattr(transaction, "_span_attributes", counted)
    return seen


WAYS = ("shortcut", "sdk", "generic")


def way(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hoptrace.configure(fast_spans=name != "sdk")
    if name == "generic":  # the lazy start is tracer.start_span, attributes built
        monkeypatch.setattr(  # (the entry transaction() reaches, C or Python)
            _sdk_spans, "start_lazy_of",
            lambda self, name, context, kind, attributes: self.tracer.start_span(
                name, context=context, kind=kind, attributes=attributes()),
        )


def install(sampler: Sampler, ids: IdGenerator, **kwargs: Any) -> InMemorySpanExporter:
    provider = TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False,
                              **kwargs)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return exporter


def run_transactions(count: int) -> list[Any]:
    """What each transaction's code sees, and what its send carries."""
    seen = []
    for i in range(count):
        with transaction("job", attributes={"job.n": i}) as tx:
            span = trace.get_current_span()
            sc = span.get_span_context()
            with hoptrace.produce_scope({}, "orders", "kafka", sent_time=False) as send:
                pass
            seen.append((type(span) is trace.NonRecordingSpan, span.is_recording(), sc.trace_id,
                         sc.span_id, int(sc.trace_flags), sc.trace_state.to_header(),
                         sc.is_valid, tx.transaction_id is not None,
                         send.carrier.get("traceparent")))
    return seen


def exported(exporter: InMemorySpanExporter) -> list[Any]:
    return [(s.name, s.context.trace_id, s.context.span_id, int(s.context.trace_flags),
             s.parent.span_id if s.parent else None, dict(s.attributes or {}))
            for s in exporter.get_finished_spans()]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("random_ids", [True, False])
def test_roots_are_decided_as_the_sdk_decides_them(
    ratio: float, random_ids: bool, taken: Taken, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = TraceIdRatioBased(ratio).bound
    seen, spans, built = {}, {}, {}
    for name in WAYS:
        way(name, monkeypatch)
        taken.built = 0
        exporter = install(ParentBased(TraceIdRatioBased(ratio)),
                           EdgeIds(bound, random_ids=random_ids))
        seen[name] = run_transactions(300)
        spans[name] = exported(exporter)
        built[name] = taken.built
    assert seen["shortcut"] == seen["generic"] == seen["sdk"]
    # (transaction IDs are random per run; the names and attributes but that one compare)
    for name in WAYS:
        for span in spans[name]:
            span[5].pop(semconv.TRANSACTION_ID, None)
    assert spans["shortcut"] == spans["generic"] == spans["sdk"]
    recorded = sum(1 for view in seen["shortcut"] if view[1])
    expected = sum(1 for view in seen["shortcut"] if view[2] & LIMIT < bound)
    assert recorded == expected
    if 0 < ratio < 1:
        assert 0 < recorded < 300
    # The attributes are built for the recorded roots only (the other ways build them all).
    assert built["shortcut"] == recorded and built["sdk"] == built["generic"] == 300
    for view in seen["shortcut"]:
        assert view[6] and view[8] and view[8].endswith("-01" if view[1] else "-00")


def test_roots_under_an_active_span_are_children(
    taken: Taken, monkeypatch: pytest.MonkeyPatch
) -> None:
    for flags, recording in ((0, False), (1, True)):
        parent = trace.NonRecordingSpan(trace.SpanContext(
            0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(flags)))
        seen = {}
        for name in WAYS:
            way(name, monkeypatch)
            install(ParentBased(TraceIdRatioBased(0.0)), EdgeIds(0))
            token = trace.use_span(parent)
            with token, transaction("job") as tx:
                sc = trace.get_current_span().get_span_context()
                seen[name] = (sc.trace_id, sc.span_id, int(sc.trace_flags),
                              trace.get_current_span().is_recording())
            assert tx.transaction_id
        assert seen["shortcut"] == seen["generic"] == seen["sdk"]
        assert seen["shortcut"][0] == 0xABC and seen["shortcut"][3] is recording


@pytest.mark.parametrize("kind", ["custom", "subclass", "instance"])
def test_samplers_hoptrace_cannot_reason_about_are_asked(
    kind: str, taken: Taken, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(fast_spans=True)
    counting = Counting()
    root: Sampler
    if kind == "custom":
        root = counting
    elif kind == "subclass":
        Subclassed.asked = 0
        root = Subclassed(0.5)
    else:  # an instance whose should_sample someone replaced
        root = TraceIdRatioBased(0.5)
        root.should_sample = counting.should_sample  # type: ignore[method-assign]
    install(ParentBased(root), EdgeIds(TraceIdRatioBased(0.5).bound))
    run_transactions(40)
    asked = Subclassed.asked if kind == "subclass" else counting.asked
    assert asked == 40 and taken.built == 40


def test_a_sampler_swapped_on_the_provider_is_seen(taken: Taken) -> None:
    hoptrace.configure(fast_spans=True)
    install(ParentBased(TraceIdRatioBased(0.0)), EdgeIds(0))
    run_transactions(5)
    assert taken.built == 0
    counting = Counting()
    _sdk_spans_tracer().sampler = ParentBased(counting)
    run_transactions(5)
    assert counting.asked == 5 and taken.built == 5


def _sdk_spans_tracer() -> Any:
    from hoptrace.core.otel_shims import tracer

    return tracer()


@pytest.mark.skipif(not getattr(_sdk_spans.start_span_variant(), "gated", False),
                    reason="the SDK counts no spans of its own before 1.40")
def test_the_sdk_s_own_span_counts_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setitem(os.environ, "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counts = {}
    for name in WAYS:
        way(name, monkeypatch)
        reader = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[reader])
        install(ParentBased(TraceIdRatioBased(0.5)), EdgeIds(TraceIdRatioBased(0.5).bound),
                meter_provider=meters)
        run_transactions(60)
        data: Any = reader.get_metrics_data()
        counts[name] = sorted(
            (m.name, tuple(sorted(p.attributes.items())), p.value)
            for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
            for p in m.data.data_points
        )
        meters.shutdown()
    assert counts["shortcut"] == counts["generic"] == counts["sdk"]
    assert any(name == "otel.sdk.span.started" for name, _, _ in counts["shortcut"])


def test_a_disabled_tracer_gives_what_the_sdk_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk import trace as sdk_trace

    config = getattr(sdk_trace, "_TracerConfig", None)
    if config is None:
        pytest.skip("this SDK's tracers cannot be disabled")
    seen = {}
    for name in WAYS:
        way(name, monkeypatch)
        exporter = install(ParentBased(TraceIdRatioBased(1.0)), EdgeIds(LIMIT),
                           _tracer_configurator=lambda scope: config(is_enabled=False))
        seen[name] = run_transactions(5)
        unsampled = trace.NonRecordingSpan(trace.SpanContext(
            0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(0)))
        with trace.use_span(unsampled):  # children of an unsampled parent: the drop path
            seen[name] += run_transactions(3)
        assert exported(exporter) == []
    assert seen["shortcut"] == seen["generic"] == seen["sdk"]
    assert not any(view[1] or view[6] for view in seen["shortcut"][:5])
    assert all(view[2] == 0xABC and view[3] == 0xDEF for view in seen["shortcut"][5:])
