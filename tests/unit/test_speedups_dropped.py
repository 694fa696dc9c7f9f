"""The C module's ``dropped_child`` gives exactly what ``Starter.dropped_child`` gives.

Each case runs twice on a fresh tracer and starter with the same seeded ID generator, once
through the C entry and once through the Python method, and everything observable must be
equal: the span returned (its class, attributes and span context, field by field and type by
type) or the exception raised, the ID generator's calls, the tracer's own span counts, and
what the starter read of a new sampler. Parents include hostile ones; generators include a
user's replacement, a raising one, and ones returning odd values.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, TraceFlags, TraceState

from hoptrace.core import _sdk_spans
from hoptrace.core._sdk_spans import PendingIds, Starter, Variant

C_ENTRY = _sdk_spans._c_dropped_child()
PURE = os.environ.get("HOPTRACE_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on")
if C_ENTRY is None and not PURE:  # pragma: no cover - only where the module was not built
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise ImportError("hoptrace._speedups.dropped_child is not built")
    pytest.skip("hoptrace._speedups.dropped_child is not built", allow_module_level=True)

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
STATE = TraceState([("vendor", "x1")])


class SeededIds(IdGenerator):
    """Seeded IDs; records each question it is asked."""

    def __init__(self, span_ids: Callable[[random.Random], Any] | None = None,
                 random_ids: Any = True) -> None:
        self.rng = random.Random(11)
        self.asked: list[str] = []
        self.span_ids = span_ids or (lambda rng: rng.getrandbits(64) or 1)
        self.random_ids = random_ids

    def generate_span_id(self) -> int:
        self.asked.append("span")
        return self.span_ids(self.rng)

    def generate_trace_id(self) -> int:
        self.asked.append("trace")
        return self.rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        self.asked.append("random")
        return self.random_ids  # type: ignore[no-any-return]


def _raise(rng: random.Random) -> int:
    raise ValueError("generator down")


GENERATORS: dict[str, Callable[[], SeededIds]] = {
    "seeded": SeededIds,
    "raising": lambda: SeededIds(_raise),
    "zero": lambda: SeededIds(lambda rng: 0),
    "too big": lambda: SeededIds(lambda rng: 1 << 64),
    "float": lambda: SeededIds(lambda rng: 1.5),
    "not random": lambda: SeededIds(random_ids=0),
}


class Recorder:
    """A tracer's span counter that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def start_span(self, parent: Any, decision: Any) -> Callable[[], None]:
        self.seen.append((parent, decision))
        return lambda: None


def _ctx(trace_flags: Any, remote: Any, state: Any = None, valid: Any = True,
         cls: type = SpanContext) -> Any:
    return tuple.__new__(cls, (TRACE_ID, SPAN_ID, remote, trace_flags, state, valid))


class SubContext(SpanContext):
    """A user's SpanContext subclass (the C entry must leave it to the SDK, as Python does)."""


PARENTS: dict[str, Any] = {
    "invalid": INVALID_SPAN_CONTEXT,
    "local unsampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0)),
    "local sampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)),
    "remote unsampled": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0)),
    "remote sampled": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(1)),
    "random flag": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(2)),
    "trace state": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0), trace_state=STATE),
    "no trace state": _ctx(TraceFlags(0), True, state=None),
    "subclass": _ctx(TraceFlags(0), True, cls=SubContext),
    "plain tuple": (TRACE_ID, SPAN_ID, True, TraceFlags(0), STATE, True),
    "flags not int": _ctx("00", True),
    "int flags": _ctx(2, False),
    "validity not bool": _ctx(TraceFlags(0), 1, valid=1),
    "invalid flag": _ctx(TraceFlags(0), True, valid=False),
    "short": tuple.__new__(SpanContext, (TRACE_ID, SPAN_ID, True)),
    "not a context": None,
}

SAMPLERS: dict[str, Sampler] = {
    "ratio": ParentBased(TraceIdRatioBased(0.01)),
    "default": ParentBased(ALWAYS_ON),
    "remote drops": ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF),
    "not parent based": ALWAYS_OFF,
}


def _make(sampler: str, generator: str, variant: Variant | None, tweak: str) -> tuple[Any, ...]:
    ids = GENERATORS[generator]()
    provider = TracerProvider(sampler=SAMPLERS[sampler], id_generator=ids,
                              shutdown_on_exit=False)
    tracer: Any = provider.get_tracer("differential")
    recorder = Recorder()
    starter: Any
    if variant is None:
        starter = _sdk_spans.starter_for(tracer)
        _sdk_spans.forget_probes()
    else:
        starter = Starter(tracer, variant, True)
    if tweak == "pending ids":
        tracer.id_generator = PendingIds(ids)
    elif tweak == "replaced generator":
        ids = tracer.id_generator = SeededIds(lambda rng: rng.getrandbits(32) + 7)
    elif tweak == "new sampler":
        tracer.sampler = ParentBased(ALWAYS_OFF)
    elif tweak == "counted":
        tracer._tracer_metrics = recorder
    elif tweak == "disabled":
        tracer._tracer_config = SimpleNamespace(is_enabled=False)
    elif tweak == "no shortcuts":
        starter.shortcuts = False
    return starter, ids, recorder


def _outcome(entry: Callable[..., Any], sampler: str, generator: str, variant: Variant | None,
             tweak: str, parent: Any, span_id: Any) -> tuple[Any, ...]:
    starter, ids, recorder = _make(sampler, generator, variant, tweak)
    try:
        span = entry(starter, parent, span_id)
    except Exception as exc:
        result: Any = ("raised", type(exc), str(exc))
    else:
        if span is None:
            result = None
        else:
            context = vars(span).get("_context")
            result = (type(span), sorted(vars(span)), type(context), tuple(context),
                      [type(field) for field in context])
    drops = None if starter._drops is None else tuple(starter._drops)
    return result, ids.asked, recorder.seen, drops, starter._sampler is starter.tracer.sampler


VARIANTS = {"probed": None, "1.42.1": Variant(True, 2), "1.42.0": Variant(True, 1),
            "1.20": Variant(False, 0)}
TWEAKS = ("", "pending ids", "replaced generator", "new sampler", "counted", "disabled",
          "no shortcuts")


def _compare(entry: Callable[..., Any]) -> list[Any]:
    """Every case's outcome, asserted equal both ways (other samplers: the plain setups)."""
    outcomes = []
    for sampler in SAMPLERS:
        for generator in GENERATORS if sampler == "ratio" else ("seeded",):
            for variant in VARIANTS.values():
                for tweak in TWEAKS if sampler == "ratio" else ("",):
                    for parent in PARENTS.values():
                        for span_id in (None, 0, 0x1234):
                            args = (sampler, generator, variant, tweak, parent, span_id)
                            fast = _outcome(entry, *args)
                            assert fast == _outcome(Starter.dropped_child, *args), args
                            outcomes.append(fast[0])
    return outcomes


@pytest.mark.skipif(C_ENTRY is None, reason="HOPTRACE_PURE_PYTHON: no C entry")
def test_the_c_entry_gives_what_the_python_method_gives() -> None:
    outcomes = _compare(C_ENTRY)  # type: ignore[arg-type]
    spans = [o for o in outcomes if o is not None and o[0] != "raised"]
    raised = {o[1] for o in outcomes if o is not None and o[0] == "raised"}
    assert len(outcomes) > 8000 and len(spans) > 1000  # the drop path ran, many ways
    assert {ValueError, TypeError} <= raised  # the raising generator, the hostile parents


@pytest.mark.skipif(C_ENTRY is None, reason="HOPTRACE_PURE_PYTHON: no C entry")
def test_a_replaced_non_recording_span_class_is_called_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Mine(trace.NonRecordingSpan):
        def __init__(self, context: SpanContext) -> None:
            super().__init__(context)
            self.mine = True

    monkeypatch.setattr(trace, "NonRecordingSpan", Mine)
    args = ("ratio", "seeded", None, "", PARENTS["remote unsampled"], None)
    fast = _outcome(C_ENTRY, *args)  # type: ignore[arg-type]
    assert fast == _outcome(Starter.dropped_child, *args)
    assert fast[0][0] is Mine and fast[0][1] == ["_context", "mine"]


def test_the_entry_in_use_is_c_unless_pure_python_is_asked() -> None:
    if PURE:
        assert _sdk_spans.dropped_child_of is Starter.dropped_child
    else:
        assert _sdk_spans.dropped_child_of is C_ENTRY
        assert type(C_ENTRY).__name__ == "builtin_function_or_method"
