"""A hop whose span the sampler is known to drop: no span start, the same context on the wire.

Under ``ParentBased`` with static parent delegates (the SDK's default sampler, and
``ParentBased(TraceIdRatioBased(r))``), a child of an unsampled parent is dropped whatever its
name, attributes or links. ``produce_scope`` and ``consume_scope`` then ask for that
non-recording span directly (``Starter.dropped_child``) instead of building the span's
attributes and starting it. These tests run each hop three ways with the same seeded ID
generator: that shortcut, ``tracer.start_span`` with ``fast_spans`` on but the shortcut
switched off ("generic"), and ``tracer.start_span`` with ``fast_spans=False`` ("sdk"). The headers sent and the context the
handler runs in must be the same every way.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

import hoptrace
from hoptrace.core import _sdk_spans, hop, semconv, spans
from hoptrace.core._sdk_spans import Starter
from hoptrace.core.otel_shims import tracer

TX = "c" * 32
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN_ID = 0xB7AD6B7169203331
STATE = TraceState([("vendor", "x1"), ("other", "y2")])


class SeededIds(IdGenerator):
    """IDs from a seeded generator: the same sequence for every run of a scenario."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


class Counting(Sampler):
    """A custom sampler that drops everything and counts the questions."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        self.asked.append(name)
        return ALWAYS_OFF.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "Counting"


class Shortcuts:
    """Counts the non-recording spans the shortcut returned."""

    def __init__(self) -> None:
        self.taken = 0


@pytest.fixture
def shortcuts(monkeypatch: pytest.MonkeyPatch) -> Shortcuts:
    seen = Shortcuts()
    original = _sdk_spans.dropped_child_of  # (the C module's, when built)

    def counted(self: Starter, parent: SpanContext, span_id: int | None = None) -> Any:
        span = original(self, parent, span_id)
        seen.taken += span is not None
        return span

    monkeypatch.setattr(_sdk_spans, "dropped_child_of", counted)
    return seen


def install(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        sampler=sampler or ParentBased(TraceIdRatioBased(0.01)), id_generator=SeededIds(),
        shutdown_on_exit=False,
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return provider, exporter


@pytest.fixture(autouse=True)
def _provider_restored() -> Iterator[None]:
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    yield
    trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]


WAYS = ("shortcut", "sdk", "generic")  # "generic" patches hop.py: it runs last


def way(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure hoptrace for one of the three ways of starting the hop's span."""
    hoptrace.configure(fast_spans=name != "sdk")
    if name == "generic":  # the shortcuts say "don't know": tracer.start_span runs
        monkeypatch.setattr(spans, "dropped_child", lambda parent, span_id=None: None)
        monkeypatch.setattr(  # a transaction's span, started lazily (test_sdk_spans_root.py)
            _sdk_spans, "start_lazy_of",
            lambda self, name, context, kind, attributes: self.tracer.start_span(
                name, context=context, kind=kind, attributes=attributes()),
        )


def wire(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers that carry the context (the send time differs by run)."""
    return {k: v for k, v in headers.items() if k != "x-hoptrace-sent-ns"}


def handler_view() -> dict[str, Any]:
    """What a handler sees of its context."""
    span = trace.get_current_span()
    sc = span.get_span_context()
    return {
        "span_type": type(span).__name__, "recording": span.is_recording(),
        "trace_id": sc.trace_id, "span_id": sc.span_id, "flags": int(sc.trace_flags),
        "state": sc.trace_state.to_header(), "remote": sc.is_remote, "valid": sc.is_valid,
        "baggage": dict(baggage.get_all()), "tx": hoptrace.current_transaction_id(),
        "hop": hoptrace.current_hop(),
        "onward": wire(hoptrace.inject({})),  # a message sent from the handler
    }


def incoming(flags: str, state: str | None = "vendor=x1,other=y2") -> dict[str, str]:
    headers = {
        "traceparent": f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-{flags}",
        "baggage": f"transaction.id={TX},tenant=acme",
    }
    if state is not None:
        headers["tracestate"] = state
    return headers


def consume(headers: dict[str, str], **kwargs: Any) -> tuple[dict[str, Any], Any]:
    with hoptrace.consume_scope(headers, "orders", "kafka", message_id="m-1", **kwargs) as scope:
        seen = handler_view()
    return seen, scope.span_context


@pytest.mark.parametrize("flags", ["00", "02"])  # unsampled; unsampled with the random flag
@pytest.mark.parametrize("state", ["vendor=x1,other=y2", None])
def test_consuming_an_unsampled_message_gives_the_handler_the_sdk_s_context(
    flags: str, state: str | None, shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    for name in WAYS:
        way(name, monkeypatch)
        _, exporter = install()
        seen[name] = consume(incoming(flags, state))
        assert exporter.get_finished_spans() == ()
    assert shortcuts.taken == 1  # the shortcut's run, and only that one
    assert seen["shortcut"] == seen["generic"] == seen["sdk"]
    view, active = seen["shortcut"]
    assert view["trace_id"] == TRACE_ID and view["recording"] is False
    assert view["span_id"] not in (0, PARENT_SPAN_ID) and f"{view['span_id']:016x}" == (
        view["onward"]["traceparent"][36:52])
    assert view["flags"] == 0 and view["state"] == (state or "")  # hoptrace reads the sampled bit
    assert view["tx"] == TX and view["baggage"] == {"transaction.id": TX, "tenant": "acme"}
    assert view["hop"] == hoptrace.HopInfo("kafka", "orders", "m-1")
    assert view["onward"]["traceparent"] == (
        f"00-{TRACE_ID:032x}-{view['span_id']:016x}-00")
    assert view["onward"].get("tracestate") == state
    assert active.span_id == view["span_id"]


@pytest.mark.parametrize("redelivered", [False, True])
def test_a_fixed_first_delivery_span_id_is_kept(
    redelivered: bool, shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    for name in WAYS:  # tracer.start_span takes it too, with fast_spans on or off
        way(name, monkeypatch)
        install()
        seen[name] = consume(incoming("00"), redelivered=redelivered)
    assert shortcuts.taken == 1 and seen["shortcut"] == seen["generic"] == seen["sdk"]
    first = hop.first_attempt_span_id(
        SpanContext(TRACE_ID, PARENT_SPAN_ID, True, TraceFlags(0)), "orders")
    assert (seen["shortcut"][0]["span_id"] == first) is not redelivered


def produce_under(parent: SpanContext) -> tuple[dict[str, Any], Any]:
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        with hoptrace.transaction(transaction_id=TX), hoptrace.produce_scope(
            {}, "orders", "kafka", message_id="m-1"
        ) as send:
            inside = handler_view()
    finally:
        context.detach(token)
    return wire(send.carrier), inside


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("flags", [0x00, 0x02])
def test_sending_under_an_unsampled_parent_sends_what_the_sdk_path_sends(
    remote: bool, flags: int, shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = SpanContext(TRACE_ID, PARENT_SPAN_ID, remote, TraceFlags(flags), STATE)
    seen = {}
    for name in WAYS:
        way(name, monkeypatch)
        _, exporter = install()
        seen[name] = produce_under(parent)
        assert exporter.get_finished_spans() == ()
    assert shortcuts.taken == 2  # the transaction's span and the send's, in the shortcut's run
    assert seen["shortcut"] == seen["generic"] == seen["sdk"]
    headers, inside = seen["shortcut"]
    trace_id, span_id, sent_flags = headers["traceparent"].split("-")[1:]
    assert int(trace_id, 16) == TRACE_ID and sent_flags == "00"
    # Not sampled; the random-trace-ID bit is whatever the SDK path gave (checked equal above):
    # newer SDKs inherit it, SDK 1.20 clears it.
    assert inside["flags"] & 0x01 == 0
    assert len(span_id) == 16 and int(span_id, 16) not in (0, PARENT_SPAN_ID)
    assert span_id == f"{inside['span_id']:016x}"  # the send span is current while sending
    assert headers["tracestate"] == STATE.to_header()
    assert f"transaction.id={TX}" in headers["baggage"]


def test_a_dropped_transaction_root_drops_its_send_the_same_way(
    shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    for name in WAYS:
        way(name, monkeypatch)
        _, exporter = install(ParentBased(TraceIdRatioBased(0.0)))
        with hoptrace.transaction(transaction_id=TX), hoptrace.produce_scope(
            {}, "orders", "kafka"
        ) as send:
            pass
        seen[name] = wire(send.carrier)
        assert exporter.get_finished_spans() == ()
    assert shortcuts.taken == 1 and seen["shortcut"] == seen["generic"] == seen["sdk"]
    assert seen["shortcut"]["traceparent"].endswith("-00")


def test_a_sampled_parent_still_records(shortcuts: Shortcuts) -> None:
    hoptrace.configure(fast_spans=True)
    _, exporter = install()
    headers = incoming("01")
    with hoptrace.consume_scope(headers, "orders", "kafka"):
        assert trace.get_current_span().is_recording()
        onward = hoptrace.inject({})
    with hoptrace.consume_scope(onward, "next", "kafka"):
        pass
    first, second = exporter.get_finished_spans()
    assert first.parent is not None and first.parent.span_id == PARENT_SPAN_ID
    assert first.context.trace_id == TRACE_ID and first.context.trace_flags.sampled
    assert first.attributes[semconv.TRANSACTION_ID] == TX
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert shortcuts.taken == 0


@pytest.mark.parametrize("where", ["root", "delegate"])
def test_a_custom_sampler_is_always_asked(
    where: str, shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = Counting()
    sampler = custom if where == "root" else ParentBased(
        TraceIdRatioBased(0.01), remote_parent_not_sampled=custom,
        local_parent_not_sampled=custom,
    )
    hoptrace.configure(fast_spans=True)
    install(sampler)
    view, _ = consume(incoming("00"))
    assert custom.asked == ["process orders"] and view["recording"] is False
    parent = SpanContext(TRACE_ID, PARENT_SPAN_ID, False, TraceFlags(0), STATE)
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        with hoptrace.produce_scope({}, "orders", "kafka"):
            pass
    finally:
        context.detach(token)
    assert custom.asked == ["process orders", "send orders"]
    assert shortcuts.taken == 0


def test_a_sampler_swapped_on_the_provider_is_seen(
    shortcuts: Shortcuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(fast_spans=True)
    install()
    consume(incoming("00"))
    assert shortcuts.taken == 1
    custom = Counting()
    tracer().sampler = custom  # type: ignore[attr-defined]
    consume(incoming("00"))
    assert custom.asked == ["process orders"] and shortcuts.taken == 1


def test_nothing_is_built_for_a_dropped_span(shortcuts: Shortcuts) -> None:
    hoptrace.configure(fast_spans=True)
    install()
    calls: list[str] = []

    def attrs() -> dict[str, str]:
        calls.append("built")
        return {"messaging.kafka.message.key": "k"}

    with hoptrace.consume_scope(incoming("00"), "orders", "kafka", attributes=attrs):
        with hoptrace.produce_scope({}, "next", "kafka", attributes=attrs):
            pass
    assert calls == [] and shortcuts.taken == 2
    with hoptrace.consume_scope(incoming("01"), "orders", "kafka", attributes=attrs):
        pass
    assert calls == ["built"]


def test_metrics_are_recorded_for_a_dropped_hop(shortcuts: Shortcuts) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from hoptrace.core import metrics

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(meters)
    try:
        hoptrace.configure(fast_spans=True)
        install()
        for _ in range(3):
            with hoptrace.consume_scope(incoming("00"), "orders", "kafka"):
                with hoptrace.produce_scope({}, "next", "kafka"):
                    pass
        data = reader.get_metrics_data()
        values = {
            (m.name, p.attributes["messaging.destination.name"]): p.value
            for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
            for p in m.data.data_points
            if m.name in (metrics.SENT_MESSAGES, metrics.CONSUMED_MESSAGES)
        }
    finally:
        metrics.use_meter_provider(None)
        meters.shutdown()
    assert values == {(metrics.CONSUMED_MESSAGES, "orders"): 3,
                      (metrics.SENT_MESSAGES, "next"): 3}
    assert shortcuts.taken == 6


def test_a_failing_id_generator_is_counted_and_the_handler_still_runs(
    shortcuts: Shortcuts,
) -> None:
    hoptrace.configure(fast_spans=True)
    provider, _ = install()

    def broken() -> int:
        raise RuntimeError("no IDs today")

    provider.id_generator.generate_span_id = broken  # type: ignore[method-assign]
    ran = []
    with hoptrace.consume_scope(incoming("00"), "orders", "kafka") as scope:
        ran.append(hoptrace.current_transaction_id())
        sc = trace.get_current_span().get_span_context()
    assert ran == [TX] and scope.span is None
    assert sc.trace_id == TRACE_ID and sc.span_id == PARENT_SPAN_ID  # the producer's, as before
    assert hoptrace.diagnostics() == {"internal_error.consume_scope.span": 1}
