"""Numbers from a span file: per-edge queue wait and processing, slowest traces, critical path.

An *edge* is one hop: producer service → destination → consumer service. It is found from
each CONSUMER span whose parent (parent mode) or link (link mode) is a PRODUCER span in the
file. A queue wait never begins before that PRODUCER span started (a send time cut to the
millisecond, as Kafka's record timestamps are, could put it up to 1 ms earlier).
Percentiles come from :func:`statistics.quantiles`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .spanfile import SpanRecord, Trace, send_span_of

UNKNOWN = "?"


def percentile_summary(values: Sequence[float]) -> dict[str, float | None]:
    """Return p50 / p95 / p99 of ``values`` (None when empty; the value itself for one)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


@dataclass
class EdgeStats:
    """Queue wait and processing time of every message over one edge."""

    producer_service: str
    destination: str
    consumer_service: str
    queue_wait_ms: list[float] = field(default_factory=list)
    processing_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def count(self) -> int:
        """Messages processed over this edge."""
        return len(self.processing_ms)

    @property
    def error_rate(self) -> float:
        """Share of consumer spans that ended in error (0..1)."""
        return self.errors / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready summary of this edge."""
        return {
            "producer_service": self.producer_service,
            "destination": self.destination,
            "consumer_service": self.consumer_service,
            "count": self.count,
            "queue_wait_ms": percentile_summary(self.queue_wait_ms),
            "processing_ms": percentile_summary(self.processing_ms),
            "errors": self.errors,
            "error_rate": self.error_rate,
        }


def edge_stats(spans: Iterable[SpanRecord]) -> list[EdgeStats]:
    """Return one :class:`EdgeStats` per edge, the busiest first.

    A queue wait that would begin before its ``send`` span started is counted from the
    ``send`` span's start (see :attr:`SpanRecord.queue_wait_ms`).
    """
    all_spans = list(spans)
    by_id = {span.span_id: span for span in all_spans}
    edges: dict[tuple[str, str, str], EdgeStats] = {}
    for span in all_spans:
        if span.kind != "CONSUMER":
            continue
        producer = send_span_of(span, by_id)
        if producer is not None:
            span.send_start_ns = producer.start_ns
        destination = span.destination or (producer.destination if producer else None) or span.name
        key = (producer.service if producer else UNKNOWN, destination, span.service)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = EdgeStats(*key)
        wait = span.queue_wait_ms
        if wait is not None:
            edge.queue_wait_ms.append(wait)
        edge.processing_ms.append(span.duration_ms)
        if span.is_error:
            edge.errors += 1
    return sorted(edges.values(), key=lambda e: (-e.count, e.destination))


def slowest_traces(traces: Iterable[Trace], limit: int = 5) -> list[Trace]:
    """Return the ``limit`` traces with the longest wall time, slowest first."""
    return sorted(traces, key=lambda t: t.duration_ms, reverse=True)[:limit]


@dataclass
class PathStep:
    """One span on a trace's critical path and the time it alone accounts for."""

    span: SpanRecord
    self_ms: float
    queue_wait_ms: float | None

    def as_dict(self, trace_start_ns: int) -> dict[str, Any]:
        """Return the JSON-ready form of this step."""
        return {
            "name": self.span.name,
            "service": self.span.service,
            "kind": self.span.kind,
            "span_id": self.span.span_id,
            "offset_ms": (self.span.start_ns - trace_start_ns) / 1e6,
            "duration_ms": self.span.duration_ms,
            "self_ms": self.self_ms,
            "queue_wait_ms": self.queue_wait_ms,
            "error": self.span.is_error,
        }


@dataclass
class CriticalPath:
    """The chain of spans that decided when a trace finished, and what dominated it."""

    trace: Trace
    steps: list[PathStep]

    @property
    def dominant(self) -> tuple[str, PathStep] | None:
        """The largest share: ``("queue_wait", step)`` or ``("processing", step)``."""
        best: tuple[float, str, PathStep] | None = None
        for step in self.steps:
            for what, value in (("queue_wait", step.queue_wait_ms), ("processing", step.self_ms)):
                if value is not None and (best is None or value > best[0]):
                    best = (value, what, step)
        return (best[1], best[2]) if best is not None else None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the path."""
        start = self.trace.start_ns
        dominant = self.dominant
        return {
            "trace_id": self.trace.trace_id,
            "transaction_id": self.trace.transaction_id,
            "duration_ms": self.trace.duration_ms,
            "steps": [step.as_dict(start) for step in self.steps],
            "dominant": None
            if dominant is None
            else {
                "what": dominant[0],
                "span": dominant[1].span.name,
                "service": dominant[1].span.service,
                "ms": dominant[1].queue_wait_ms
                if dominant[0] == "queue_wait"
                else dominant[1].self_ms,
            },
        }


def critical_path(trace: Trace) -> CriticalPath:
    """Follow, from the root that ends last, the child that ends last, down to a leaf.

    Each step's own time is its duration less the part the next step overlaps; a consumer
    step also shows the queue wait before it started.
    """
    trace.link_sends()  # queue waits never begin before their send span
    chain: list[SpanRecord] = []
    roots = trace.roots
    current = max(roots, key=lambda s: _subtree_end(trace, s)) if roots else None
    on_path: set[int] = set()
    while current is not None and id(current) not in on_path:  # repeated IDs can cycle
        on_path.add(id(current))
        chain.append(current)
        children = trace.children.get(current.span_id)
        current = max(children, key=lambda s: _subtree_end(trace, s)) if children else None
    steps = []
    for index, span in enumerate(chain):
        following = chain[index + 1] if index + 1 < len(chain) else None
        overlap = 0
        if following is not None:
            overlap = max(
                0, min(span.end_ns, following.end_ns) - max(span.start_ns, following.start_ns)
            )
        steps.append(
            PathStep(span, (span.end_ns - span.start_ns - overlap) / 1e6, span.queue_wait_ms)
        )
    return CriticalPath(trace, steps)


def _subtree_end(trace: Trace, span: SpanRecord) -> int:
    end = span.end_ns
    stack = list(trace.children.get(span.span_id, ()))
    seen = {id(span)}
    while stack:
        child = stack.pop()
        if id(child) in seen:  # repeated span IDs can make a cycle
            continue
        seen.add(id(child))
        end = max(end, child.end_ns)
        stack.extend(trace.children.get(child.span_id, ()))
    return end
