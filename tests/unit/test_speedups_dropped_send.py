"""``_speedups.dropped_send``: ``hop.dropped_send``'s common case in one C call, as its steps.

In the 1%-sampled production setup a send runs under an unsampled root, so its send span is
a dropped child; ``hop.dropped_send`` (Celery's publish, and through ``_kafka.dropped_send``
kafka-python's and aiokafka's send) then makes that child, attaches the send's context and
writes the headers. ``hop._send_c`` does the common case of that in one call, and declines
(``NotImplemented``, having done nothing) whatever the Python steps treat otherwise.

Each case here runs ``hop.dropped_send`` twice from the same random state, once with the C
entry and once with its Python steps alone (``hop._send_c`` None), and compares everything
observable: what it returned (the carrier written, the context attached: every value, span
contexts, the transaction, the baggage), what is current after it and after the attached
context's ``close()``, the random state, hoptrace's diagnostic counts and the spans
exported. Over ambient contexts of every kind (no span, sampled, remote, invalid, of a trace
state, no transaction, a malformed or non-ASCII one, baggage with other entries or another
ID), every carrier shape, other settings, samplers that keep some children, other
propagators, a patched ``NonRecordingSpan`` or ``spans.dropped_child``, metrics on and a
provider swapped under the SDK check's cached answer. Where the C entry declines, it is
checked to have done nothing (no draw, nothing attached, the carrier untouched).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from test_kafka_sampled_dropped_send import SAMPLERS, Provider, install
from test_send_attach import snapshot, untimed

import hoptrace
from hoptrace.core import hop, metrics, spans
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY, sdk_installed
from hoptrace.core.hop import HOP_SPAN_KEY

pytestmark = pytest.mark.skipif(hop._send_c is None, reason="the C entry is not built")

UNSAMPLED = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
REMOTE_UNSAMPLED = SpanContext(0x4321, 0x8765, is_remote=True, trace_flags=TraceFlags(0))
SAMPLED = SpanContext(0xABCD, 0xDCBA, is_remote=False, trace_flags=TraceFlags(1))
STATED = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0),
                     trace_state=TraceState([("vendor", "v1")]))
TX = "d" * 32
CARRIED = "c" * 32
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
USER_VALUE = object()


class Text(str):
    """A str subclass as the transaction: not the exact str the C entry takes."""


class OwnContext(Context):
    """A Context subclass as the current context."""


class Headers(dict):  # type: ignore[type-arg]
    """A dict subclass carrier."""


def contexts() -> list[dict[Any, Any]]:
    """The ambient contexts a send runs in (fresh span objects per call)."""
    unsampled = NonRecordingSpan(UNSAMPLED)
    return [
        {},
        {SPAN_KEY: unsampled},  # no transaction: the scope draws one first
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": TX}},
        # equal, not the same object
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": "d" * 32}},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {}},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: None},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": "e" * 32}},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": TX, "tenant": "a"}, "user": USER_VALUE},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"tenant": "a"}},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": Text(TX)}},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX,
         BAGGAGE_KEY: MappingProxyType({"transaction.id": TX})},
        {"user": USER_VALUE, SPAN_KEY: unsampled, HOP_SPAN_KEY: unsampled, TRANSACTION_KEY: TX},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: 123},  # malformed: the baggage's or none
        {SPAN_KEY: unsampled, TRANSACTION_KEY: ""},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: Text(TX)},
        {SPAN_KEY: unsampled, BAGGAGE_KEY: {"transaction.id": "e" * 32}},
        {SPAN_KEY: NonRecordingSpan(REMOTE_UNSAMPLED), TRANSACTION_KEY: TX},
        {SPAN_KEY: NonRecordingSpan(SAMPLED), TRANSACTION_KEY: TX},  # a child that records
        {SPAN_KEY: NonRecordingSpan(SpanContext(0, 0, False)), TRANSACTION_KEY: TX},
        {SPAN_KEY: NonRecordingSpan(STATED), TRANSACTION_KEY: TX},  # a trace state
        {SPAN_KEY: None, TRANSACTION_KEY: TX},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: "caf\u00e9-" + "d" * 27},  # not ASCII
        {SPAN_KEY: unsampled, TRANSACTION_KEY: "caf\u00e9-" + "d" * 27,
         BAGGAGE_KEY: {"transaction.id": "caf\u00e9-" + "d" * 27}},
    ]


#: (carrier, copy) makers: every shape a caller passes, new objects per call.
CARRIERS: list[Callable[[], tuple[Any, bool]]] = [
    lambda: ({}, False),
    lambda: ({"k": "v", "id": 1}, False),
    lambda: ({"x-transaction-id": CARRIED}, False),  # a header hoptrace must replace
    lambda: ({"traceparent": TRACEPARENT, "baggage": "transaction.id=" + "b" * 32,
              "x-hoptrace-sent-ns": "1"}, False),  # a stale context
    lambda: ([], False),  # Kafka's new list of pairs
    lambda: ([("k", b"v")], False),
    lambda: ([], True),
    lambda: ({"k": "v"}, True),
    lambda: ((("k", b"v"),), False),
    lambda: (None, False),
    lambda: (Headers(k="v"), False),
    lambda: ("not headers", False),
]


def carried(value: Any) -> Any:
    if isinstance(value, list):
        return [("<time>", b"") if item[0] in ("x-hoptrace-sent-ns", "x-sent") else item
                for item in value]
    return untimed(value)


class Paths:
    """Which way each C call went."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts = {"done": 0, "declined": 0, "none": 0, "handed back": 0}
        real = hop._send_c

        def counted(carrier: Any, sent_time: Any, copy: Any, attach: Any = True) -> Any:
            state, before = random.getstate(), get_current()
            shown = carried(carrier if not isinstance(carrier, (dict, list)) else
                            type(carrier)(carrier))
            result = real(carrier, sent_time, copy, attach)
            if result is NotImplemented:
                self.counts["declined"] += 1
                # Nothing done: no draw, nothing attached, the carrier untouched.
                assert random.getstate() == state and get_current() is before
                assert carried(carrier) == shown
            elif result is None:
                self.counts["none"] += 1
                assert random.getstate() == state and get_current() is before
            elif len(result) == 2:
                self.counts["done"] += 1
                if not attach:  # (nothing attached, nothing to close)
                    assert result[1] is None and get_current() is before
            else:
                self.counts["handed back"] += 1
                assert get_current() is before  # (the child drawn, nothing attached)
            return result

        monkeypatch.setattr(hop, "_send_c", counted)
        self.monkeypatch = monkeypatch

    def off(self) -> None:
        self.monkeypatch.setattr(hop, "_send_c", None)


def one_send(make: Callable[[], tuple[Any, bool]], ambient: dict[Any, Any], sent_time: bool,
             state: Any, context_type: type[Context] = Context,
             entry: Callable[..., Any] | None = None, attaching: bool = True) -> dict[str, Any]:
    """``hop.dropped_send`` (or ``entry``) once in ``ambient`` from random ``state``; all it
    shows."""
    hoptrace.reset_diagnostics()
    random.setstate(state)
    carrier, copy = make()
    given = carrier
    token = attach(context_type(ambient))
    try:
        before = get_current()
        try:
            if entry is not None:  # (keywords: as a caller may pass them)
                result: Any = (entry(carrier, sent_time=sent_time, copy=copy) if attaching
                               else entry(carrier, sent_time=sent_time, copy=copy, attach=False))
            else:
                result = hop.dropped_send(carrier, sent_time, copy, attaching)
        except TypeError as exc:
            result = ("raised", str(exc))
        out: dict[str, Any] = {"random": random.getstate()}
        if result is None or result[0] == "raised":
            out["result"] = result
            out["current"] = get_current() is before
        else:
            sent, attached = result
            out["carrier"] = carried(sent)
            out["in place"] = sent is given
            out["carrier type"] = type(sent)
            if attached is None:
                out["attached"] = None
                out["current"] = get_current() is before
            else:
                out["attached"] = snapshot(attached[1])
                out["attached type"] = type(attached)
                out["current"] = get_current() is attached[1]
                attached.close()
                out["after close"] = get_current() is before
        out["diagnostics"] = hoptrace.diagnostics()
    finally:
        detach(token)
    return out


def compare(provider: Provider, monkeypatch: pytest.MonkeyPatch,
            makers: list[Callable[[], tuple[Any, bool]]] = CARRIERS,
            context_type: type[Context] = Context, attaching: bool = True) -> dict[str, int]:
    """Every case with the C entry, then with the Python steps alone; the same outcome.
    Return which ways the C calls went."""
    cases = list(itertools.product(range(len(makers)), range(len(contexts())), (True, False)))
    states = []
    for _ in cases:
        states.append(random.getstate())
        random.getrandbits(64)
    # hop.dropped_send_entry: the C module's send_dropped (the C entry, and the steps it
    # hands sends to), called as the clients call it.
    whole = []
    for (which, ambient, sent_time), state in zip(cases, states, strict=True):
        got = one_send(makers[which], contexts()[ambient], sent_time, state, context_type,
                       hop.dropped_send_entry, attaching)
        got["spans"] = provider.take()
        whole.append(got)
    paths = Paths(monkeypatch)  # hop.dropped_send through the C entry, each call's way seen
    fast = []
    for (which, ambient, sent_time), state in zip(cases, states, strict=True):
        got = one_send(makers[which], contexts()[ambient], sent_time, state, context_type,
                       attaching=attaching)
        got["spans"] = provider.take()
        fast.append(got)
    paths.off()
    for (which, ambient, sent_time), state, got, entry in zip(
            cases, states, fast, whole, strict=True):
        want = one_send(makers[which], contexts()[ambient], sent_time, state, context_type,
                        attaching=attaching)
        want["spans"] = provider.take()
        assert got == want, (which, contexts()[ambient], sent_time)
        assert entry == want, (which, contexts()[ambient], sent_time)
    return paths.counts


@pytest.fixture(autouse=True)
def known_off() -> None:
    """Metrics known off and the W3C propagator seen, as after a first send."""
    assert not metrics.enabled()
    hoptrace.inject({})


def installed(sampler: Any) -> Iterator[Provider]:
    """:func:`install`, the SDK check's cached answer for it (as after a first send)."""
    for one in install(sampler):
        assert sdk_installed()
        yield one


@pytest.fixture(params=list(SAMPLERS))
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield from installed(SAMPLERS[request.param]())


@pytest.fixture
def one_pct() -> Iterator[Provider]:
    yield from installed(SAMPLERS["1%"]())


def test_the_c_entry_does_what_the_steps_do(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    counts = compare(provider, monkeypatch)
    sampler = trace.get_tracer_provider().sampler  # type: ignore[attr-defined]
    drops = type(sampler).__name__ == "ParentBased"
    # Every ParentBased sampler here drops some unsampled parent's children: the C entry
    # sent some of those; it declined the others.
    assert (counts["done"] > 0) == drops
    assert counts["declined"] > 0
    # Where a local unsampled parent's child is dropped, that of a parent of trace state
    # was handed back to the steps once drawn.
    local_drops = request.node.callspec.params["provider"] in (
        "1%", "parent-based, all on", "remote unsampled kept")
    assert (counts["handed back"] > 0) == local_drops


def test_without_attaching_the_same_carrier_and_nothing_left_attached(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``attach=False`` (pika's publish): the C entry as the steps, and against
    ``attach=True`` from the same random state, the same carrier, draws, counts and spans,
    with nothing attached (None returned in its place, the ambient context current)."""
    counts = compare(provider, monkeypatch, attaching=False)
    sampler = trace.get_tracer_provider().sampler  # type: ignore[attr-defined]
    assert (counts["done"] > 0) == (type(sampler).__name__ == "ParentBased")
    monkeypatch.undo()
    for which, ambient, sent_time in itertools.product(
            range(len(CARRIERS)), range(len(contexts())), (True, False)):
        state = random.getstate()
        attached = one_send(CARRIERS[which], contexts()[ambient], sent_time, state)
        attached["spans"] = provider.take()
        alone = one_send(CARRIERS[which], contexts()[ambient], sent_time, state, attaching=False)
        alone["spans"] = provider.take()
        case = (which, contexts()[ambient], sent_time)
        if "attached" in alone:
            assert alone["attached"] is None and alone["current"], case
            for key in ("attached", "attached type", "current", "after close"):
                attached.pop(key, None)
                alone.pop(key, None)
        assert alone == attached, case
        random.getrandbits(64)


@pytest.mark.parametrize("options", [
    {"transaction_header": "x-transaction-id"},
    {"baggage_mirror": False},
    {"baggage_mirror": False, "transaction_header": "x-request-id"},
    {"baggage_key": "tx", "sent_time_header": "x-sent"},
    {"max_baggage_bytes": 100},  # the mirror cannot carry every ID: the header may be needed
    {"fast_spans": False},
    {"propagation_only": True},
    {"enabled": False},
], ids=lambda o: ",".join(map(str, o.items())))
def test_the_same_under_other_settings(
    options: dict[str, Any], one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(**options)
    metrics.enabled()  # (known off again, as after a first send)
    hoptrace.inject({})
    counts = compare(one_pct, monkeypatch)
    sends = options.get("enabled", True) and not options.get("propagation_only") and (
        options.get("fast_spans", True))
    # (A baggage limit the mirror may not fit: the steps' general case, declined.)
    assert (counts["done"] > 0) == (sends and "max_baggage_bytes" not in options)


def test_the_same_in_a_context_of_another_type(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = compare(one_pct, monkeypatch, CARRIERS[:5], OwnContext)
    assert counts["done"] == 0 and counts["declined"] > 0


@pytest.mark.parametrize("propagator", ["b3", "tracecontext"])
def test_the_same_through_another_propagator(
    propagator: str, one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if propagator == "b3":
        b3 = pytest.importorskip("opentelemetry.propagators.b3")
        chosen: Any = CompositePropagator([b3.B3MultiFormat(), W3CBaggagePropagator()])
    else:
        chosen = TraceContextTextMapPropagator()
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", chosen)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    assert counts["done"] == 0 and counts["declined"] > 0


@pytest.mark.parametrize("method", ["end", "is_recording", "get_span_context"])
def test_the_same_with_a_patched_non_recording_span(
    method: str, one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    original = getattr(NonRecordingSpan, method)

    def patched(self: Any, *args: Any) -> Any:
        calls.append(method)
        return original(self, *args)

    monkeypatch.setattr(NonRecordingSpan, method, patched)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    # A patched end or is_recording: the scope must make the span (None both ways). A patched
    # get_span_context is called as the steps call it.
    assert (counts["done"] > 0) == (method == "get_span_context") == bool(calls)


def test_a_patched_dropped_child_entry_still_takes_effect(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Any] = []
    real = spans.dropped_child

    def dropped_child(parent: Any, span_id: Any = None) -> Any:
        asked.append(parent)
        return real(parent, span_id)

    monkeypatch.setattr(spans, "dropped_child", dropped_child)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    assert counts["done"] > 0 and asked
    # hop._dropped_child replaced: the C entry declines, the replacement answers.
    monkeypatch.undo()
    mine: list[Any] = []

    def replacement(*args: Any) -> None:
        mine.append(args)

    monkeypatch.setattr(hop, "_dropped_child", replacement)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    assert counts["done"] == 0 and mine


def test_a_failing_dropped_child_is_counted_as_the_steps_count_it(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(parent: Any, span_id: Any = None) -> Any:
        raise RuntimeError("sampler trouble")

    monkeypatch.setattr(spans, "dropped_child", broken)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    assert counts["handed back"] > 0 and counts["done"] == 0


def test_metrics_on_go_the_steps_way(one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(meters)
    try:
        counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    finally:
        metrics.use_meter_provider(None)
        meters.shutdown()
    assert counts["done"] == 0 and counts["declined"] > 0


def test_a_send_with_no_current_span_is_answered_in_c(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No span current (a send outside any transaction or span): there is no child to drop
    and the steps answer None, having done nothing. The C entry gives that answer itself, so
    that a client asking it first for every send (confluent-kafka's produce, a Kafka send
    without headers) runs no Python steps for it."""
    for ambient in ({}, {TRANSACTION_KEY: TX}, {SPAN_KEY: None, TRANSACTION_KEY: TX},
                    {"user": USER_VALUE}):
        for carrier, attach_it in (([], True), ([], False), ({}, True)):
            token = attach(Context(ambient))
            try:
                state, before = random.getstate(), get_current()
                assert hop._send_c(carrier, True, False, attach_it) is None, ambient
                assert random.getstate() == state and get_current() is before
                assert not carrier
            finally:
                detach(token)
    counts = compare(one_pct, monkeypatch, CARRIERS[:6])
    # (contexts()[0], no span: each carrier and send-time flag answered None in C)
    assert counts["none"] >= 12


def test_a_provider_swapped_under_the_cached_sdk_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK check's cached answer is for another provider: the C entry declines until
    the steps ask again; then it follows the new provider (a no-op one: no span)."""
    from opentelemetry.trace import NoOpTracerProvider

    for first, then in (("1%", "parent-based, all on"), ("1%", "keeps unsampled children")):
        for one in install(SAMPLERS[first]()):
            compare(one, monkeypatch, CARRIERS[:2])
            monkeypatch.undo()
            for other in install(SAMPLERS[then]()):
                counts = compare(other, monkeypatch, CARRIERS[:6])
                monkeypatch.undo()
                assert counts["declined"] > 0
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = NoOpTracerProvider()
    try:
        nothing = Provider(type("Nothing", (), {"get_finished_spans": lambda self: [],
                                                "clear": lambda self: None})())
        counts = compare(nothing, monkeypatch, CARRIERS[:6])
    finally:
        trace._TRACER_PROVIDER = previous
    assert counts["done"] == 0


def test_what_the_c_entry_sends(one_pct: Provider) -> None:
    """What it gives, read back: the headers carry the dropped child in the transaction's
    trace, that child current in the attached context with the transaction bound; closing
    it restores the ambient context."""
    parent = NonRecordingSpan(UNSAMPLED)
    ambient = Context({SPAN_KEY: parent, TRANSACTION_KEY: TX})
    token = attach(ambient)
    try:
        headers: dict[str, Any] = {}
        sent, attached = hop._send_c(headers, False, False)
        assert sent is headers and type(attached) is hop.AttachedSend
        child = attached[1][SPAN_KEY]
        sc = child.get_span_context()
        assert sc.trace_id == UNSAMPLED.trace_id and sc.span_id != UNSAMPLED.span_id
        assert attached[1][HOP_SPAN_KEY] is child and get_current() is attached[1]
        assert headers == {"traceparent": f"00-{UNSAMPLED.trace_id:032x}-{sc.span_id:016x}-00",
                           "baggage": f"transaction.id={TX}"}
        assert hoptrace.current_transaction_id() == TX
        attached.close()
        assert get_current() is ambient
        pairs: list[Any] = []
        sent, attached = hop._send_c(pairs, True, False)
        assert sent is pairs and [name for name, _ in pairs] == [
            "traceparent", "baggage", "x-hoptrace-sent-ns"]
        attached.close()
        # attach=False: the same headers of a new dropped child, nothing attached.
        headers = {}
        sent, attached = hop._send_c(headers, False, False, False)
        assert sent is headers and attached is None and get_current() is ambient
        version, trace_id, span_id, flags = headers.pop("traceparent").split("-")
        assert (version, int(trace_id, 16), flags) == ("00", UNSAMPLED.trace_id, "00")
        assert int(span_id, 16) not in (UNSAMPLED.span_id, sc.span_id)
        assert headers == {"baggage": f"transaction.id={TX}"}
    finally:
        detach(token)
    assert not hoptrace.diagnostics()


def close_cases() -> list[Callable[[Any], Any]]:
    """What happens between the attach and ``close()``; each returns the close's argument."""
    def nothing(attached: Any) -> None:
        return None

    def an_error(attached: Any) -> Exception:
        return RuntimeError("the client's")

    def built_on_it(attached: Any) -> None:  # a context on the send span, left current
        attach(Context({**attached[1], "more": 1}))

    def another(attached: Any) -> None:  # the user's own context, left current
        attach(Context({"user": USER_VALUE}))

    def closed_already(attached: Any) -> None:
        hop._attached_close_py(attached)

    def detached_elsewhere(attached: Any) -> None:  # reset by hand, then re-attached
        detach(attached[0])
        attach(attached[1])

    return [nothing, an_error, built_on_it, another, closed_already, detached_elsewhere]


@pytest.mark.skipif(hop.AttachedSend.close is hop._attached_close_py,
                    reason="the C close is not built")
@pytest.mark.parametrize("case", range(len(close_cases())))
def test_the_c_close_does_what_the_python_close_does(case: int, one_pct: Provider) -> None:
    """``AttachedSend.close`` (the C method) against the Python method it stands in for:
    what is current afterwards, what it raised, hoptrace's diagnostic counts."""
    outcomes = []
    state = random.getstate()
    for close in (hop.AttachedSend.close, hop._attached_close_py):
        hoptrace.reset_diagnostics()
        random.setstate(state)
        ambient = Context({SPAN_KEY: NonRecordingSpan(UNSAMPLED), TRANSACTION_KEY: TX})
        token = attach(ambient)
        try:
            sent = hop.dropped_send({}, False)
            assert sent is not None and sent[1] is not None
            attached = sent[1]
            exc = close_cases()[case](attached)
            before = get_current()
            args = () if exc is None else (exc,)
            try:
                close(attached, *args)
                raised = None
            except Exception as error:  # pragma: no cover - neither raises
                raised = repr(error)
            after = get_current()
            outcomes.append((raised, after is ambient, after is before, snapshot(after),
                             hoptrace.diagnostics()))
        finally:
            detach(token)
    assert outcomes[0] == outcomes[1]
    with pytest.raises(TypeError):
        hop.AttachedSend.close(hop.AttachedSend((1, 2)), None, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        hop.AttachedSend.close(("not", "attached"))  # type: ignore[arg-type]
