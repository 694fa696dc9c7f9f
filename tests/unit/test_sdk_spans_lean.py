"""The cheaper ways of making what records nothing give exactly what the long ways give.

- ``mint_span_context`` builds SpanContext's tuple directly for IDs known to be valid;
- a dropped span is the API's ``NonRecordingSpan``, made as its ``__init__`` makes it;
- the probes of the SDK's tracer and sampler never read their instance ``__dict__`` (which
  would make CPython 3.11+ keep a real dict and slow every later attribute read of them);
- a child whose parent is sampled but whose ``ParentBased`` delegate drops is a shortcut too;
- ``transaction()`` opens without ``_Scope.open`` and ``generate_transaction_id``'s calls.

Each is compared with the general path on many inputs, hostile ones included.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from test_sdk_spans_dropped import SeededIds

import hoptrace
from hoptrace.core import _sdk_spans, ids
from hoptrace.core import transaction as transaction_module
from hoptrace.core._sdk_spans import Starter
from hoptrace.core.otel_shims import get_current, tracer

MAX = (1 << 128) - 1


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    yield
    trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
    _sdk_spans.forget_probes()
    hoptrace.reset()


def install(sampler: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler, id_generator=SeededIds(5), shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return provider, exporter


# ----------------------------------------------------------------- minted contexts

HOSTILE = [None, 0, 1, 2, MAX - 1, MAX, MAX + 1, -1, -MAX, 1 << 200, True, 1.5, 2.0**130]


@pytest.mark.parametrize("trace_id", HOSTILE + [random.Random(3).getrandbits(128)
                                                 for _ in range(40)])
def test_minted_contexts_are_what_span_context_makes(trace_id: Any) -> None:
    for seed in range(5):
        random.seed(seed)
        made = ids.mint_span_context(trace_id)
        random.seed(seed)
        tid = trace_id if trace_id else random.getrandbits(128) or 1
        expected = SpanContext(tid, random.getrandbits(64) or 1, False, TraceFlags(0))
        assert type(made) is SpanContext
        assert tuple(made) == tuple(expected)
        assert made.trace_state is expected.trace_state
        assert made.is_valid is expected.is_valid and made.is_remote is False
        assert made.trace_flags == 0 and type(made.trace_flags) is TraceFlags


@pytest.mark.parametrize("trace_id", ["abc", b"\x01", object()])
def test_a_minted_context_refuses_what_span_context_refuses(trace_id: Any) -> None:
    with pytest.raises(TypeError):
        SpanContext(trace_id, 1, False, TraceFlags(0))
    with pytest.raises(TypeError):
        ids.mint_span_context(trace_id)


# ----------------------------------------------------------- non-recording spans


def test_the_api_s_non_recording_span_is_made_without_its_call() -> None:
    assert _sdk_spans._plain_init(NonRecordingSpan) is NonRecordingSpan.__dict__["__init__"]

    class More(NonRecordingSpan):
        def __init__(self, context: SpanContext) -> None:
            super().__init__(context)
            self.extra = 1

    class Renamed(NonRecordingSpan):
        def __init__(self, context: SpanContext) -> None:
            self._ctx = context

    class Slotted(NonRecordingSpan):
        __slots__ = ("x",)

    assert _sdk_spans._plain_init(More) is None
    assert _sdk_spans._plain_init(Renamed) is None
    assert _sdk_spans._plain_init(Slotted) is None


def dropped_spans() -> list[Any]:
    """A root and two children the 0% ratio sampler drops, through the shortcuts."""
    hoptrace.configure(fast_spans=True)
    install(ParentBased(TraceIdRatioBased(0.0)))
    starter = _sdk_spans.starter_for(tracer())
    assert starter is not None
    root = starter.start_lazy("job", Context(), SpanKind.INTERNAL, dict)
    parent = SpanContext(0xABC, 0xDEF, True, TraceFlags(2))
    child = starter.dropped_child(parent)
    fixed = starter.dropped_child(parent, 0x1234)
    return [root, child, fixed]


def test_dropped_spans_are_the_api_s_own() -> None:
    spans = dropped_spans()
    for span in spans:
        assert type(span) is NonRecordingSpan
        assert vars(span) == vars(NonRecordingSpan(span.get_span_context()))
        assert not span.is_recording()
    assert spans[2].get_span_context().span_id == 0x1234


def test_a_replaced_non_recording_span_init_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    original = NonRecordingSpan.__init__

    def init(self: NonRecordingSpan, context: SpanContext) -> None:
        made.append(context)
        original(self, context)

    monkeypatch.setattr(NonRecordingSpan, "__init__", init)
    spans = dropped_spans()
    assert made == [span.get_span_context() for span in spans]


# ------------------------------------------------------------------------ probes


def test_the_probes_read_no_instance_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[Any] = []
    real = vars

    def spy(*args: Any) -> Any:
        if args and not isinstance(args[0], type):
            read.append(type(args[0]).__name__)
        return real(*args)

    monkeypatch.setattr(_sdk_spans, "vars", spy, raising=False)
    hoptrace.configure(fast_spans=True)
    install(ParentBased(TraceIdRatioBased(0.01)))
    starter = _sdk_spans.starter_for(tracer())
    assert starter is not None and starter.fixed_ids and starter.shortcuts
    with hoptrace.transaction("job"):
        with hoptrace.produce_scope({}, "orders", "kafka"):
            pass
    assert read == []


def test_a_parent_based_sampler_changed_on_the_instance_is_not_assumed() -> None:
    sampler = ParentBased(ALWAYS_ON)
    assert _sdk_spans._static_decisions(sampler) is not None
    sampler.should_sample = ALWAYS_OFF.should_sample  # type: ignore[method-assign]
    assert _sdk_spans._static_decisions(sampler) is None
    missing = ParentBased(ALWAYS_ON)
    del missing._remote_parent_sampled  # type: ignore[attr-defined]
    assert _sdk_spans._static_decisions(missing) is None


def test_on_instance_tells_instance_attributes_from_class_ones() -> None:
    class Base:
        shared = 1

        def method(self) -> None:
            pass

    class Child(Base):
        def __init__(self) -> None:
            self.own = 2

    obj = Child()
    assert _sdk_spans._on_instance(obj, "own")
    assert not _sdk_spans._on_instance(obj, "shared")
    assert not _sdk_spans._on_instance(obj, "method")
    assert not _sdk_spans._on_instance(obj, "absent")
    obj.method = print  # type: ignore[method-assign]
    # A name the class has too is not counted as the instance's (the probes then refuse:
    # the conservative answer, where vars() would have said yes).
    assert not _sdk_spans._on_instance(obj, "method")


# ------------------------------------------- a sampled parent whose delegate drops


def test_a_sampled_parent_whose_delegate_drops_gives_what_the_sdk_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = []
    original = _sdk_spans.dropped_child_of  # (the C module's, when built)

    def counted(self: Starter, parent: SpanContext, span_id: int | None = None) -> Any:
        span = original(self, parent, span_id)
        taken.append(span is not None)
        return span

    monkeypatch.setattr(_sdk_spans, "dropped_child_of", counted)
    headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
               "baggage": "transaction.id=" + "c" * 32}
    seen = {}
    for way in ("shortcut", "sdk"):
        hoptrace.configure(fast_spans=way == "shortcut")
        _, exporter = install(ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF,
                                          local_parent_sampled=ALWAYS_OFF))
        views = []
        for message_id in range(5):
            with hoptrace.consume_scope(headers, "orders", "kafka",
                                        message_id=str(message_id)) as scope:
                span = trace.get_current_span()
                sc = span.get_span_context()
                with hoptrace.produce_scope({}, "next", "kafka") as send:
                    pass
                views.append((type(span), span.is_recording(), sc.trace_id, sc.span_id,
                              int(sc.trace_flags), scope.span is span,
                              send.carrier["traceparent"]))
        seen[way] = views
        assert exporter.get_finished_spans() == ()
    assert seen["shortcut"] == seen["sdk"]
    assert taken and all(taken)  # the shortcut decided every span of the "shortcut" way


# --------------------------------------------------------------- transaction()


@pytest.mark.parametrize("propagation_only", [True, False])
def test_a_transaction_s_id_comes_from_the_generator_as_before(
    propagation_only: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if not propagation_only:
        install(ParentBased(TraceIdRatioBased(0.0)))
    counter = iter(range(1, 100))
    hoptrace.configure(propagation_only=propagation_only,
                       transaction_id_generator=lambda: f"order-{next(counter)}")
    n = next(counter)  # (configure may have asked the generator once already)
    with hoptrace.transaction("a") as first, hoptrace.transaction("b") as second:
        assert hoptrace.current_transaction_id() == f"order-{n + 2}"
    assert (first.transaction_id, second.transaction_id) == (f"order-{n + 1}", f"order-{n + 2}")
    answers = iter(["valid-at-configure"] + ["has space"] * 5)
    hoptrace.configure(propagation_only=propagation_only,
                       transaction_id_generator=lambda: next(answers))
    with hoptrace.transaction("c") as bad:
        assert hoptrace.current_transaction_id() == bad.transaction_id
    assert bad.transaction_id and len(bad.transaction_id) == 32
    assert hoptrace.diagnostics() == {"internal_error.transaction_id_generator": 1}
    with hoptrace.transaction("d", "fixed-1") as fixed:
        assert hoptrace.current_transaction_id() == "fixed-1"
    assert fixed.transaction_id == "fixed-1"


def test_a_transaction_opened_twice_still_says_so_and_disabled_does_nothing() -> None:
    hoptrace.configure(propagation_only=True)
    scope = hoptrace.transaction("job")
    with scope, pytest.raises(RuntimeError, match="already open"):
        scope.open()
    with scope:  # entered again once closed
        assert hoptrace.current_transaction_id() == scope.transaction_id
    hoptrace.configure(enabled=False)
    with hoptrace.transaction("off") as off:
        assert hoptrace.current_transaction_id() is None
    assert off.transaction_id is None


def test_a_failing_open_is_counted_and_the_block_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    hoptrace.configure(propagation_only=True)

    def broken() -> None:
        raise RuntimeError("boom")

    # (the open's own steps fail: reading the current context, after the ID is drawn)
    monkeypatch.setattr(transaction_module, "get_current", broken)
    before = get_current()
    ran = []
    with hoptrace.transaction("job") as scope:
        ran.append(get_current() is before)
    assert ran == [True] and hoptrace.diagnostics() == {"internal_error.transaction.open": 1}
    assert scope.span is None and get_current() is before



def test_a_new_global_provider_is_seen_at_once() -> None:
    """The fast paths read tracer()'s cache: a provider swapped in is still seen at once."""
    from hoptrace.core import spans

    hoptrace.configure(fast_spans=True)
    unsampled = SpanContext(7 << 64, 9, True, TraceFlags(0))
    install(ParentBased(TraceIdRatioBased(0.0)))
    assert spans.dropped_child(unsampled) is not None
    first = spans.start_span_lazy("job", Context(), SpanKind.INTERNAL, dict)
    assert not first.is_recording()
    _, exporter = install(ALWAYS_ON)  # a sampler hoptrace does not shortcut
    assert spans.dropped_child(unsampled) is None
    root = spans.start_span_lazy("job", Context(), SpanKind.INTERNAL, dict)
    assert root.is_recording()
    root.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["job"]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    assert spans.dropped_child(unsampled) is None  # no SDK: nothing known


def test_settings_and_providers_changed_are_seen_at_once() -> None:
    """fast_starter() caches its answer per (settings, provider): each change is seen."""
    from hoptrace.core import spans
    from hoptrace.core.otel_shims import sdk_installed

    unsampled = SpanContext(7 << 64, 9, True, TraceFlags(0))
    hoptrace.configure(fast_spans=True)
    install(ParentBased(TraceIdRatioBased(0.0)))
    assert spans.dropped_child(unsampled) is not None and sdk_installed()
    hoptrace.configure(fast_spans=False)  # new settings: no shortcut any more
    assert spans.dropped_child(unsampled) is None and spans.fast_starter() is None
    hoptrace.configure(fast_spans=True)
    assert spans.dropped_child(unsampled) is not None
    trace._TRACER_PROVIDER = trace.NoOpTracerProvider()  # type: ignore[attr-defined]
    assert spans.dropped_child(unsampled) is None and not sdk_installed()
    with hoptrace.transaction("job") as tx:  # no SDK: a minted, valid, unsampled trace
        span = tx.span
        sc = trace.get_current_span().get_span_context()
    assert type(span) is NonRecordingSpan and sc.is_valid and not sc.trace_flags.sampled
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    assert not sdk_installed() and spans.fast_starter() is None
    _, exporter = install(ALWAYS_ON)
    assert sdk_installed()
    with hoptrace.transaction("kept"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["kept"]

