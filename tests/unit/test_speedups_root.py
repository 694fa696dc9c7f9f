"""The C module's ``start_lazy``, ``dropped_span``, ``dropped_hop`` and ``lazy_span`` give exactly
what the Python code they replace gives.

``start_lazy`` is ``Starter.start_lazy``: it decides a root under
``ParentBased(TraceIdRatioBased(r))`` itself (a dropped root: the ID generator asked for a
trace ID, the ratio's decision, a span ID, the ``NonRecordingSpan``) and hands every other
case to the Python method. Each case runs twice on a fresh tracer and starter with the same
seeded ID generator, once through the C entry and once through the Python method, and
everything observable must be equal: the span returned (its class, its fields, its span
context field by field and type by type; for a sampled root the SDK span's name, kind,
attributes and parent), or the exception raised; the ID generator's calls; the tracer's own
span counts; how many times the attributes were built. Samplers, ID generators, tracer
tweaks and contexts include hostile ones.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import test_speedups_dropped as dropped  # the seeded generators, tweaks, and recorder
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import hoptrace
from hoptrace.core import _sdk_spans, diagnostics, hop, spans
from hoptrace.core._sdk_spans import Starter
from hoptrace.core.otel_shims import SPAN_KEY

C_LAZY = _sdk_spans.start_lazy_of if _sdk_spans.start_lazy_of is not Starter.start_lazy else None
needs_c = pytest.mark.skipif(C_LAZY is None, reason="HOPTRACE_PURE_PYTHON: no C entry")


class MyRatio(TraceIdRatioBased):
    """A user's subclass: not the SDK's ratio (the starter must leave it to the SDK)."""


class OddIds(dropped.SeededIds):
    """Trace IDs that are not plain ints, or that make the ratio's decision raise."""

    def __init__(self, trace_ids: Callable[[random.Random], Any]) -> None:
        super().__init__()
        self.trace_ids = trace_ids

    def generate_trace_id(self) -> Any:
        self.asked.append("trace")
        return self.trace_ids(self.rng)


def _trace_raises(rng: random.Random) -> int:
    raise ValueError("trace IDs down")


GENERATORS: dict[str, Callable[[], dropped.SeededIds]] = {
    **dropped.GENERATORS,
    "trace raises": lambda: OddIds(_trace_raises),
    "trace float": lambda: OddIds(lambda rng: 1.5),
    "trace zero": lambda: OddIds(lambda rng: 0),
    "trace too big": lambda: OddIds(lambda rng: 1 << 128),
    "trace bool": lambda: OddIds(lambda rng: True),
    "trace max": lambda: OddIds(lambda rng: (1 << 128) - 1),
    "trace negative": lambda: OddIds(lambda rng: -3),
    "span max": lambda: dropped.SeededIds(lambda rng: (1 << 64) - 1),
    "span negative": lambda: dropped.SeededIds(lambda rng: -5),
    "span int subclass": lambda: dropped.SeededIds(lambda rng: _Int(rng.getrandbits(64))),
    "not random raises": lambda: dropped.SeededIds(random_ids=_Falsy()),
}


class _Int(int):
    """A span ID of an int subclass (compared by its own methods, as Python compares it)."""


class _Falsy:
    """An ``is_trace_id_random`` answer whose truth cannot be told."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "ratio 1%": lambda: ParentBased(TraceIdRatioBased(0.01)),
    "ratio 50%": lambda: ParentBased(TraceIdRatioBased(0.5)),
    "ratio 0": lambda: ParentBased(TraceIdRatioBased(0.0)),
    "ratio 1": lambda: ParentBased(TraceIdRatioBased(1.0)),
    "user's ratio": lambda: ParentBased(MyRatio(0.5)),
    "default": lambda: ParentBased(ALWAYS_ON),
    "not parent based": lambda: TraceIdRatioBased(0.5),
}

UNSAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True, TraceFlags(0))


class ContextOfMine(Context):
    """A user's Context subclass (the C entry leaves it to the Python method)."""


CONTEXTS: dict[str, Callable[[], Any]] = {
    "empty": lambda: Context(),
    "span None": lambda: Context({SPAN_KEY: None}),
    "other keys": lambda: Context({"k": 1, "baggage-ish": {"a": "b"}}),
    "unsampled parent": lambda: Context({SPAN_KEY: NonRecordingSpan(UNSAMPLED)}),
    "invalid span": lambda: Context({SPAN_KEY: INVALID_SPAN}),
    "not a span": lambda: Context({SPAN_KEY: "span?"}),
    "plain dict": lambda: {},
    "subclass": lambda: ContextOfMine(),
}

TWEAKS = (*dropped.TWEAKS, "no fixed ids")


class Attributes:
    """The attributes callable: counts its calls; may raise."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise KeyError("attributes down")
        return {"transaction.id": "c" * 32, "n": self.calls}


def _make(sampler: str, generator: str, variant: Any, tweak: str) -> tuple[Any, ...]:
    ids = GENERATORS[generator]()
    provider = TracerProvider(sampler=SAMPLERS[sampler](), id_generator=ids,
                              shutdown_on_exit=False)
    tracer: Any = provider.get_tracer("differential")
    recorder = dropped.Recorder()
    starter: Any
    if variant is None:
        starter = _sdk_spans.starter_for(tracer)
        _sdk_spans.forget_probes()
    else:
        starter = Starter(tracer, variant, True)
    if tweak == "pending ids":
        tracer.id_generator = _sdk_spans.PendingIds(ids)
    elif tweak == "replaced generator":
        ids = tracer.id_generator = dropped.SeededIds(lambda rng: rng.getrandbits(32) + 7)
    elif tweak == "new sampler":
        tracer.sampler = ParentBased(TraceIdRatioBased(0.3))
    elif tweak == "counted":
        tracer._tracer_metrics = recorder
    elif tweak == "disabled":
        from types import SimpleNamespace

        tracer._tracer_config = SimpleNamespace(is_enabled=False)
    elif tweak == "no shortcuts":
        starter.shortcuts = False
    elif tweak == "no fixed ids":
        starter.fixed_ids = False
    return starter, ids, recorder


def _described(span: Any) -> Any:
    if span is None:
        return None
    if isinstance(span, NonRecordingSpan):
        context: Any = vars(span).get("_context")
        return (type(span), sorted(vars(span)), type(context), tuple(context),
                [type(field) for field in context])
    sc = span.get_span_context()
    return (type(span), span.name, span.kind, dict(span.attributes or {}), span.parent,
            tuple(sc), [type(field) for field in sc])


def _outcome(entry: Callable[..., Any], sampler: str, generator: str, variant: Any, tweak: str,
             context: str, fail: bool) -> tuple[Any, ...]:
    random.seed(7)  # (a span's own fields the SDK draws: none, but be sure)
    starter, ids, recorder = _make(sampler, generator, variant, tweak)
    attributes = Attributes(fail)
    try:
        result: Any = _described(entry(starter, "job", CONTEXTS[context](), SpanKind.INTERNAL,
                                       attributes))
    except Exception as exc:
        result = ("raised", type(exc), str(exc))
    return (result, ids.asked, recorder.seen, attributes.calls,
            starter._sampler is starter.tracer.sampler)


def _compare(entry: Callable[..., Any]) -> list[Any]:
    """Every case's outcome, asserted equal both ways."""
    outcomes = []
    for sampler in SAMPLERS:
        ratio = sampler.startswith("ratio")
        for generator in GENERATORS if sampler == "ratio 1%" else ("seeded", "trace float"):
            for variant in dropped.VARIANTS.values():
                for tweak in TWEAKS if ratio else ("",):
                    for context in CONTEXTS if ratio or variant is None else ("empty",):
                        for fail in (False, True):
                            args = (sampler, generator, variant, tweak, context, fail)
                            fast = _outcome(entry, *args)
                            assert fast == _outcome(Starter.start_lazy, *args), args
                            outcomes.append(fast)
    return outcomes


@needs_c
def test_the_c_start_lazy_gives_what_the_python_method_gives() -> None:
    outcomes = _compare(C_LAZY)  # type: ignore[arg-type]
    results = [o[0] for o in outcomes]
    dropped_roots = [r for r in results if r is not None and r[0] is NonRecordingSpan
                     and r[3][1] != 0 and r[3][0] != UNSAMPLED.trace_id]
    sampled = [r for r in results if r is not None and r[0] not in (NonRecordingSpan, "raised")]
    raised = {r[1] for r in results if r is not None and r[0] == "raised"}
    assert len(outcomes) > 11_000
    assert len(dropped_roots) > 2000 and len(sampled) > 500  # both root decisions, many ways
    # the raising generators, a float trace ID, the raising attributes, and (where the SDK asks
    # the generator whether a trace ID is random: 1.42 on) an untellable truth
    asks_random = getattr(_sdk_spans.start_span_variant(), "random_flag", 0) != 0
    assert {ValueError, TypeError, KeyError} | ({RuntimeError} if asks_random else set()) <= raised
    order = ["trace", "random", "span"] if asks_random else ["trace", "span"]  # the SDK's
    assert any(o[1][:len(order)] == order for o in outcomes)


@needs_c
def test_a_dropped_root_draws_what_the_sdk_draws() -> None:
    """The C path asks the generator what ``tracer.start_span`` asks, in the same order, and
    the span context is the one the SDK gives the same root."""
    for seed in range(40):
        ids = dropped.SeededIds()
        ids.rng.seed(seed)
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)), id_generator=ids,
                                  shutdown_on_exit=False)
        tracer: Any = provider.get_tracer("root")
        starter = Starter(tracer, _sdk_spans.start_span_variant(), True)
        mine = C_LAZY(starter, "job", Context(), SpanKind.INTERNAL, dict)  # type: ignore[misc]
        asked = list(ids.asked)
        ids.asked.clear()
        ids.rng.seed(seed)
        sdks = tracer.start_span("job", context=Context(), kind=SpanKind.INTERNAL)
        # (the SDK asks whether the trace ID is random from 1.42 on: the C path asks when it does)
        assert asked == ids.asked == (["trace", "random", "span"] if starter._random_flag
                                      else ["trace", "span"])
        assert tuple(mine.get_span_context()) == tuple(sdks.get_span_context())
        assert type(mine) is type(sdks) or sdks.is_recording()


# ----------------------------------------- the entries hop.py and transaction.py call


@pytest.fixture
def provider_restored() -> Any:
    previous = trace._TRACER_PROVIDER
    yield
    trace._TRACER_PROVIDER = previous
    hoptrace.configure()


def _install(sampler: Sampler, generator: str = "seeded") -> dropped.SeededIds:
    ids = GENERATORS[generator]()
    trace._TRACER_PROVIDER = TracerProvider(
        sampler=sampler, id_generator=ids, shutdown_on_exit=False)
    return ids


HOP_PARENTS: dict[str, Callable[[], Any]] = {
    "unsampled span": lambda: NonRecordingSpan(UNSAMPLED),
    "unsampled context": lambda: UNSAMPLED,
    "sampled context": lambda: SpanContext(UNSAMPLED.trace_id, 5, True, TraceFlags(1)),
    "invalid span": lambda: INVALID_SPAN,
    "not a span": lambda: "span?",
    "span raising": lambda: _Raising(),
}


class _Raising(NonRecordingSpan):
    def __init__(self) -> None:
        super().__init__(UNSAMPLED)

    def get_span_context(self) -> SpanContext:
        raise LookupError("no context")


def _with_parent(entry: Callable[..., Any], parent: str, span_id: int | None,
                 where: tuple[str, ...]) -> Any:
    return entry(HOP_PARENTS[parent](), span_id, *where)


def _lazy(entry: Callable[..., Any], context: str) -> Any:
    return entry("job", CONTEXTS[context](), SpanKind.INTERNAL, Attributes())


SETUPS = ("fast", "fast_spans off", "propagation only", "default sampler", "generator raises")


def _setup(name: str) -> dropped.SeededIds:
    hoptrace.configure(fast_spans=name != "fast_spans off",
                       propagation_only=name == "propagation only")
    if name == "default sampler":
        return _install(ParentBased(ALWAYS_ON))
    return _install(ParentBased(TraceIdRatioBased(0.01)),
                    "raising" if name == "generator raises" else "seeded")


def _run(call: Callable[[], Any], ids: dropped.SeededIds) -> tuple[Any, ...]:
    diagnostics.reset_diagnostics()
    try:
        result: Any = call()
        result = "FAILED" if result is hop._FAILED else _described(result)
    except Exception as exc:
        result = ("raised", type(exc), str(exc))
    return result, ids.asked, diagnostics.diagnostics()


@needs_c
@pytest.mark.usefixtures("provider_restored")
def test_the_hop_and_spans_entries_give_what_the_python_functions_give(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="hoptrace")
    py_dropped, py_lazy = spans.python_entries
    pairs = ((spans.dropped_child, py_dropped, ()),
             (hop._dropped_child, hop._dropped_child_of, ("t.hop",)))
    seen = []
    for setup in SETUPS:
        for parent in HOP_PARENTS:
            for span_id in (None, 0x1234):
                for fast, slow, where in pairs:
                    outcome = _run(partial(_with_parent, fast, parent, span_id, where),
                                   _setup(setup))
                    assert outcome == _run(partial(_with_parent, slow, parent, span_id, where),
                                           _setup(setup)), (setup, parent, span_id, where)
                    seen.append(outcome)
        for context in CONTEXTS:
            outcome = _run(partial(_lazy, spans.lazy_span, context), _setup(setup))
            assert outcome == _run(partial(_lazy, py_lazy, context), _setup(setup)), (
                setup, context)
            seen.append(outcome)
    results = [o[0] for o in seen]
    assert "FAILED" in results and None in results  # a counted failure, a "don't know"
    assert any(r is not None and r[0] is NonRecordingSpan for r in results)
    assert any(o[2].get("internal_error.t.hop") for o in seen if isinstance(o[2], dict)) or any(
        o[0] == "FAILED" for o in seen)


def test_the_entries_in_use_are_the_build_s() -> None:
    if C_LAZY is not None:  # the C module: its entries, not the Python functions
        assert hop._dropped_child is not hop._dropped_child_of
        assert type(hop._dropped_child).__name__ == "builtin_function_or_method"
        assert spans.dropped_child is not spans.python_entries[0]
        assert spans.lazy_span is not spans.python_entries[1]
    else:  # HOPTRACE_PURE_PYTHON, or no C module: the Python entries
        assert hop._dropped_child is hop._dropped_child_of
        assert (spans.dropped_child, spans.lazy_span) == spans.python_entries
        assert _sdk_spans.start_lazy_of is Starter.start_lazy


@needs_c
@pytest.mark.usefixtures("provider_restored")
def test_no_reference_or_memory_grows_over_400k_calls() -> None:
    ids = _setup("fast")
    ids.span_ids = lambda rng: 0x1234  # (the seeded generator keeps no history per call)
    ids.asked = _Forgetful()
    starter = spans.fast_starter()
    assert starter is not None
    unsampled_span = NonRecordingSpan(UNSAMPLED)
    empty = Context()
    with_span = Context({SPAN_KEY: unsampled_span})
    bad = OddIds(lambda rng: 1.5)
    bad.asked = _Forgetful()

    def rounds(count: int) -> None:
        for _ in range(count):
            C_LAZY(starter, "job", empty, SpanKind.INTERNAL, dict)  # type: ignore[misc]
            C_LAZY(starter, "job", with_span, SpanKind.INTERNAL, dict)  # type: ignore[misc]
            hop._dropped_child(unsampled_span, None, "t.leak")
            spans.lazy_span("job", empty, SpanKind.INTERNAL, dict)

    watched = [starter, unsampled_span, empty, with_span, UNSAMPLED, starter._state]
    rounds(1000)
    gc.collect()
    refs = [sys.getrefcount(x) for x in watched]
    blocks = sys.getallocatedblocks()
    rounds(100_000)  # 400,000 calls
    gc.collect()
    assert [sys.getrefcount(x) for x in watched] == refs
    assert sys.getallocatedblocks() - blocks < 200  # one block a call leaked: 400,000
    tracer: Any = starter.tracer
    tracer.id_generator = bad  # the error paths: a float trace ID raises in the decision
    before = sys.getallocatedblocks()
    for _ in range(20_000):
        with pytest.raises(TypeError):
            C_LAZY(starter, "job", empty, SpanKind.INTERNAL, dict)  # type: ignore[misc]
    gc.collect()
    assert sys.getallocatedblocks() - before < 200


class _Forgetful(list):  # type: ignore[type-arg]
    """An ``asked`` list that keeps nothing (a leak test must not grow its own list)."""

    def append(self, item: Any) -> None:
        pass
