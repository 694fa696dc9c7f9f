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
import logging
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
from hoptrace.core import diagnostics, hop, metrics, propagation
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


class _Warnings(logging.Handler):
    """The log lines hoptrace writes while a scope opens (hostile headers are warned of)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


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
    warned = _Warnings()
    diagnostics.logger.addHandler(warned)
    before = get_current()
    scope = make()
    try:
        scope.open()
    finally:
        diagnostics.logger.removeHandler(warned)
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
    opened["warnings"] = warned.lines
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


@pytest.mark.parametrize("c_open", [True, False], ids=["c-open", "python-open"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_shortcut_opens_what_the_general_path_opens(
    sampler: str, settings: dict[str, Any], c_open: bool, install: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ways the shortcut opens: in one C call (``hop._open_dropped_c``) where it
    applies, and through the Python steps alone."""
    if not c_open:
        monkeypatch.setattr(hop, "_open_dropped_c", None)
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


#: Valid carriers of each kind the C reader takes (pairs of bytes or str, a dict, a tuple):
#: the producer's span unsampled, so the ratio sampler drops the child.
_UNSAMPLED_TP = "00-" + "d" * 32 + "-" + "e" * 16 + "-00"
READABLE: list[Any] = [
    [("traceparent", _UNSAMPLED_TP.encode()), ("x-transaction-id", b"c" * 32),
     ("baggage", b"transaction.id=" + b"c" * 32),
     ("x-hoptrace-sent-ns", str(NOW_NS - 3_000_000).encode())],
    [("traceparent", _UNSAMPLED_TP), ("baggage", "transaction.id=" + "c" * 32)],
    (("traceparent", _UNSAMPLED_TP.encode()), ("x-hoptrace-sent-ns", str(NOW_NS + 7).encode())),
    {"traceparent": _UNSAMPLED_TP, "x-transaction-id": "c" * 32},
    [("traceparent", _UNSAMPLED_TP.encode())],
]


def test_a_readable_carrier_opens_through_one_c_read_without_read(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut reads a valid carrier as the propagation-only path does (no read(), the
    C reader's tuple kept until :attr:`incoming` is asked for), and still opens what the
    general path opens; read() is left for what the C reader does not take."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)
    monkeypatch.setattr(hop, "_open_dropped_c", None)  # the Python steps (C: below)
    read_calls: list[object] = []
    kept: list[object] = []
    real_read = hop.read
    real_enter = hop.consume_scope._enter

    def counted_read(carrier: object, settings: Any) -> Any:
        read_calls.append(carrier)
        return real_read(carrier, settings)

    def enter(self: hop.consume_scope, *args: Any) -> None:
        kept.append(type(self._incoming))
        real_enter(self, *args)

    monkeypatch.setattr(hop, "read", counted_read)
    monkeypatch.setattr(hop.consume_scope, "_enter", enter)
    for carrier in READABLE:
        read_calls.clear()
        kept.clear()
        result = _compare(functools.partial(
            hop.consume_scope, carrier, "orders", "kafka", sent_ns=NOW_NS - 9_000_000,
        ), ids, exporter, monkeypatch)
        if propagation._read_incoming is not None:
            assert read_calls == [carrier], carrier  # the general run's read() only
            assert kept == [propagation.Incoming, tuple]  # general, then the shortcut
        else:  # HOPTRACE_PURE_PYTHON: no C reader, read() both ways
            assert read_calls == [carrier, carrier] and kept == [propagation.Incoming] * 2
        assert result["span"][0] == "NonRecordingSpan" and not result["span"][2]
        assert result["active"].trace_id == int("d" * 32, 16) and result["exported"] == []
        assert result["incoming"]["span_context"].span_id == int("e" * 16, 16)
    # A carrier the C reader does not take goes through read() on the shortcut as well.
    read_calls.clear()
    hostile = [("traceparent", _UNSAMPLED_TP.encode()), ("baggage", b"%%%=,,=")]
    result = _compare(functools.partial(hop.consume_scope, hostile, "orders", "kafka"),
                      ids, exporter, monkeypatch)
    assert read_calls == [hostile, hostile]
    assert result["incoming"]["rejected"] == ("baggage.format",)
    assert result["warnings"] and "baggage" in result["warnings"][0][1]


def test_metrics_on_see_the_same_delivery_both_ways(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        for carrier in [*READABLE, *CARRIERS[9:20]]:
            result = _compare(functools.partial(
                _kafka.record_scope, "orders", 3, 42, b"k", carrier, NOW_NS // 10**6 - 5, "g",
            ), ids, exporter, monkeypatch)
            assert result["metrics"] and result["metrics"][0][3][
                "messaging.consumer.group.name"] == "g"
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


C_OPEN = hop._open_dropped_c


@pytest.mark.skipif(C_OPEN is None, reason="the C module is not in use")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_c_open_opens_a_dropped_child_in_one_call(
    sampler: str, install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_speedups.open_dropped`` opens the scope by itself (no read(), no _enter) where the
    sampler drops the child of a full context, hands the general path what it read where the
    sampler may keep it (the sampler asked once), and opens what the Python steps open."""
    _exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(fast_spans=True)
    answers: list[int] = []
    asked: list[object] = []

    def spy(*args: Any) -> Any:
        result = C_OPEN(*args)
        answers.append(-1 if result is None else len(result))
        return result

    real_dropped = hop._dropped_child

    def sampler_asked(*args: Any) -> Any:
        asked.append(args[0])
        return real_dropped(*args)

    hop.consume_scope(READABLE[0], "orders", "kafka").open().close()  # metrics seen off
    if sampler != "custom":  # (the unsampled producer: a known sampler drops the child)
        monkeypatch.setattr(hop.consume_scope, "_enter", None)  # the C open needs none
    monkeypatch.setattr(hop, "_open_dropped_c", spy)
    scope = hop.consume_scope(READABLE[0], "orders", "kafka", message_id="m-1")
    ids.rng = random.Random(11)
    scope.open()
    try:
        ctx: Any = get_current()
        span: Any = ctx[SPAN_KEY]
        if sampler != "custom":
            assert answers == [7] and scope.span is span and not span.is_recording()
            assert scope.span_context == span.get_span_context()
            assert span.get_span_context().trace_id == int("d" * 32, 16)
            assert hoptrace.current_hop() == ("kafka", "orders", "m-1")
            assert scope.transaction_id == "c" * 32 and scope.queue_wait_ms is not None
        else:  # a sampler hoptrace does not know: the general path, not asked again
            assert answers == [1] and scope.span is span and span.get_span_context().is_valid
    finally:
        scope.close()
    # dropped_hop patched away from the C entry: the C open is not used
    monkeypatch.setattr(hop, "_dropped_child", sampler_asked)
    answers.clear()
    monkeypatch.setattr(hop.consume_scope, "_enter", _REAL_ENTER)
    hop.consume_scope(READABLE[0], "orders", "kafka").open().close()
    assert answers == [] and len(asked) == 1


_REAL_ENTER = hop.consume_scope._enter


@pytest.mark.skipif(C_OPEN is None, reason="the C module is not in use")
def test_the_c_open_of_a_failing_child_counts_it_and_goes_on(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dropped child that cannot be made (its ID generator raises) is counted once, and the
    C open attaches the producer's context with no span, as the Python steps do."""
    _exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)
    hop.consume_scope(READABLE[0], "orders", "kafka").open().close()  # metrics seen off
    answers: list[int] = []

    def spy(*args: Any) -> Any:
        result = C_OPEN(*args)
        answers.append(-1 if result is None else len(result))
        return result

    def broken() -> int:
        raise RuntimeError("no IDs today")

    monkeypatch.setattr(hop, "_open_dropped_c", spy)
    monkeypatch.setattr(ids, "generate_span_id", broken)
    hoptrace.reset_diagnostics()
    scope = hop.consume_scope(READABLE[0], "orders", "kafka").open()
    try:
        ctx: Any = get_current()
        assert answers == [7] and scope.span is None
        assert ctx[SPAN_KEY].get_span_context().span_id == int("e" * 16, 16)
        assert scope.span_context == ctx[SPAN_KEY].get_span_context()
        assert hoptrace.diagnostics() == {"internal_error.consume_scope.span": 1}
    finally:
        scope.close()


@pytest.mark.skipif(C_OPEN is None, reason="the C module is not in use")
def test_the_c_open_leaks_nothing(install: Any) -> None:
    """400,000 C opens and closes leave the reference count and allocated blocks flat."""
    import gc
    import sys

    install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.configure(fast_spans=True)
    carrier = READABLE[0]
    before_ctx = get_current()

    def run(n: int) -> None:
        for _ in range(n):
            scope = hop.consume_scope(carrier, "orders", "kafka")
            scope.open()
            scope.close()

    run(2000)
    gc.collect()
    refs = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    blocks = sys.getallocatedblocks()
    run(400_000)
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200
    if refs is not None:
        assert sys.gettotalrefcount() - refs < 200
    assert get_current() is before_ctx
