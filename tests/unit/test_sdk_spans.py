"""Spans with the OTel SDK's tracer: every recording span is ``tracer.start_span``'s own.

hoptrace starts every span that records through the SDK tracer's ``start_span``, with
``fast_spans`` on or off; what it adds around it is checked here: a span ID fixed in advance
(the first delivery of a RabbitMQ message, which a redelivery links to) given through a
wrapper of the tracer's ID generator, the probe that decides which tracers get that and the
sampling shortcuts, and its fallbacks. The shortcuts themselves are in
``test_sdk_spans_dropped.py`` and ``test_sdk_spans_root.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider, _Span
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

import hoptrace
from hoptrace.core import spans as spans_module
from hoptrace.core._sdk_spans import PendingIds

# --------------------------------------------------------------------------------------------
# The harness: one provider, two runs, everything observable recorded.
# --------------------------------------------------------------------------------------------


def _swap_provider(provider: object) -> object:
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return previous


class CountingIds(IdGenerator):
    """IDs 1, 2, 3 … in call order, so two runs of one script get the same IDs."""

    def __init__(self, random: bool) -> None:
        self.count = 0
        self.random = random

    def generate_span_id(self) -> int:
        self.count += 1
        return self.count

    def generate_trace_id(self) -> int:
        self.count += 1
        return (self.count << 64) | 0xF00D

    def is_trace_id_random(self) -> bool:
        return self.random


def ctx_fields(sc: SpanContext | None) -> Any:
    """Every field of a span context (trace state as its header)."""
    if sc is None:
        return None
    return (sc.trace_id, sc.span_id, sc.is_remote, int(sc.trace_flags), sc.trace_state.to_header())


def ts(value: int | None) -> Any:
    """A timestamp the script chose (small numbers) as is; one the SDK took from the clock as 'now'."""
    if value is None:
        return None
    return value if value < 10**12 else "now"


def attr_fields(attributes: Mapping[str, Any] | None) -> Any:
    """Attributes in order, each value with its type; plus the dropped count if the mapping has one."""
    if attributes is None:
        return None
    return ([(k, type(v).__name__, v) for k, v in attributes.items()],
            getattr(attributes, "dropped", None))


def exported(span: ReadableSpan) -> dict[str, Any]:
    """Every field an exporter reads from a finished span, timestamps reduced as in :func:`ts`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = span.instrumentation_info
    scope = span.instrumentation_scope
    try:
        as_json: Any = json.loads(span.to_json())
    except TypeError as exc:  # bytes values: the SDK's to_json cannot encode them
        as_json = repr(exc)
    else:
        for key in ("start_time", "end_time"):
            as_json[key] = as_json[key] is not None
        for event in as_json["events"]:
            event["timestamp"] = None
    return {
        "type": type(span).__name__,
        "name": span.name,
        "context": ctx_fields(span.context),
        "parent": ctx_fields(span.parent),
        "kind": span.kind,
        "start_time": ts(span.start_time),
        "end_time": ts(span.end_time),
        "attributes": attr_fields(span.attributes),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, ts(e.timestamp), attr_fields(e.attributes),
                    getattr(e, "dropped_attributes", None)) for e in span.events],
        "dropped_events": span.dropped_events,
        "links": [(ctx_fields(link.context), attr_fields(link.attributes),
                   getattr(link, "dropped_attributes", None)) for link in span.links],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": (dict(span.resource.attributes), span.resource.schema_url),
        "scope": None if scope is None else (
            scope.name, scope.version, scope.schema_url,
            dict(getattr(scope, "attributes", None) or {})),
        "instrumentation_info": None if info is None else (info.name, info.version),
        "json": as_json,
    }


class RecordingSampler(Sampler):
    """Records what it is asked, tags the span and, by the span name, records or samples."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None
                      ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        self.log.append((
            "sample", trace_id, name, kind, attr_fields(attributes),
            None if links is None else [(ctx_fields(k.context), attr_fields(k.attributes))
                                        for k in links],
            dict(baggage.get_all(parent_context)), ctx_fields(parent),
        ))
        decision = Decision.RECORD_ONLY if name.startswith("r") else Decision.RECORD_AND_SAMPLE
        state = (parent.trace_state if parent.is_valid else TraceState()).add("smp", "1")
        return SamplingResult(decision, {**(attributes or {}), "sampler.tag": name}, state)

    def get_description(self) -> str:
        return "RecordingSampler"


class RecordingProcessor(SpanProcessor):
    """Records what on_start / _on_ending / on_end see, and keeps what on_end was given."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.ended: list[tuple[ReadableSpan, dict[str, Any]]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        parent = trace.get_current_span(parent_context).get_span_context()
        self.log.append((
            "on_start", isinstance(span, SdkSpan), span.is_recording(), span.name,
            attr_fields(span.attributes), len(span.links), span.start_time is not None,
            None if parent_context is None else dict(baggage.get_all(parent_context)),
            ctx_fields(parent),
        ))

    def _on_ending(self, span: Any) -> None:
        self.log.append(("on_ending", isinstance(span, SdkSpan), span.is_recording(), span.name))

    def on_end(self, span: ReadableSpan) -> None:
        fields = exported(span)
        self.log.append(("on_end", isinstance(span, SdkSpan), fields))
        self.ended.append((span, fields))


@pytest.fixture
def install() -> Iterator[Any]:
    """Install a provider built from the given keyword arguments; return its exporter."""
    providers: list[tuple[TracerProvider, object]] = []

    def build(**kwargs: Any) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(shutdown_on_exit=False, **kwargs)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers.append((provider, _swap_provider(provider)))
        return exporter

    yield build
    for provider, previous in reversed(providers):
        _swap_provider(previous)
        provider.shutdown()


@pytest.mark.parametrize("fast", [True, False])
def test_recording_spans_are_the_sdk_s_own_either_way(install: Any, fast: bool) -> None:
    exporter = install()
    hoptrace.configure(fast_spans=fast)
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert type(trace.get_current_span()) is _Span
    with hoptrace.transaction("checkout"):
        assert type(trace.get_current_span()) is _Span
    assert [type(s) for s in exporter.get_finished_spans()] == [ReadableSpan, ReadableSpan]


def one_hop(fail: bool) -> tuple[str | None, str | None]:
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
            current.set_attribute("app.bad", object())
            current.add_event("validated", {"items": 3})
            if fail:
                raise ValueError("bad order")
    except ValueError:
        pass
    return tx.transaction_id, seen


@pytest.mark.parametrize("fail", [False, True])
def test_a_whole_hop_exports_the_same_spans_either_way(fail: bool) -> None:
    runs = {}
    for fast in (False, True):
        hoptrace.configure(fast_spans=fast, transaction_id_generator=lambda: "tx-0001")
        exporter = InMemorySpanExporter()
        provider = TracerProvider(id_generator=CountingIds(True), shutdown_on_exit=False,
                                  span_limits=SpanLimits(max_span_attribute_length=12))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        previous = _swap_provider(provider)
        try:
            tx, seen = one_hop(fail)
        finally:
            _swap_provider(previous)
            provider.shutdown()
        assert seen == tx == "tx-0001"
        finished = [exported(s) for s in exporter.get_finished_spans()]
        for fields in finished:  # the queue wait is a measured time
            fields["attributes"][0][:] = [
                (k, t, "wait" if k == "hoptrace.queue_wait_ms" else v)
                for k, t, v in fields["attributes"][0]
            ]
            fields.pop("json")
        runs[fast] = finished
    assert [f["name"] for f in runs[True]] == ["send orders", "checkout", "process orders"]
    assert runs[True] == runs[False]


def test_samplers_and_processors_see_the_baggage_of_the_parent_context(install: Any) -> None:
    seen: dict[bool, list[Any]] = {}
    for fast in (False, True):
        hoptrace.configure(fast_spans=fast, transaction_id_generator=lambda: "tx-0001")
        log: list[Any] = []
        install(sampler=RecordingSampler(log), id_generator=CountingIds(True))
        trace.get_tracer_provider().add_span_processor(RecordingProcessor(log))  # type: ignore[attr-defined]
        ctx = baggage.set_baggage("tenant", "acme", Context())
        spans_module.start_span("send orders", ctx, SpanKind.PRODUCER, {"a": 1}).end()
        with hoptrace.transaction("checkout"), hoptrace.produce_scope({}, "orders", "rabbitmq"):
            pass
        seen[fast] = log
    samples = [entry for entry in seen[True] if entry[0] == "sample"]
    starts = [entry for entry in seen[True] if entry[0] == "on_start"]
    assert samples[0][6] == {"tenant": "acme"} and starts[0][7] == {"tenant": "acme"}
    # produce_scope's span starts in the transaction's context: its baggage has the ID entry.
    assert len(samples[2][6]) == 1 and len(starts[2][7]) == 1
    assert seen[True] == seen[False]


def test_a_ratio_sampler_takes_the_generic_path_and_decides_by_trace_id(install: Any) -> None:
    exporter = install(sampler=ParentBased(TraceIdRatioBased(0.5)))
    for _ in range(200):
        with hoptrace.produce_scope({}, "orders", "rabbitmq"):
            pass
    kept = exporter.get_finished_spans()
    ratio = TraceIdRatioBased(0.5)
    assert 0 < len(kept) < 200
    assert all(s.context.trace_id & ratio.TRACE_ID_LIMIT < ratio.bound for s in kept)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("root", [True, False])
def test_a_fixed_span_id_is_used_and_the_generator_is_asked_nothing_else(
    install: Any, fast: bool, root: bool
) -> None:
    hoptrace.configure(fast_spans=fast)
    ids = CountingIds(True)
    exporter = install(id_generator=ids)
    parent = Context() if root else trace.set_span_in_context(NonRecordingSpan(SpanContext(
        7 << 64, 9, True, TraceFlags(1))), Context())
    span = spans_module.start_span("fixed", parent, SpanKind.CONSUMER, {"a": 1}, span_id=0xABC)
    span.end()
    # A root asks for its trace ID only; a child asks nothing.
    assert ids.count == (1 if root else 0)
    after = spans_module.start_span("next", parent, SpanKind.CONSUMER, {"a": 1})
    after.end()
    assert after.get_span_context().span_id == ids.count  # the generator's again
    done, following = exporter.get_finished_spans()
    assert done.context.span_id == 0xABC and following.context.span_id != 0xABC
    assert done.context.trace_id == (1 << 64 | 0xF00D if root else 7 << 64)
    tracer = spans_module.tracer()
    assert type(tracer.id_generator) is PendingIds and tracer.id_generator.inner is ids


def test_a_dropped_span_keeps_its_fixed_id_and_leaves_nothing_pending(install: Any) -> None:
    hoptrace.configure(fast_spans=False)
    ids = CountingIds(False)
    install(sampler=ALWAYS_OFF, id_generator=ids)
    span = spans_module.start_span("fixed", Context(), SpanKind.CONSUMER, {}, span_id=0xABC)
    assert not span.is_recording() and span.get_span_context().span_id == 0xABC
    tracer = spans_module.tracer()
    if hasattr(tracer, "_is_enabled"):  # SDK 1.40+: a disabled tracer asks for no ID at all
        enabled = tracer._is_enabled
        tracer._is_enabled = lambda: False
        spans_module.start_span("off", Context(), SpanKind.CONSUMER, {}, span_id=0xDEF)
        tracer._is_enabled = enabled
    count = ids.count
    other = spans_module.start_span("other", Context(), SpanKind.CONSUMER, {})
    assert other.get_span_context().span_id == count + 2  # a trace ID, then a span ID: its own


def test_fixed_ids_on_many_threads_go_each_to_its_own_span(install: Any) -> None:
    install()
    ctx = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        7 << 64, 9, True, TraceFlags(1))), Context())
    got: dict[int, list[tuple[int | None, int]]] = {}
    barrier = threading.Barrier(4)

    def work(worker: int) -> None:
        barrier.wait()
        mine = got[worker] = []
        for i in range(500):
            fixed = (worker << 32 | i + 1) if i % 2 else None
            span = spans_module.start_span("s", ctx, SpanKind.CONSUMER, {}, span_id=fixed)
            mine.append((fixed, span.get_span_context().span_id))
            span.end()

    threads = [threading.Thread(target=work, args=(n + 1,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pairs in got.values():
        assert len(pairs) == 500
        for fixed, span_id in pairs:
            if fixed is None:
                assert span_id >> 32 not in got  # a random ID, never another span's fixed one
            else:
                assert span_id == fixed


def _fresh_starter_cache() -> None:
    spans_module._starter_cache[:] = [None, None]
    spans_module._unfixed_logged[0] = False


class RenamedTracer(SdkTracer):
    """A tracer class of the SDK's module that hoptrace's probe does not know."""


RenamedTracer.__module__ = SdkTracer.__module__


def test_an_unknown_sdk_shape_gets_no_shortcut_yet_fixed_ids_with_one_debug_log(
    install: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = install(sampler=ALWAYS_OFF)
    tracer = spans_module.tracer()
    monkeypatch.setattr(tracer, "__class__", RenamedTracer)
    _fresh_starter_cache()
    caplog.set_level(logging.DEBUG, logger="hoptrace")
    unsampled = SpanContext(7 << 64, 9, True, TraceFlags(0))
    for _ in range(3):
        assert spans_module.dropped_child(unsampled) is None  # not known: the caller starts it
        span = spans_module.start_span("s", Context(), SpanKind.INTERNAL, {"a": 1},
                                       span_id=0xABC)
        assert span.get_span_context().span_id == 0xABC  # start_span is still the SDK's
        span.end()
        _fresh_starter_cache()  # the probe's answer is kept per tracer, not per call
    notes = [r for r in caplog.records if "no sampling shortcuts" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG
    assert exporter.get_finished_spans() == ()


class VendorTracer(trace.Tracer):
    """A tracer hoptrace knows nothing about: it starts the SDK's spans its own way."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        return self.inner.start_as_current_span(*args, **kwargs)


def test_a_tracer_it_does_not_know_gets_its_own_ids_with_one_debug_log(
    install: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = install()
    vendor = VendorTracer(spans_module.tracer())
    monkeypatch.setattr(spans_module, "tracer", lambda: vendor)
    _fresh_starter_cache()
    caplog.set_level(logging.DEBUG, logger="hoptrace")
    for _ in range(3):
        span = spans_module.start_span("s", Context(), SpanKind.INTERNAL, {}, span_id=0xABC)
        assert span.is_recording() and span.get_span_context().span_id != 0xABC
        span.end()
    notes = [r for r in caplog.records if "fixed span ID" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG
    assert len(exporter.get_finished_spans()) == 3
    _fresh_starter_cache()


@pytest.mark.parametrize("change", ["start_span", "subclass", "override"])
def test_other_shapes_are_refused(install: Any, monkeypatch: pytest.MonkeyPatch,
                                  change: str) -> None:
    from opentelemetry.sdk import trace as sdk_trace

    from hoptrace.core import _sdk_spans

    install()
    tracer = spans_module.tracer()
    known = _sdk_spans.starter_for(tracer)
    assert known is not None and known.shortcuts and known.fixed_ids
    original = sdk_trace.Tracer.start_span

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs)

    if change == "start_span":  # a wrapper around start_span, e.g. another instrumentation's
        monkeypatch.setattr(sdk_trace.Tracer, "start_span", wrapped)
    elif change == "subclass":  # the SDK's start_span, in a class hoptrace does not know
        class Custom(sdk_trace.Tracer):
            pass

        monkeypatch.setattr(tracer, "__class__", Custom)
    else:  # a subclass with its own start_span
        class Overriding(sdk_trace.Tracer):
            start_span = wrapped

        monkeypatch.setattr(tracer, "__class__", Overriding)
    _sdk_spans.forget_probes()
    starter = _sdk_spans.starter_for(tracer)
    if change == "subclass":
        assert starter is not None and not starter.shortcuts and starter.fixed_ids
    else:
        assert starter is None
    monkeypatch.undo()
    _sdk_spans.forget_probes()


def test_default_sampler_respects_unsampled_and_dropping_roots(install: Any) -> None:
    exporter = install(sampler=ParentBased(ALWAYS_OFF))
    with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
        assert not trace.get_current_span().is_recording()
    assert send.carrier["traceparent"].endswith("-00")
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq") as scope:
        assert scope.span is not None and not scope.span.is_recording()
    assert exporter.get_finished_spans() == ()
    exporter = install()
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq"):
        assert not trace.get_current_span().is_recording()
    assert exporter.get_finished_spans() == ()


def test_on_start_processors_can_tag_the_span(install: Any) -> None:
    class Tagger(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("tenant", "acme")

    exporter = install()
    trace.get_tracer_provider().add_span_processor(Tagger())  # type: ignore[attr-defined]
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes["tenant"] == "acme"
    assert span.attributes["messaging.system"] == "rabbitmq"

