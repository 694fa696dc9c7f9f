"""Numbers from spans: per-edge queue wait, processing, throughput; slow traces; critical path.

An *edge* is one hop: producer service → destination → consumer service. Each CONSUMER span
is paired with the PRODUCER span that sent its message: its parent (parent mode) or, when the
parent is no PRODUCER span, a span it links to (link mode, or a consumer that ran inside
another span), in any trace of the input. A queue wait never begins before that PRODUCER
span started (a send time cut to the millisecond, as Kafka's record timestamps are, could put
it up to 1 ms earlier). Percentiles come from :func:`statistics.quantiles`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core import semconv
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


def messages_sent(span: SpanRecord) -> int:
    """How many messages a PRODUCER span sent: its ``messaging.batch.message_count``, else 1."""
    value = span.attributes.get(semconv.MESSAGING_BATCH_MESSAGE_COUNT)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 1


@dataclass
class EdgeStats:
    """Every message over one edge: queue wait, processing, errors, throughput, unpaired sends.

    ``consumer_service`` is None for messages sent to a destination where no consumer span
    in the input handled any of them (then ``count`` is 0 and every send is unpaired).
    """

    producer_service: str
    destination: str
    consumer_service: str | None
    queue_wait_ms: list[float] = field(default_factory=list)
    processing_ms: list[float] = field(default_factory=list)
    errors: int = 0
    #: Messages sent to the (producer service, destination) pairs this edge consumes from;
    #: None when the edge's PRODUCER spans are not in the input.
    sent: int | None = None
    #: Of those, how many a consumer span of this edge handled.
    consumed_sends: int = 0
    #: Earliest consumer span start and latest consumer span end (ns since the epoch).
    first_start_ns: int | None = None
    last_end_ns: int | None = None
    #: The PRODUCER span of each consumer span that has one (in the input's order).
    _producers: list[SpanRecord] = field(default_factory=list, repr=False)

    @property
    def count(self) -> int:
        """Messages processed over this edge (consumer spans)."""
        return len(self.processing_ms)

    @property
    def error_rate(self) -> float:
        """Share of consumer spans that ended in error (0..1)."""
        return self.errors / self.count if self.count else 0.0

    @property
    def unpaired(self) -> int | None:
        """Messages sent that no consumer span of this edge handled: lost, in flight, or lag."""
        if self.sent is None:
            return None
        return max(0, self.sent - self.consumed_sends)

    @property
    def window_s(self) -> float | None:
        """Seconds from the first consumer span's start to the last one's end."""
        if self.first_start_ns is None or self.last_end_ns is None:
            return None
        return (self.last_end_ns - self.first_start_ns) / 1e9

    @property
    def throughput_per_s(self) -> float | None:
        """Messages processed per second over :attr:`window_s` (None under two messages)."""
        window = self.window_s
        if self.count < 2 or not window or window <= 0:
            return None
        return self.count / window

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
            "throughput_per_s": self.throughput_per_s,
            "window_s": self.window_s,
            "sent": self.sent,
            "unpaired_sends": self.unpaired,
        }


class _Sends:
    """The PRODUCER spans of the input: messages sent per (service, destination) stream."""

    def __init__(self) -> None:
        self.per_stream: dict[tuple[str, str], int] = {}
        self.stream_of: dict[int, tuple[str, str]] = {}  # id(PRODUCER span) → stream
        self.batch_of: dict[int, int] = {}  # id(PRODUCER span) → messages, batch sends only

    def count(self, span: SpanRecord) -> None:
        sent_to = span.attributes.get(semconv.MESSAGING_DESTINATION_NAME)
        stream = (span.service, sent_to if isinstance(sent_to, str) and sent_to else span.name)
        self.stream_of[id(span)] = stream
        sent = 1
        if semconv.MESSAGING_BATCH_MESSAGE_COUNT in span.attributes:
            sent = self.batch_of[id(span)] = messages_sent(span)
        self.per_stream[stream] = self.per_stream.get(stream, 0) + sent

    def pair(self, edge: EdgeStats) -> set[tuple[str, str]]:
        """Set ``edge``'s sent and consumed-send counts; return the streams it reads."""
        handled = Counter(map(id, edge._producers))
        streams = set(map(self.stream_of.__getitem__, handled))
        edge.sent = sum(self.per_stream[stream] for stream in streams)
        # A redelivered message is handled twice but sent once; a batch send holds several.
        if self.batch_of:
            edge.consumed_sends = sum(
                min(self.batch_of.get(key, 1), times) for key, times in handled.items()
            )
        else:
            edge.consumed_sends = len(handled)
        return streams


def _add_consumer(
    span: SpanRecord,
    by_id: dict[str, SpanRecord],
    edges: dict[tuple[str, str, str], EdgeStats],
) -> None:
    """Count one CONSUMER span on its edge (producer service, destination, consumer)."""
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
    edge.processing_ms.append((span.end_ns - span.start_ns) / 1e6)
    if span.status == "ERROR":
        edge.errors += 1
    if edge.first_start_ns is None or span.start_ns < edge.first_start_ns:
        edge.first_start_ns = span.start_ns
    if edge.last_end_ns is None or span.end_ns > edge.last_end_ns:
        edge.last_end_ns = span.end_ns
    if producer is not None:
        edge._producers.append(producer)


def edge_stats(spans: Iterable[SpanRecord]) -> list[EdgeStats]:
    """Return one :class:`EdgeStats` per edge, the busiest first, then unconsumed sends.

    A consumer span's PRODUCER is its parent, else a span it links to (see the module
    docstring). A queue wait that would begin before its ``send`` span started is counted
    from the ``send`` span's start (see :attr:`SpanRecord.queue_wait_ms`). Messages sent to
    a destination that no consumer span handled come last, one row per producer service and
    destination, with ``consumer_service`` None.
    """
    all_spans = spans if isinstance(spans, list) else list(spans)
    by_id = {span.span_id: span for span in all_spans}
    edges: dict[tuple[str, str, str], EdgeStats] = {}
    sends = _Sends()
    for span in all_spans:
        kind = span.kind
        if kind == "PRODUCER":  # inline: this loop runs once per span of the input
            sends.count(span)
        elif kind == "CONSUMER":
            _add_consumer(span, by_id, edges)
    consumed_streams: set[tuple[str, str]] = set()
    for edge in edges.values():
        if edge._producers:
            consumed_streams |= sends.pair(edge)
    sent_per_stream = sends.per_stream
    unconsumed = [
        EdgeStats(service, destination, None, sent=sent)
        for (service, destination), sent in sent_per_stream.items()
        if (service, destination) not in consumed_streams
    ]
    return sorted(edges.values(), key=lambda e: (-e.count, e.destination)) + sorted(
        unconsumed, key=lambda e: (-(e.sent or 0), e.destination)
    )


def slowest_traces(traces: Iterable[Trace], limit: int = 5) -> list[Trace]:
    """Return the ``limit`` traces with the longest wall time, slowest first."""
    return sorted(traces, key=lambda t: t.duration_ms, reverse=True)[:limit]


@dataclass
class PathStep:
    """One span on a trace's critical path and the time it alone accounts for on that path.

    ``queue_wait_ms`` is the wait the path spends before this span, when the path reaches it
    through its message (from the queue wait's start, or from the end of the ``send`` span
    when the consumer recorded none); None for a span the path reaches otherwise.
    """

    span: SpanRecord
    self_ms: float
    queue_wait_ms: float | None

    @property
    def total_ms(self) -> float:
        """Queue wait plus own time: this step's share of the path."""
        return self.self_ms + (self.queue_wait_ms or 0.0)

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
    """The longest causal chain of a trace, and what dominated it.

    ``waited_before_ms`` is the queue wait of the message that started the chain when that
    message's ``send`` span is in another trace (link mode): it lies before this trace began,
    so it is not part of the steps.
    """

    trace: Trace
    steps: list[PathStep]
    waited_before_ms: float | None = None

    @property
    def total_ms(self) -> float:
        """The steps' queue waits and own times added up: never more than the trace's duration."""
        return sum(step.total_ms for step in self.steps)

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
            "path_ms": self.total_ms,
            "waited_before_trace_ms": self.waited_before_ms,
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


def _producers_of(spans: list[SpanRecord], by_id: dict[str, SpanRecord]) -> dict[int, SpanRecord]:
    """id(CONSUMER span) → the ``send`` span of its message, by parent or link."""
    producer_of: dict[int, SpanRecord] = {}
    for span in spans:
        if span.kind == "CONSUMER":
            producer = send_span_of(span, by_id)
            if producer is not None and producer is not span:
                producer_of[id(span)] = producer
    return producer_of


def _latest_child(
    trace: Trace,
    current: SpanRecord,
    cursor: int,
    visited: dict[int, SpanRecord],
    producer_of: dict[int, SpanRecord],
) -> tuple[SpanRecord | None, int]:
    """The child of ``current`` still running latest before ``cursor``, and when it ends.

    Spans already on the path, and consumers of ``current``'s own message (the path reaches
    those the other way), are skipped.
    """
    best: SpanRecord | None = None
    best_end = 0
    for child in trace.children.get(current.span_id, ()):
        if (
            id(child) in visited
            or child.start_ns >= cursor
            or producer_of.get(id(child)) is current
        ):
            continue
        end = min(child.end_ns, cursor)
        if best is None or end > best_end:
            best, best_end = child, end
    return best, best_end


def critical_path(trace: Trace) -> CriticalPath:
    """Return the longest causal chain of ``trace``: the spans its end waited on, in turn.

    The walk starts at the span that ends last and goes back in time with a cursor that
    only moves earlier. Inside a span, the child (not a message's consumer) that was still
    running latest before the cursor is on the path (a consumer of the span's own message is
    not: it came later); the span's own time is what its path children leave uncovered. From
    a span's start the path goes to what it waited on: a consumer's message (the queue wait,
    then the ``send`` span, found by parent or link), else the span it ran in. Every instant
    of the trace is counted at most once, so the steps add up to no more than the trace's
    duration.
    """
    trace.link_sends()  # queue waits never begin before their send span
    spans = trace.spans
    if not spans:
        return CriticalPath(trace, [])
    by_id = {span.span_id: span for span in spans}
    producer_of = _producers_of(spans, by_id)
    first_ns, last_ns = trace.start_ns, trace.end_ns
    current = min((s for s in spans if s.end_ns == last_ns), key=lambda s: s.start_ns)
    cursor = last_ns
    own: dict[int, int] = {}
    waited: dict[int, int] = {}
    visited: dict[int, SpanRecord] = {}
    returns: list[SpanRecord] = []  # spans to resume once the child the path went into is done
    while True:
        visited[id(current)] = current
        best, best_end = _latest_child(trace, current, cursor, visited, producer_of)
        if best is not None and best_end > current.start_ns:
            own[id(current)] = own.get(id(current), 0) + cursor - best_end
            cursor = best_end
            returns.append(current)
            current = best
            continue
        begin = max(current.start_ns, first_ns)
        if cursor > begin:
            own[id(current)] = own.get(id(current), 0) + cursor - begin
            cursor = begin
        producer = producer_of.get(id(current))
        if producer is not None and id(producer) not in visited:
            # A consumer waited on its message, even when it ran inside another span.
            wait_start = current.queue_wait_start_ns
            if wait_start is None:  # no recorded wait: from the end of the send span
                wait_start = producer.end_ns
            wait_start = min(max(wait_start, producer.start_ns), cursor)
            waited[id(current)] = cursor - wait_start
            cursor = wait_start
            current = producer
            returns.clear()
            continue
        if returns:
            current = returns.pop()
            continue
        parent = by_id.get(current.parent_span_id) if current.parent_span_id else None
        if parent is not None and id(parent) not in visited:
            current = parent
            continue
        break
    before: float | None = None
    if current.kind == "CONSUMER" and id(current) not in producer_of:
        before = current.queue_wait_ms
    steps = [
        PathStep(
            span,
            own.get(key, 0) / 1e6,
            waited[key] / 1e6 if key in waited else None,
        )
        for key, span in visited.items()
    ]
    steps.sort(key=lambda step: step.span.start_ns)
    return CriticalPath(trace, steps, before)
