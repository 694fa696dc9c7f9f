"""The lean span recorder gives exporters, processors and samplers what the SDK's tracer gives.

The core of this file is a differential test: hypothesis generates a span's whole life (the
parent, the baggage, the sampler, tight span limits, the start attributes and links, then
attribute, event, link, exception, status and name changes, the end, and changes after the
end). Each life runs twice under one TracerProvider, once through ``tracer.start_span``
(``fast_spans=False``) and once through the recorder, with a counting ID generator reset
before each run, and every exported field, every sampler call and every processor callback
must come out the same.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

import hoptrace
from hoptrace.core import spans as spans_module
from hoptrace.core._sdk_spans import HopSpan
from hoptrace.core.spans import UncheckedAttributes

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


# Strategies ----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "messaging.system", ""])
PLAIN = st.one_of(
    st.text(max_size=8), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
)


class Tag(str):
    """A str subclass: valid for the SDK, but not a plain str."""


ODD = st.one_of(
    st.lists(st.text(max_size=6), max_size=3), st.tuples(st.integers(), st.integers()),
    st.binary(max_size=4), st.none(), st.builds(Tag, st.text(max_size=6)),
    st.lists(st.one_of(st.integers(), st.text(max_size=2)), max_size=3),
)
VALUES = st.one_of(PLAIN, PLAIN, ODD)
ATTRS = st.dictionaries(KEYS, VALUES, max_size=7)
PLAIN_ATTRS = st.dictionaries(KEYS.filter(bool), PLAIN, max_size=7)
TIMES = st.one_of(st.none(), st.integers(1, 10**9))
LIMIT = st.one_of(st.none(), st.integers(0, 4))
CONTEXTS = st.builds(
    lambda tid, sid, remote, flags, state: (tid, sid, remote, flags, state),
    st.sampled_from([0, 7, 0xABC]), st.sampled_from([0, 9, 0xDEF]), st.booleans(),
    st.sampled_from([0, 1, 2, 3]), st.sampled_from([(), (("v", "1"),), (("v", "1"), ("w", "2"))]),
)
LINKS = st.lists(st.tuples(CONTEXTS, st.one_of(st.none(), ATTRS)), max_size=4)
OPS = st.one_of(
    st.tuples(st.just("set_attribute"), KEYS, VALUES),
    st.tuples(st.just("set_attributes"), ATTRS),
    st.tuples(st.just("trusted"), KEYS, PLAIN),
    st.tuples(st.just("add_event"), st.sampled_from(["ev", "exception", ""]),
              st.one_of(st.none(), ATTRS), TIMES),
    st.tuples(st.just("add_link"), CONTEXTS, st.one_of(st.none(), ATTRS)),
    st.tuples(st.just("record_exception"), st.sampled_from(["value", "custom"]),
              st.one_of(st.none(), ATTRS), TIMES, st.booleans()),
    st.tuples(st.just("set_status"), st.sampled_from(list(StatusCode)),
              st.one_of(st.none(), st.text(max_size=5)), st.booleans(),
              st.one_of(st.none(), st.text(max_size=3))),
    st.tuples(st.just("update_name"), st.text(max_size=5)),
    st.tuples(st.just("end"), TIMES),
    st.tuples(st.just("exit"), st.booleans()),
)
PARENTS = st.one_of(
    st.just(("none",)), st.just(("invalid",)),
    st.tuples(st.just("context"), CONTEXTS.filter(lambda c: c[0] != 0 and c[1] != 0)),
    st.tuples(st.just("recording"), st.booleans()),
)
SAMPLERS = st.sampled_from(
    ["default", "parentbased_off", "parentbased_mixed", "always_on", "always_off", "ratio",
     "recording"]
)
LIMITS = st.fixed_dictionaries({
    "max_attributes": LIMIT, "max_events": LIMIT, "max_links": LIMIT,
    "max_span_attributes": LIMIT, "max_event_attributes": LIMIT, "max_link_attributes": LIMIT,
    "max_attribute_length": LIMIT, "max_span_attribute_length": LIMIT,
})
ENV_LIMITS = {
    "max_attributes": "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "max_events": "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "max_links": "OTEL_SPAN_LINK_COUNT_LIMIT",
    "max_span_attributes": "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "max_event_attributes": "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "max_link_attributes": "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "max_attribute_length": "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "max_span_attribute_length": "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
}


@contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_context(spec: tuple[Any, ...]) -> SpanContext:
    """A span context from a (trace ID, span ID, remote, flags, trace state) spec."""
    tid, sid, remote, flags, state = spec
    return SpanContext(tid, sid, remote, TraceFlags(flags), TraceState(list(state)))


def fail(kind: str) -> BaseException:
    """Raise and catch an exception, so it carries a traceback from here."""
    try:
        if kind == "custom":
            raise LookupError("no such order")
        raise ValueError("bad order")
    except Exception as exc:
        return exc


def apply(span: Any, op: tuple[Any, ...]) -> Any:
    """Apply one operation to a span; return what is observable about the call itself."""
    name = op[0]
    if name == "set_attribute":
        return span.set_attribute(op[1], op[2])
    if name == "set_attributes":
        return span.set_attributes(op[1])
    if name == "trusted":  # as hoptrace's scopes set their own attributes
        if isinstance(span, UncheckedAttributes):
            return span.set_unchecked_attribute(op[1], op[2])
        return span.set_attribute(op[1], op[2]) if span.is_recording() else None
    if name == "add_event":
        return span.add_event(op[1], op[2], op[3])
    if name == "add_link":
        add_link = getattr(span, "add_link", None)
        if add_link is None:  # SDKs before 1.23 have no add_link
            return "no add_link"
        return add_link(build_context(op[1]), op[2])
    if name == "record_exception":
        exc = fail(op[1])
        try:
            raise exc
        except Exception:  # SDK 1.20 formats the exception being handled
            return span.record_exception(exc, op[2], op[3], op[4])
    if name == "set_status":
        code, description, as_object, extra = op[1:]
        if as_object:
            return span.set_status(Status(code, description), extra)
        return span.set_status(code, description)
    if name == "update_name":
        return span.update_name(op[1])
    if name == "end":
        return span.end(op[1])
    if name == "exit":
        if op[1]:
            exc = fail("value")
            try:
                raise exc
            except Exception:
                return span.__exit__(type(exc), exc, exc.__traceback__)
        return span.__exit__(None, None, None)
    raise AssertionError(name)


def make_sampler(kind: str, log: list[Any]) -> Sampler:
    """The sampler named by ``kind``."""
    return {
        "default": ParentBased(ALWAYS_ON),
        "parentbased_off": ParentBased(ALWAYS_OFF),
        # Every delegate differs from its neighbour, so no two parent cases can be confused.
        "parentbased_mixed": ParentBased(
            ALWAYS_OFF, remote_parent_sampled=ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON,
            local_parent_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_OFF,
        ),
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "ratio": ParentBased(TraceIdRatioBased(0.5)),
        "recording": RecordingSampler(log),
    }[kind]


def run_life(script: dict[str, Any], fast: bool) -> dict[str, Any]:
    """Run one span's life under a fresh provider; return all that could be observed."""
    log: list[Any] = []
    exporter = InMemorySpanExporter()
    limits = script["limits"]
    if script["limits_from_env"]:
        values = {ENV_LIMITS[k]: str(v) for k, v in limits.items() if v is not None}
        with env(values):
            span_limits = SpanLimits()
    else:
        span_limits = SpanLimits(**limits)
    provider = TracerProvider(
        sampler=make_sampler(script["sampler"], log),
        resource=Resource.create({"service.name": "diff", "k": 1}),
        id_generator=CountingIds(script["random_ids"]),
        span_limits=span_limits,
        shutdown_on_exit=False,
    )
    recorder = RecordingProcessor(log)
    provider.add_span_processor(recorder)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = _swap_provider(provider)
    try:
        hoptrace.configure(fast_spans=fast)
        ctx = Context()
        parent_span: Any = None
        kind = script["parent"][0]
        if kind == "invalid":
            ctx = trace.set_span_in_context(INVALID_SPAN, ctx)
        elif kind == "context":
            ctx = trace.set_span_in_context(NonRecordingSpan(build_context(script["parent"][1])))
        elif kind == "recording":
            parent_span = spans_module.tracer().start_span("parent", context=Context())
            if script["parent"][1]:
                parent_span.end()
            ctx = trace.set_span_in_context(parent_span)
        for key, value in script["baggage"].items():
            ctx = baggage.set_baggage(key, value, ctx)
        links = None if script["links"] is None else [
            Link(build_context(spec), attrs) for spec, attrs in script["links"]
        ]
        span = spans_module.start_span(
            script["name"], ctx, script["kind"], dict(script["attributes"]), links,
            script["start_time"],
        )
        recorder_used = spans_module._recorder_for(spans_module.tracer()) is not None and fast
        results = [("started", type(span).__name__ if not isinstance(span, SdkSpan) else "Span",
                    span.is_recording(), ctx_fields(span.get_span_context()))]
        for op in script["ops"]:
            results.append((op[0], apply(span, op), span.is_recording()))
        span.end()  # a second end() is a no-op
        # After the end: nothing changes the span, nor what on_end was given.
        span.set_attribute("late", 1)
        span.add_event("late")
        span.set_status(StatusCode.ERROR, "late")
        span.update_name("late")
        if parent_span is not None:
            parent_span.end()
        return {
            "recorder_used": recorder_used,
            "results": results,
            "log": log,
            # What on_end was given: its type, and whether it still reads as it did then.
            "snapshots": [(type(given).__name__, exported(given) == fields)
                          for given, fields in recorder.ended],
            "exported": [exported(s) for s in exporter.get_finished_spans()],
        }
    finally:
        _swap_provider(previous)
        provider.shutdown()


SCRIPTS = st.fixed_dictionaries({
    "name": st.sampled_from(["send orders", "receive orders", "process"]),
    "kind": st.sampled_from(list(SpanKind)),
    "attributes": st.one_of(PLAIN_ATTRS, ATTRS),
    "links": st.one_of(st.none(), LINKS),
    "start_time": TIMES,
    "parent": PARENTS,
    "baggage": st.dictionaries(st.sampled_from(["tx", "tenant"]), st.text("abc", max_size=3),
                               max_size=2),
    "sampler": SAMPLERS,
    "random_ids": st.booleans(),
    "limits": LIMITS,
    "limits_from_env": st.booleans(),
    "ops": st.lists(OPS, max_size=12),
})


def differences(slow: dict[str, Any], lean: dict[str, Any]) -> list[str]:
    """Name every field where the recorder's run differs from the SDK's."""
    found = []
    for part in ("results", "log", "snapshots"):
        if slow[part] != lean[part]:
            found.append(f"{part}: sdk={slow[part]!r}\n  lean={lean[part]!r}")
    if len(slow["exported"]) != len(lean["exported"]):
        found.append(f"exported span count: sdk={len(slow['exported'])} "
                     f"lean={len(lean['exported'])}")
    for one, other in zip(slow["exported"], lean["exported"], strict=False):
        for key in one:
            if one[key] != other[key]:
                found.append(f"exported {key}: sdk={one[key]!r}\n  lean={other[key]!r}")
    return found


@settings(max_examples=int(os.environ.get("HOPTRACE_DIFF_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=SCRIPTS)
def test_the_recorder_is_indistinguishable_from_tracer_start_span(script: dict[str, Any]) -> None:
    logging.disable(logging.WARNING)  # the SDK warns on every dropped attribute
    try:
        slow = run_life(script, fast=False)
        lean = run_life(script, fast=True)
    finally:
        logging.disable(logging.NOTSET)
    # Not vacuous: the lean run went through the recorder (an SDK it does not know fails here).
    assert lean["recorder_used"] and not slow["recorder_used"]
    assert all(snapshot == ("ReadableSpan", True) for snapshot in slow["snapshots"])
    assert not differences(slow, lean), "\n".join(differences(slow, lean))


# --------------------------------------------------------------------------------------------
# What the differential test cannot see: which path ran, baggage, fallbacks.
# --------------------------------------------------------------------------------------------


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


def test_the_recorder_runs_when_fast_spans_is_on(install: Any) -> None:
    exporter = install()
    hoptrace.configure(fast_spans=False)
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert type(trace.get_current_span()) is not HopSpan
        assert isinstance(trace.get_current_span(), SdkSpan)
    hoptrace.configure(fast_spans=True)
    with hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert type(trace.get_current_span()) is HopSpan
        assert isinstance(trace.get_current_span(), SdkSpan)
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


def test_on_end_gets_a_snapshot_not_the_live_span(install: Any) -> None:
    got: list[Any] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            got.append(span)

    install()
    trace.get_tracer_provider().add_span_processor(Keep())  # type: ignore[attr-defined]
    span = spans_module.start_span("s", Context(), SpanKind.INTERNAL, {"a": "x"})
    assert type(span) is HopSpan
    span.end()
    (given,) = got
    assert given is not span and type(given) is ReadableSpan
    before = exported(given)
    span.set_attribute("late", 1)
    span.add_event("late")
    span.set_status(StatusCode.ERROR)
    span.update_name("late")
    assert exported(given) == before

    def frozen(ended: Any) -> bool:
        try:
            ended._attributes["late"] = 2
        except TypeError:
            return True
        return False

    sdk_span = spans_module.tracer().start_span("s", Context(), attributes={"a": "x"})
    sdk_span.end()
    assert frozen(span) is frozen(sdk_span)  # frozen at the end since SDK 1.43, as the SDK's


def test_a_ratio_sampler_takes_the_generic_path_and_decides_by_trace_id(install: Any) -> None:
    exporter = install(sampler=ParentBased(TraceIdRatioBased(0.5)))
    for _ in range(200):
        with hoptrace.produce_scope({}, "orders", "rabbitmq"):
            pass
    kept = exporter.get_finished_spans()
    ratio = TraceIdRatioBased(0.5)
    assert 0 < len(kept) < 200
    assert all(s.context.trace_id & ratio.TRACE_ID_LIMIT < ratio.bound for s in kept)


def test_fixed_span_id_is_used(install: Any) -> None:
    exporter = install()
    span = spans_module.start_span("fixed", Context(), SpanKind.INTERNAL, {"a": 1}, span_id=0xABC)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.context.span_id == 0xABC


def _fresh_recorder_cache() -> None:
    spans_module._recorder_cache[:] = [None, None]


class RenamedTracer(SdkTracer):
    """A tracer class of the SDK's module that the recorder does not know."""


RenamedTracer.__module__ = SdkTracer.__module__


def test_an_unknown_sdk_shape_falls_back_to_start_span_with_one_debug_log(
    install: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = install()
    tracer = spans_module.tracer()
    monkeypatch.setattr(tracer, "__class__", RenamedTracer)
    _fresh_recorder_cache()
    caplog.set_level(logging.DEBUG, logger="hoptrace")
    for _ in range(3):
        span = spans_module.start_span("s", Context(), SpanKind.INTERNAL, {"a": 1})
        assert type(span) is not HopSpan and isinstance(span, SdkSpan)
        span.end()
        _fresh_recorder_cache()  # the probe's answer is kept per tracer, not per call
    notes = [r for r in caplog.records if "tracer.start_span" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG
    assert len(exporter.get_finished_spans()) == 3


@pytest.mark.parametrize("change", ["start_span", "subclass", "span_init", "limits"])
def test_other_shapes_are_refused(install: Any, monkeypatch: pytest.MonkeyPatch,
                                  change: str) -> None:
    from opentelemetry.sdk import trace as sdk_trace

    from hoptrace.core import _sdk_spans

    install()
    tracer = spans_module.tracer()
    assert _sdk_spans.recorder_for(tracer) is not None
    if change == "start_span":  # a wrapper around start_span, e.g. another instrumentation's
        original = sdk_trace.Tracer.start_span

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original(self, *args, **kwargs)

        monkeypatch.setattr(sdk_trace.Tracer, "start_span", wrapped)
    elif change == "subclass":
        class Custom(sdk_trace.Tracer):
            pass

        monkeypatch.setattr(tracer, "__class__", Custom)
    elif change == "limits":  # limits the SDK can read, of a type the recorder does not know
        monkeypatch.setattr(tracer, "_span_limits", SimpleNamespace(**vars(SpanLimits())))
    else:
        original_init = sdk_trace.Span.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self._attributes = dict(self._attributes)

        monkeypatch.setattr(sdk_trace.Span, "__init__", init)
    _sdk_spans.forget_probes()
    assert _sdk_spans.recorder_for(tracer) is None
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

