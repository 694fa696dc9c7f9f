"""The C span entries with the SDK's own ``RandomIdGenerator``: the same draws as the SDK.

Where the tracer's ID generator is ``RandomIdGenerator`` or a subclass of it and the method
about to be called is still that class's own (inherited), the C module runs its body itself
(``random.getrandbits``, drawn again while it gives the invalid 0); where a span is exactly
the API's ``NonRecordingSpan`` with the API's ``get_span_context``, it reads ``_context``.
Each case here runs one entry twice from the same ``random.seed``: through the C module and
through the Python steps (``Starter.dropped_child`` / ``Starter.start_lazy`` / the Python
consume open), and compares the span (class, fields, span context field by field), or the
exception, and the ``random`` module's state afterwards (so the same number of draws, in the
same order). Hostile cases: a ``getrandbits`` that gives 0 first, an int subclass, a float,
or raises; the generator's methods replaced on the instance or on the class, subclasses that
override one or neither, a ``PendingIds`` wrapper, the SDK module's ``random`` replaced or
gone; ``get_span_context`` replaced on the class or the instance, a span subclass. With
``HOPTRACE_PURE_PYTHON`` (no C entries) the consume comparison still runs, both ways in
Python.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import id_generator as sdk_ids
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import hoptrace
from hoptrace import _amqp
from hoptrace.core import _sdk_spans, hop, semconv, spans
from hoptrace.core._sdk_spans import PendingIds, Starter
from hoptrace.core.context import get_current
from hoptrace.core.propagation import _speedups

C_ENTRIES = spans.dropped_child is not spans.python_entries[0]
needs_c = pytest.mark.skipif(not C_ENTRIES, reason="HOPTRACE_PURE_PYTHON: no C entries")

UNSAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, False,
                        TraceFlags(0))
REMOTE = SpanContext(UNSAMPLED.trace_id, 0x1122334455667788, True, TraceFlags(2))
SEEDS = range(40)


class IntSub(int):
    """An int subclass: the SDK's ``==`` decides, not a sign check."""


def _scripted(values: list[Any]) -> Callable[[int], Any]:
    """A ``getrandbits`` that gives ``values`` first, then the real draws."""
    real = random.getrandbits

    def draw(bits: int) -> Any:
        return values.pop(0) if values else real(bits)

    return draw


def _raising(bits: int) -> int:
    raise ValueError(f"no {bits} bits today")


#: What each case does to the SDK's generator, its module or ``random`` (on ``monkeypatch``),
#: given the tracer's generator.
GENERATORS: dict[str, Callable[[pytest.MonkeyPatch, Any], Any]] = {
    "sdk": lambda mp, ids: ids,
    "zeros first": lambda mp, ids: mp.setattr(random, "getrandbits", _scripted([0, 0])),
    "int subclass zero": lambda mp, ids: mp.setattr(
        random, "getrandbits", _scripted([IntSub(0), IntSub(5), IntSub(0), IntSub(9)])),
    "float": lambda mp, ids: mp.setattr(random, "getrandbits", _scripted([0.0, 2.5, 3.5])),
    "raising": lambda mp, ids: mp.setattr(random, "getrandbits", _raising),
    "instance methods": lambda mp, ids: (
        mp.setattr(ids, "generate_span_id", lambda: 0x42, raising=False),
        mp.setattr(ids, "generate_trace_id", lambda: 0x43, raising=False),
        mp.setattr(ids, "is_trace_id_random", lambda: False, raising=False)),
    "class methods": lambda mp, ids: (
        mp.setattr(RandomIdGenerator, "generate_span_id",
                   lambda self: random.getrandbits(32) + 1),
        mp.setattr(RandomIdGenerator, "generate_trace_id",
                   lambda self: random.getrandbits(40) + 1),
        mp.setattr(RandomIdGenerator, "is_trace_id_random", lambda self: 0)),
    "module random replaced": lambda mp, ids: mp.setattr(
        sdk_ids, "random", SimpleNamespace(getrandbits=lambda bits: 77)),
    "module random gone": lambda mp, ids: mp.delattr(sdk_ids, "random"),
}


class SubIds(RandomIdGenerator):
    """A user's subclass that overrides nothing: the C module runs the inherited bodies."""


class OwnSpanIds(RandomIdGenerator):
    """A user's subclass with a span ID of its own: the C module calls it (and runs the
    inherited ``generate_trace_id`` itself)."""

    def generate_span_id(self) -> int:
        return random.getrandbits(48) + 1


class OwnTraceIds(RandomIdGenerator):
    """A user's subclass with a trace ID of its own (an AWS X-Ray-like time prefix)."""

    def generate_trace_id(self) -> int:
        return (1_700_000_000 << 96) | random.getrandbits(96)


WRAPPERS: dict[str, Callable[[], Any]] = {
    "plain": RandomIdGenerator,
    "pending": lambda: PendingIds(RandomIdGenerator()),
    "subclass": SubIds,
    "own span IDs": OwnSpanIds,
    "own trace IDs": OwnTraceIds,
}


class MySpan(NonRecordingSpan):
    """A span subclass: its get_span_context is called."""


#: The parent span of a dropped child, and what is done to the API's class first.
PARENTS: dict[str, Callable[[pytest.MonkeyPatch], Any]] = {
    "span": lambda mp: NonRecordingSpan(UNSAMPLED),
    "context": lambda mp: UNSAMPLED,
    "subclass": lambda mp: MySpan(UNSAMPLED),
    "class method": lambda mp: (
        mp.setattr(NonRecordingSpan, "get_span_context",
                   lambda self: SpanContext(7, 8, True, TraceFlags(0))),
        NonRecordingSpan(UNSAMPLED))[1],
    "instance method": lambda mp: _with_instance_method(NonRecordingSpan(UNSAMPLED)),
    "raising": lambda mp: (
        mp.setattr(NonRecordingSpan, "get_span_context", _no_context),
        NonRecordingSpan(UNSAMPLED))[1],
}


def _no_context(self: Any) -> SpanContext:
    raise LookupError("no context")


def _with_instance_method(span: Any) -> Any:
    span.get_span_context = lambda: SpanContext(9, 10, True, TraceFlags(0))
    return span


@pytest.fixture
def provider_restored() -> Iterator[None]:
    previous = trace._TRACER_PROVIDER
    yield
    trace._TRACER_PROVIDER = previous
    hoptrace.configure()


def _install(wrapper: str, sampler: Any = None) -> Any:
    """The tracer provider (``ParentBased(TraceIdRatioBased(0.01))`` unless ``sampler``) with
    ``WRAPPERS[wrapper]``; its RandomIdGenerator."""
    ids = WRAPPERS[wrapper]()
    provider = TracerProvider(sampler=sampler or ParentBased(TraceIdRatioBased(0.01)),
                              id_generator=ids, shutdown_on_exit=False)
    trace._TRACER_PROVIDER = provider
    hoptrace.configure(fast_spans=True)
    return ids.inner if type(ids) is PendingIds else ids


def _described(span: Any) -> Any:
    if span is None or span is hop._FAILED:
        return span if span is None else "FAILED"
    fields = getattr(span, "__dict__", None)
    if fields is None:  # (a recording span: its class and context)
        return type(span), None, None, (tuple(span.get_span_context()), None)
    context = fields.get("_context")
    return (type(span), sorted(fields), type(context),
            None if context is None else (tuple(context), [type(f) for f in context]))


def _outcome(call: Callable[[], Any], seed: int, describe: bool = True) -> tuple[Any, ...]:
    random.seed(seed)
    try:
        result: Any = call()
        result = _described(result) if describe else result
    except Exception as exc:
        result = ("raised", type(exc), str(exc))
    return result, random.getstate()


def _python_steps(mp: pytest.MonkeyPatch) -> None:
    """The Python entries all the way down (no C dropped_child or start_lazy under them)."""
    mp.setattr(_sdk_spans, "dropped_child_of", Starter.dropped_child)
    mp.setattr(_sdk_spans, "start_lazy_of", Starter.start_lazy)
    mp.setattr(hop, "_open_dropped_c", None)
    mp.setattr(hop, "_dropped_child", hop._dropped_child_of)


def _both(monkeypatch: pytest.MonkeyPatch, generator: str, wrapper: str, parent: str,
          entry: str, seed: int) -> tuple[Any, Any]:
    outcomes = []
    for python in (False, True):
        with monkeypatch.context() as mp:
            ids = _install(wrapper, ParentBased(TraceIdRatioBased(0.2)))
            GENERATORS[generator](mp, ids)
            span = PARENTS[parent](mp)
            if python:
                _python_steps(mp)
            dropped, lazy = spans.python_entries if python else (
                spans.dropped_child, spans.lazy_span)
            call = (partial(dropped, span) if entry == "child"
                    else partial(lazy, "job", Context(), SpanKind.INTERNAL, dict))
            outcomes.append(_outcome(call, seed))
    return outcomes[0], outcomes[1]


@needs_c
@pytest.mark.usefixtures("provider_restored")
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("generator", GENERATORS)
def test_a_dropped_child_draws_what_the_sdk_draws(
    generator: str, wrapper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    for parent in PARENTS:
        for seed in SEEDS[:8]:
            fast, slow = _both(monkeypatch, generator, wrapper, parent, "child", seed)
            assert fast == slow, (parent, seed)
            seen.append(fast[0])
    made = [s for s in seen if s is not None and s[0] != "raised"]
    # (A child's span ID only: OwnSpanIds draws it from ``random`` itself, not the SDK's.)
    none = generator == "raising" or (
        generator == "module random gone" and wrapper != "own span IDs")
    assert not made if none else made


@needs_c
@pytest.mark.usefixtures("provider_restored")
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("generator", GENERATORS)
def test_a_root_draws_what_the_sdk_draws(
    generator: str, wrapper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    for seed in SEEDS:
        fast, slow = _both(monkeypatch, generator, wrapper, "span", "root", seed)
        assert fast == slow, seed
        seen.append(fast[0])
    if generator == "sdk":  # roots dropped and roots kept (a 20% ratio), both compared
        assert sum(1 for s in seen if s[0] is NonRecordingSpan) >= 20
        assert any(s[0] is not NonRecordingSpan for s in seen)


@needs_c
@pytest.mark.usefixtures("provider_restored")
def test_the_sdk_generator_is_inline_and_draws_the_sdk_s_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the comparison compares: the C module runs the SDK's body itself (the Python
    method is never called), and the IDs are the SDK's own draws from the same seed."""
    configured = _sdk_spans._inline_ids()
    assert configured[0] is RandomIdGenerator and configured[5] is NonRecordingSpan
    _install("plain", ParentBased(TraceIdRatioBased(0.0)))
    calls: list[str] = []
    real_span = RandomIdGenerator.generate_span_id
    random.seed(3)
    expected_trace = RandomIdGenerator().generate_trace_id()
    expected_span = real_span(RandomIdGenerator())
    expected_child = real_span(RandomIdGenerator())
    random.seed(3)
    root: Any = spans.lazy_span("job", Context(), SpanKind.INTERNAL, dict)
    child: Any = spans.dropped_child(root)
    assert (root.get_span_context().trace_id, root.get_span_context().span_id) == (
        expected_trace, expected_span)
    assert child.get_span_context().span_id == expected_child
    assert child.get_span_context().trace_id == expected_trace
    def spy(self: Any) -> int:  # (not the SDK's function: the C module must call it)
        calls.append("span")
        return real_span(self)

    monkeypatch.setattr(RandomIdGenerator, "generate_span_id", spy)
    spans.dropped_child(root)
    assert calls == ["span"]


def _python_calls(call: Callable[[], Any]) -> list[str]:
    """The ID generator methods ``call`` runs as Python functions: ``test:NAME`` for one
    defined in this module, ``sdk:NAME`` for another (co_qualname is 3.11+)."""
    seen: list[str] = []
    names = {"generate_span_id", "generate_trace_id", "is_trace_id_random"}

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name in names:
            seen.append(f"{'test' if code.co_filename == __file__ else 'sdk'}:{code.co_name}")

    import sys

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


def _root_and_child() -> tuple[Any, Any]:
    root: Any = spans.lazy_span("job", Context(), SpanKind.INTERNAL, dict)
    return root, spans.dropped_child(root)


@needs_c
@pytest.mark.usefixtures("provider_restored")
@pytest.mark.parametrize(("wrapper", "called"), [
    ("plain", []),
    ("subclass", []),
    ("own span IDs", ["test:generate_span_id"] * 2),
    ("own trace IDs", ["test:generate_trace_id"]),
])
def test_a_subclass_runs_inline_what_it_inherits(wrapper: str, called: list[str]) -> None:
    """A ``RandomIdGenerator`` subclass gets the SDK's draws in C for every method it does
    not override (no Python call), and its own method called for one it does; the IDs are
    those the Python steps give from the same seed."""
    ids = _install(wrapper, ParentBased(TraceIdRatioBased(0.0)))
    _root_and_child()  # (the tracer's starter is made at its first use)
    made: list[Any] = []
    random.seed(11)
    assert _python_calls(lambda: made.extend(_root_and_child())) == called
    fast = [tuple(span.get_span_context()) for span in made]
    assert all(type(span) is NonRecordingSpan for span in made)
    with pytest.MonkeyPatch.context() as mp:
        _python_steps(mp)
        random.seed(11)
        dropped, lazy = spans.python_entries
        root = lazy("job", Context(), SpanKind.INTERNAL, dict)
        slow = [tuple(root.get_span_context()), tuple(dropped(root).get_span_context())]
    assert fast == slow
    if wrapper == "own trace IDs":
        assert fast[0][0] >> 96 == 1_700_000_000
    if wrapper == "own span IDs":
        assert all(context[1] <= 1 << 48 for context in fast)
    assert type(ids) is WRAPPERS[wrapper]


def test_inline_ids_refuse_other_code() -> None:
    """The probes say no to a body that is not the SDK's draw-and-retry."""
    def other(self: Any) -> int:
        return random.getrandbits(64)  # no retry: not the SDK's

    assert _sdk_spans._draws_like(RandomIdGenerator.generate_span_id, 64, "INVALID_SPAN_ID")
    assert not _sdk_spans._draws_like(RandomIdGenerator.generate_span_id, 128,
                                      "INVALID_SPAN_ID")
    assert not _sdk_spans._draws_like(other, 64, "INVALID_SPAN_ID")
    assert not _sdk_spans._draws_like(lambda self: 1, 64, "INVALID_SPAN_ID")
    assert _sdk_spans._returns_context(NonRecordingSpan.get_span_context)
    assert not _sdk_spans._returns_context(lambda self: self._context or 1)
    assert not _sdk_spans._returns_true(lambda self: 1)


# ---- the consume open: a first delivery (redelivered=False) and no flag, both ways ----------

def _carrier(i: int) -> dict[str, str]:
    tx = f"tx-{i:04d}" if i % 4 == 3 else f"tx{i:04d}"  # (the C reader takes no "-")
    span_id = REMOTE.span_id + i
    return {"traceparent": f"00-{REMOTE.trace_id:032x}-{span_id:016x}-0{i % 2}",
            "x-transaction-id": tx, "baggage": f"transaction.id={tx}"}


def _consume(carrier: dict[str, str], redelivered: bool | None, destination: str) -> Any:
    scope = _amqp.DeliveryScope(carrier, destination, semconv.SYSTEM_RABBITMQ, "m-1", None,
                                None, None, redelivered)
    scope.open()
    try:
        ctx = get_current()
        span = scope.span
        return (_described(span), scope.transaction_id, tuple(scope._active or ()),
                _described(trace.get_current_span(ctx)), scope.queue_wait_ms,
                sorted((str(k), repr(v)) for k, v in ctx.items()
                       if not hasattr(v, "get_span_context")))
    finally:
        scope.close(None)


@pytest.mark.usefixtures("provider_restored")
@pytest.mark.parametrize("redelivered", [False, None, True])
def test_a_delivery_opens_the_same_both_ways(
    redelivered: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    opened: list[int] = []
    real = hop._open_dropped_c

    def spy(*args: Any) -> Any:
        found = real(*args)
        opened.append(len(found) if isinstance(found, tuple) else 0)
        return found

    for i in range(24):
        destination = f"orders:k:q{i % 5}"  # (salts cached and not)
        outcomes = []
        for python in (False, True):
            if i % 7 == 0:
                hop._destination_salts.pop(destination, None)
            with monkeypatch.context() as mp:
                _install("plain" if i % 3 else "pending")
                _consume(_carrier(1), None, "orders:k:warm")  # (metrics: known off)
                if python:
                    _python_steps(mp)
                elif real is not None:
                    mp.setattr(hop, "_open_dropped_c", spy)
                outcomes.append(_outcome(
                    partial(_consume, _carrier(i), redelivered, destination), i, False))
        assert outcomes[0] == outcomes[1], i
        seen.append(outcomes[0][0])
    if real is not None and redelivered is not True:  # the C open ran, and opened scopes
        assert opened.count(7) >= 8
    if redelivered is False:  # the first attempt's fixed ID on the unsampled ones
        unsampled = [s for i, s in enumerate(seen) if i % 2 == 0]
        assert all(s[0][0] is NonRecordingSpan for s in unsampled), unsampled
        assert [s[0][3][0][1] for s in unsampled] == [
            hop.first_attempt_span_id(SpanContext(REMOTE.trace_id, REMOTE.span_id + i, True),
                                      f"orders:k:q{i % 5}") for i in range(0, 24, 2)]


@needs_c
@pytest.mark.usefixtures("provider_restored")
def test_a_first_delivery_opens_in_one_c_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the comparison compares: a first delivery's scope opens in the C call (its 7
    fields), with the fixed ID the Python function gives, salt cached or not."""
    opened: list[int] = []
    real = hop._open_dropped_c

    def spy(*args: Any) -> Any:
        found = real(*args)
        opened.append(len(found) if isinstance(found, tuple) else 0)
        return found

    _install("plain")
    _consume(_carrier(2), False, "orders:k:q")  # (metrics are then known off)
    monkeypatch.setattr(hop, "_open_dropped_c", spy)
    hop._destination_salts.pop("orders:k:new-one", None)
    for _ in range(2):  # its salt: computed by the Python function, then read from its cache
        result = _consume(_carrier(2), False, "orders:k:new-one")
        assert result[0][3][0][1] == hop.first_attempt_span_id(
            SpanContext(REMOTE.trace_id, REMOTE.span_id + 2, True), "orders:k:new-one")
    assert opened == [7, 7]
    with pytest.raises(TypeError, match="open_dropped"):
        _speedups.open_dropped(*range(10))


@needs_c
@pytest.mark.usefixtures("provider_restored")
def test_a_replaced_first_attempt_function_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C open computes the first attempt's ID itself only for hop's own function: a
    replaced one is called, its salt cached or not, as the Python steps call it."""
    _install("plain")
    _consume(_carrier(2), False, "orders:k:q")  # (metrics known off; the salt cached)
    monkeypatch.setattr(hop, "first_attempt_span_id", lambda remote, destination: 0x5EED)
    result = _consume(_carrier(2), False, "orders:k:q")
    assert result[0][3][0][1] == 0x5EED
