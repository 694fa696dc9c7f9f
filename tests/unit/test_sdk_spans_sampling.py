"""The lean recorder under ``ParentBased(<a root sampler that is not static>)``.

The production setup samples roots by ratio: ``ParentBased(TraceIdRatioBased(r))``. Its four
parent delegates are static, so the recorder decides children by table lookup, and asks only
the root delegate, for roots, the way ``ParentBased`` asks it. These tests hold that path to
``tracer.start_span``'s decisions, and check that the root delegate is asked for roots only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, set_span_in_context
from opentelemetry.util.types import Attributes

import hoptrace
from hoptrace.core import spans as spans_module
from hoptrace.core._sdk_spans import HopSpan


class CountingRatio(Sampler):
    """TraceIdRatioBased(0.5) that records the trace IDs it was asked about."""

    def __init__(self) -> None:
        self.inner = TraceIdRatioBased(0.5)
        self.asked: list[int] = []

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        self.asked.append(trace_id)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "CountingRatio"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, CountingRatio, InMemorySpanExporter]]:
    root = CountingRatio()
    provider = TracerProvider(sampler=ParentBased(root), shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    hoptrace.configure(fast_spans=True)
    yield provider, root, exporter
    trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
    hoptrace.reset()
    provider.shutdown()


def test_roots_ask_the_root_delegate_and_children_follow_their_parent(provider: Any) -> None:
    _, root, exporter = provider
    sampled = unsampled = 0
    for _ in range(200):
        parent = spans_module.start_span("root", Context(), SpanKind.INTERNAL, {"a": "x"})
        child = spans_module.start_span(
            "child", set_span_in_context(parent), SpanKind.PRODUCER, {"b": 1}
        )
        pc, cc = parent.get_span_context(), child.get_span_context()
        assert cc.trace_id == pc.trace_id and cc.span_id != pc.span_id
        assert child.is_recording() is parent.is_recording() is pc.trace_flags.sampled
        assert cc.trace_flags == pc.trace_flags
        if parent.is_recording():
            assert isinstance(parent, HopSpan) and isinstance(child, HopSpan)
            sampled += 1
        else:
            unsampled += 1
        child.end()
        parent.end()
    # One question per root, none per child; the ratio decided by trace ID.
    assert len(root.asked) == 200
    assert sampled and unsampled
    ratio = TraceIdRatioBased(0.5)
    for span in exporter.get_finished_spans():
        assert span.context.trace_id & ratio.TRACE_ID_LIMIT < ratio.bound


def test_decisions_match_tracer_start_span(provider: Any) -> None:
    sdk, root, _ = provider
    tracer = sdk.get_tracer("compare")
    for remote in (False, True):
        for flags in (0, 1):
            parent = trace.NonRecordingSpan(trace.SpanContext(
                0xABC, 0xDEF, is_remote=remote, trace_flags=trace.TraceFlags(flags),
                trace_state=trace.TraceState([("k", "v")]),
            ))
            ctx = set_span_in_context(parent)
            ours = spans_module.start_span("c", ctx, SpanKind.CONSUMER, {"x": "y"})
            theirs = tracer.start_span("c", ctx, SpanKind.CONSUMER, {"x": "y"})
            assert ours.is_recording() == theirs.is_recording() == bool(flags)
            oc, tc = ours.get_span_context(), theirs.get_span_context()
            assert (oc.trace_id, oc.trace_flags, oc.trace_state) == (
                tc.trace_id, tc.trace_flags, tc.trace_state)
            ours.end()
            theirs.end()
    assert root.asked == []  # children never ask the root delegate
