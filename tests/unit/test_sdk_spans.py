"""The lean span recorder gives exporters and processors what the SDK's own tracer gives them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode

import hoptrace
from hoptrace.core import spans as spans_module
from hoptrace.core._sdk_spans import HopSpan


def _swap_provider(provider: object) -> object:
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return previous


@pytest.fixture
def install() -> Iterator[Any]:
    """Install a provider built from the given keyword arguments; return its exporter."""
    providers: list[tuple[TracerProvider, object]] = []

    def build(**kwargs: Any) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(**kwargs)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers.append((provider, _swap_provider(provider)))
        return exporter

    yield build
    for provider, previous in reversed(providers):
        _swap_provider(previous)
        provider.shutdown()


def one_hop(fail: bool = False) -> tuple[str | None, str | None]:
    """Publish in a transaction and handle the message; return (transaction ID, handler's)."""
    with hoptrace.transaction("checkout") as tx, \
            hoptrace.produce_scope({}, "orders", "rabbitmq", message_id="m-1") as send:
        pass
    seen = None
    try:
        with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq", message_id="m-1",
                                    attributes={"messaging.rabbitmq.destination.routing_key": "o"}):
            seen = hoptrace.current_transaction_id()
            current = trace.get_current_span()
            current.set_attribute("app.user", "u-1")
            current.set_attribute("app.bad", object())  # invalid: dropped, as the SDK does
            current.add_event("validated", {"items": 3})
            if fail:
                raise ValueError("bad order")
    except ValueError:
        pass
    return tx.transaction_id, seen


def shape(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter reads from a span, with the random parts reduced to their relations."""
    return {
        "name": span.name,
        "kind": span.kind,
        "attributes": {k: v for k, v in span.attributes.items()
                       if k not in ("hoptrace.transaction.id", "hoptrace.queue_wait_ms")},
        "events": [(e.name, dict(e.attributes or {}).get("items"),
                    dict(e.attributes or {}).get("exception.type")) for e in span.events],
        "links": len(span.links),
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "sampled": span.context.trace_flags.sampled,
        "has_parent": span.parent is not None,
    }


@pytest.mark.parametrize("fail", [False, True])
def test_lean_spans_match_the_sdk_spans(install: Any, fail: bool) -> None:
    exported = {}
    for fast in (False, True):
        hoptrace.configure(fast_spans=fast)
        exporter = install()
        tx, seen = one_hop(fail)
        assert seen == tx
        finished = exporter.get_finished_spans()
        exported[fast] = finished
        by_name = {s.name: s for s in finished}
        send, process = by_name["send orders"], by_name["process orders"]
        assert process.parent.span_id == send.context.span_id
        assert send.parent.span_id == by_name["checkout"].context.span_id
        assert len({s.context.trace_id for s in finished}) == 1
        assert process.attributes["hoptrace.transaction.id"] == tx
    slow, lean = ([shape(s) for s in exported[mode]] for mode in (False, True))
    assert lean == slow
    assert all(isinstance(s, HopSpan) for s in exported[True])
    assert not any(isinstance(s, HopSpan) for s in exported[False])
    if fail:
        process = next(s for s in exported[True] if s.name == "process orders")
        assert process.status.status_code is StatusCode.ERROR
        assert "ValueError: bad order" in process.events[-1].attributes["exception.stacktrace"]


def test_default_sampler_respects_unsampled_and_dropping_roots(install: Any) -> None:
    exporter = install(sampler=ParentBased(ALWAYS_OFF))
    with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
        assert not trace.get_current_span().is_recording()
    assert send.carrier["traceparent"].endswith("-00")
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq") as scope:
        assert scope.span is not None and not scope.span.is_recording()
    assert exporter.get_finished_spans() == ()
    # An unsampled remote parent under the default sampler records nothing either.
    exporter = install()
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq"):
        assert not trace.get_current_span().is_recording()
    assert exporter.get_finished_spans() == ()


def test_a_ratio_sampler_takes_the_generic_path_and_decides_by_trace_id(install: Any) -> None:
    exporter = install(sampler=ParentBased(TraceIdRatioBased(0.5)))
    for _ in range(200):
        with hoptrace.produce_scope({}, "orders", "rabbitmq"):
            pass
    kept = exporter.get_finished_spans()
    ratio = TraceIdRatioBased(0.5)
    assert 0 < len(kept) < 200
    assert all(s.context.trace_id & ratio.TRACE_ID_LIMIT < ratio.bound for s in kept)


class Tagging(Sampler):
    """Records without sampling, and adds an attribute, as custom samplers may."""

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None
                      ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {**(attributes or {}), "sampler.tag": "x"})

    def get_description(self) -> str:
        return "Tagging"


def test_custom_sampler_attributes_and_record_only(install: Any) -> None:
    seen: list[ReadableSpan] = []

    class Seen(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    exporter = install(sampler=Tagging())
    trace.get_tracer_provider().add_span_processor(Seen())  # type: ignore[attr-defined]
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        pass
    # RECORD_ONLY: processors see the span, the exporting processor (sampled only) does not.
    assert exporter.get_finished_spans() == ()
    (span,) = seen
    assert span.attributes["sampler.tag"] == "x"
    assert span.attributes["messaging.destination.name"] == "orders"
    assert not span.context.trace_flags.sampled


def test_on_start_processors_can_tag_the_span(install: Any) -> None:
    class Tag(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("tenant", "acme")

    exporter = install()
    trace.get_tracer_provider().add_span_processor(Tag())  # type: ignore[attr-defined]
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes["tenant"] == "acme"
    assert span.attributes["messaging.system"] == "rabbitmq"


def test_span_limits_apply_to_hoptrace_attributes(install: Any) -> None:
    exporter = install(span_limits=SpanLimits(max_span_attribute_length=5, max_links=1))
    carriers = []
    for _ in range(3):
        with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
            carriers.append(send.carrier)
    exporter.clear()
    with hoptrace.receive_scope([(c, None) for c in carriers], "orders", "rabbitmq"):
        pass
    with hoptrace.consume_scope(carriers[0], "orders", "rabbitmq"):
        pass
    receive, process = exporter.get_finished_spans()
    assert len(receive.links) == 1
    assert receive.attributes["messaging.batch.message_count"] == 3
    assert process.attributes["messaging.destination.name"] == "order"
    assert process.attributes["hoptrace.transaction.id"] == \
        hoptrace.current_transaction_id(hoptrace.extract(carriers[0]))[:5]


def test_fixed_span_id_is_used(install: Any) -> None:
    exporter = install()
    from opentelemetry.context import Context

    span = spans_module.start_span("fixed", Context(), SpanKind.INTERNAL, {"a": 1}, span_id=0xABC)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.context.span_id == 0xABC


def test_fast_spans_off_and_foreign_tracers_use_the_tracer_itself(install: Any) -> None:
    exporter = install()
    hoptrace.configure(fast_spans=False)
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert isinstance(trace.get_current_span(), SdkSpan)
    hoptrace.configure(fast_spans=True)
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert isinstance(trace.get_current_span(), HopSpan)
    assert len(exporter.get_finished_spans()) == 2


def test_ended_span_ignores_changes_and_ends_once(install: Any) -> None:
    ended: list[ReadableSpan] = []

    class Count(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            ended.append(span)

    install()
    trace.get_tracer_provider().add_span_processor(Count())  # type: ignore[attr-defined]
    with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
        span = trace.get_current_span()
    span.end()
    span.set_attribute("late", 1)
    span.add_event("late")
    span.set_status(StatusCode.ERROR)
    span.update_name("renamed")
    assert len(ended) == 1
    assert "late" not in ended[0].attributes
    assert ended[0].events == () and ended[0].name == "send orders"
    assert ended[0].status.status_code is StatusCode.UNSET
    assert send.span is None
