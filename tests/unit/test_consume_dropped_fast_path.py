"""consume_scope's shortcut for a span the sampler drops gives exactly what its general path gives.

With spans on, a message whose producer's span is the parent (trusted, parent mode, no
ambient span, no extra links, no redelivery flag) opens through ``_open``'s shortcut: when
the sampler is known to drop the child, the child is made straight from the producer's span
context, without the general path's parent span, links or attributes. Each case here opens
the same scope both ways (``consume_scope._dropped_fast`` on and off), from the same ambient
context, with the same seeded span IDs, transaction IDs and clock, under samplers that drop
(``ParentBased(TraceIdRatioBased)``), keep, or that hoptrace does not know, and compares
everything the open leaves behind: the attached Context, the scope's fields, the spans
exported, the metrics call, the diagnostics counts, and the context after close.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span
from test_consume_fast_path import (
    AMBIENTS,
    CARRIERS,
    NOW_NS,
    SETTINGS,
    _ambient,
    _fuzzed,
    seeded_consume,
)
from test_sdk_spans_dropped import Counting, SeededIds

import hoptrace
from hoptrace import _kafka
from hoptrace.core import hop
from hoptrace.core.context import SPAN_KEY, get_current

SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "ratio": lambda: ParentBased(TraceIdRatioBased(0.01)),
    "default": lambda: ParentBased(ALWAYS_ON),
    "remote drops": lambda: ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF),
    "custom": Counting,
}


@pytest.fixture
def install() -> Iterator[Callable[[Sampler], tuple[InMemorySpanExporter, SeededIds]]]:
    """Install an SDK provider with ``sampler`` and a seeded ID generator."""
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]

    def installed(sampler: Sampler) -> tuple[InMemorySpanExporter, SeededIds]:
        ids = SeededIds()
        made = TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False)
        exporter = InMemorySpanExporter()
        made.add_span_processor(SimpleSpanProcessor(exporter))
        trace._TRACER_PROVIDER = made  # type: ignore[attr-defined]
        return exporter, ids

    try:
        yield installed
    finally:
        trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
        hoptrace.reset()


def _span(value: object) -> object:
    """A span, by what it is: its type, span context, and what it records."""
    if not isinstance(value, Span):
        return value
    return (type(value).__name__, value.get_span_context(), value.is_recording(),
            getattr(value, "name", None), getattr(value, "parent", None),
            dict(getattr(value, "attributes", None) or {}),
            [(link.context, dict(link.attributes or {})) for link in
             getattr(value, "links", ())])


def _snapshot(
    make: Callable[[], hop.consume_scope], fast: bool, ids: SeededIds,
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Open ``make()`` through one path; return everything the open and close left."""
    counter = itertools.count(1)
    ids.rng = random.Random(11)
    exporter.clear()
    monkeypatch.setattr(hop.consume_scope, "_dropped_fast", fast)
    calls = seeded_consume(counter, monkeypatch)
    hoptrace.reset_diagnostics()
    before = get_current()
    scope = make()
    scope.open()
    ctx = get_current()
    opened = {
        "context": {key: _span(value) if value is not before.get(key) else "ambient's"
                    for key, value in ctx.items()},
        "hop span is the span": ctx.get(hop.HOP_SPAN_KEY) is ctx.get(SPAN_KEY),
        "scope span is the span": scope.span is ctx.get(SPAN_KEY),
        "attached": scope._attached is ctx,
        "incoming": vars(scope.incoming) if scope.incoming is not None else None,
        "transaction": scope.transaction_id,
        "queue wait": scope.queue_wait_ms,
        "span": _span(scope.span),
        "active": scope.span_context,
        "metrics": calls,
        "hop": hoptrace.current_hop(),
    }
    scope.close()
    opened["restored"] = get_current() is before
    opened["diagnostics"] = hoptrace.diagnostics()
    opened["exported"] = [
        (s.name, s.context, s.parent, dict(s.attributes or {}),
         [(link.context, dict(link.attributes or {})) for link in s.links])
        for s in exporter.get_finished_spans()
    ]
    return opened


def _compare(make: Callable[[], hop.consume_scope], ids: SeededIds,
             exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    general = _snapshot(make, False, ids, exporter, monkeypatch)
    fast = _snapshot(make, True, ids, exporter, monkeypatch)
    assert fast == general
    return fast


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_shortcut_opens_what_the_general_path_opens(
    sampler: str, settings: dict[str, Any], install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(fast_spans=True, **settings)
    compared = 0
    for carrier, ambient, sent_ns in itertools.product(
        [*CARRIERS, *_fuzzed(40)], AMBIENTS, (None, NOW_NS - 2_000_000)
    ):
        with _ambient(ambient):
            result = _compare(functools.partial(
                hop.consume_scope, carrier, "orders", "kafka", message_id="orders-0@42",
                sent_ns=sent_ns, attributes={"messaging.kafka.offset": 42},
            ), ids, exporter, monkeypatch)
        assert result["restored"]
        compared += 1
    assert compared == (len(CARRIERS) + 40) * len(AMBIENTS) * 2


def test_the_shortcut_is_taken_for_an_unsampled_kafka_record(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)
    taken = []
    general = hop.consume_scope._open_general

    def counted(self: hop.consume_scope, *args: Any) -> None:
        taken.append("general")
        general(self, *args)

    monkeypatch.setattr(hop.consume_scope, "_open_general", counted)
    carrier = CARRIERS[10]  # an unsampled traceparent and a transaction in the baggage
    result = _compare(functools.partial(
        _kafka.record_scope, "orders", 3, 42, b"k", carrier, 1_700_000_000_000, "g",
    ), ids, exporter, monkeypatch)
    assert taken == ["general"]  # the general run only: the shortcut's run opened by itself
    name, sc, recording = result["span"][:3]
    assert name == "NonRecordingSpan" and not recording and sc.trace_id == int("d" * 32, 16)
    assert sc.span_id not in (0, int("e" * 16, 16)) and result["active"] is not None
    assert result["transaction"] == "c" * 32 and result["exported"] == []


def test_a_failing_id_generator_fails_the_same_both_ways(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)

    def broken() -> int:
        raise RuntimeError("no IDs today")

    monkeypatch.setattr(ids, "generate_span_id", broken)
    result = _compare(functools.partial(
        hop.consume_scope, CARRIERS[10], "orders", "kafka"), ids, exporter, monkeypatch)
    assert result["span"] is None and result["diagnostics"] == {
        "internal_error.consume_scope.span": 1}
    assert result["active"].span_id == int("e" * 16, 16)  # the producer's, as before
