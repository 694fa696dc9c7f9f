"""pika's publish of a send span the sampler drops: ``_amqp.begin_dropped`` against ``_begin``.

With spans on and a sampler known to drop the send span (an unsampled parent under
``ParentBased``: 99% of messages at a 1% rate), pika's ``basic_publish`` wrapper writes the
headers the send scope would write, with the scope's dropped span, and calls the client
without the scope (``basic_publish`` runs no user code: the scope's context would only be
attached to be detached again). Each case here publishes twice from the same random state
and ID generator, once that way and once through ``_amqp.publish``'s general steps
(``_amqp._dropped_fast`` off), and compares everything a publish leaves: the headers and
properties the client got, what it returned or raised, the spans exported, the span IDs
drawn (the generator's next draw), hoptrace's diagnostic counts, the ends a patched
``NonRecordingSpan`` saw, the context and the nested-publish guard afterwards. Hostile
inputs are included: ambient contexts of every shape, other headers and routing keys, B3,
metrics on, samplers that keep the child or that hoptrace does not know, ``fast_spans`` off.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import test_send_attach as sa
from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.propagators.b3 import B3MultiFormat
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
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_kafka_send_headers_differential import Headers
from test_sdk_spans_dropped import Counting, SeededIds

import hoptrace
from hoptrace import _amqp
from hoptrace import pika as hop_pika
from hoptrace.core import metrics
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY
from hoptrace.core.hop import HOP_SPAN_KEY

TX = "d" * 32
UNSAMPLED = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
SAMPLED = SpanContext(0x1234, 0x5679, is_remote=False, trace_flags=TraceFlags(1))
REMOTE = SpanContext(0x4321, 0x8765, is_remote=True, trace_flags=TraceFlags(0))

SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "ratio": lambda: ParentBased(TraceIdRatioBased(0.01)),
    "default": lambda: ParentBased(ALWAYS_ON),
    "keeps unsampled children": lambda: ParentBased(
        ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON),
    "custom": Counting,
    "off": lambda: ALWAYS_OFF,
}


class _Broken:
    """A span stand-in whose span context cannot be read."""

    def get_span_context(self) -> Any:
        raise RuntimeError("no context")


BROKEN = _Broken()  # (one object: the contexts compared hold the same one)


def parents() -> list[dict[Any, Any]]:
    """The contexts a publish runs in (fresh span objects per call)."""
    span = NonRecordingSpan(UNSAMPLED)
    return [
        {SPAN_KEY: span, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": TX}},
        {SPAN_KEY: span, HOP_SPAN_KEY: span, TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": TX, "tenant": "a"}},
        {SPAN_KEY: span, TRANSACTION_KEY: TX},
        {SPAN_KEY: span, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"tenant": "a"}},
        {SPAN_KEY: span, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": "e" * 32}},
        {SPAN_KEY: span, TRANSACTION_KEY: TX, BAGGAGE_KEY: {}},
        {SPAN_KEY: NonRecordingSpan(REMOTE), TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": TX}},
        {SPAN_KEY: NonRecordingSpan(SAMPLED), TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": TX}},
        {SPAN_KEY: NonRecordingSpan(SpanContext(0, 0, False)), TRANSACTION_KEY: TX},
        {SPAN_KEY: BROKEN, TRANSACTION_KEY: TX},
        {SPAN_KEY: span},
        {SPAN_KEY: span, TRANSACTION_KEY: 123},
        {SPAN_KEY: span, BAGGAGE_KEY: {"transaction.id": TX}},
        {TRANSACTION_KEY: TX},
        {},
    ]


ACTIVE = object()  # headers naming the active span as their parent (traced already)

HEADERS: list[Any] = [
    None, {}, {"k": "v"}, {"x-transaction-id": sa.CARRIED, "k": 1},
    {"baggage": "transaction.id=" + sa.CARRIED + ",tenant=a"},
    {"x-transaction-id": b"\xff\xfe", "h": sa.Hostile(), "n": None},
    {"traceparent": sa.TRACEPARENT}, Headers({"x-transaction-id": sa.CARRIED}),
    [("k", "v")], "not headers", ACTIVE,
]
KEYS: list[Any] = ["k", "", None, 7, sa.Hostile()]
IDS: list[Any] = [None, "m-1", b"m-1", 42]


class _Properties:
    """A ``BasicProperties`` stand-in (the wrapper copies it through ``__dict__``)."""

    def __init__(self, headers: Any, message_id: Any) -> None:
        self.headers = headers
        self.message_id = message_id
        self.correlation_id = "c-1"
        self.content_type = "application/json"


@pytest.fixture
def install() -> Iterator[Callable[[Sampler], tuple[InMemorySpanExporter, SeededIds]]]:
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


def _headers(headers: Any, parent: dict[Any, Any]) -> Any:
    if headers is not ACTIVE:
        return dict(headers) if type(headers) is dict else headers
    span = parent.get(SPAN_KEY)
    sc = span.get_span_context() if isinstance(span, trace.Span) else UNSAMPLED
    return {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-00"}


def _untimed(headers: Any) -> Any:
    """``headers`` with the send time (read from the clock) as a placeholder."""
    if type(headers) is dict:
        return sa.untimed(dict(headers))
    if type(headers) is list:
        return [(k, "<time>") if k == sa.SENT else (k, v) for k, v in headers]
    return headers


def one_publish(
    fast: bool, parent: dict[Any, Any], headers: Any, key: Any, message_id: Any,
    behaviour: str, ids: SeededIds, exporter: InMemorySpanExporter, nested: bool = False,
    in_call: bool = False,
) -> dict[str, Any]:
    """Publish once through pika's wrapper; return everything it left (``in_call``: and
    what was current in the client's call, which the shortcut and the scope differ on:
    ``basic_publish`` runs no user code, so the shortcut attaches nothing around it)."""
    _amqp._dropped_fast = fast
    ids.rng = random.Random(5)
    random.seed(9)
    exporter.clear()
    hoptrace.reset_diagnostics()
    seen: list[Any] = []

    def original(channel: Any, exchange: Any, routing_key: Any, body: Any, properties: Any,
                 mandatory: Any) -> Any:
        sent = getattr(properties, "headers", None)
        if in_call:
            current = get_current()
            span = current.get(SPAN_KEY)
            seen.append(("in the call", span.get_span_context() if isinstance(
                span, trace.Span) else span, current.get(TRANSACTION_KEY),
                current.get(BAGGAGE_KEY)))
        seen.append((_untimed(sent),
                     properties is given, exchange, routing_key, body, mandatory,
                     {k: v for k, v in vars(properties).items() if k != "headers"}
                     if properties is not None else None))
        if behaviour == "raise":
            raise sa.Failure("broker gone")
        return "published"

    given = _Properties(_headers(headers, parent), message_id)
    before = dict(given.headers) if type(given.headers) is dict else given.headers
    token = attach(Context(parent))
    guard = _amqp._publishing.set(True) if nested else None
    outcome: Any
    try:
        try:
            outcome = hop_pika._wrap_basic_publish(original)(
                object(), "orders", key, b"body", given, False)
        except sa.Failure as exc:
            outcome = ("raised", str(exc))
        after = get_current()
    finally:
        if guard is not None:
            _amqp._publishing.reset(guard)
        detach(token)
    return {
        "outcome": outcome,
        "seen": seen,
        "caller's headers unchanged": (
            given.headers == before if type(before) is dict else given.headers is before),
        "context restored": after == Context(parent),
        "guard": _amqp._publishing.get(),
        "next span ID": ids.generate_span_id(),
        "next random": random.getrandbits(64),
        "diagnostics": hoptrace.diagnostics(),
        "exported": [(s.name, s.context, s.parent, dict(s.attributes or {}),
                      s.status.status_code, [e.name for e in s.events])
                     for s in exporter.get_finished_spans()],
    }


def compare(cases: Any, ids: SeededIds, exporter: InMemorySpanExporter,
            monkeypatch: pytest.MonkeyPatch, nested: bool = False,
            sent: list[bool] | None = None) -> int:
    """Publish each case both ways; assert the same; return how many took the shortcut
    with a dropped span (those of no headers, ``hop.dropped_send``'s, go to ``sent`` when
    given)."""
    taken: list[bool] = []
    real = _amqp.begin_dropped
    real_send = _amqp.dropped_send

    def counted(*args: Any) -> Any:
        result = real(*args)
        taken.append(result is not None and result[1] is not None and _amqp._dropped_fast)
        return result

    def counted_send(*args: Any) -> Any:  # (no headers of the caller's: hop.dropped_send)
        result = real_send(*args)
        (taken if sent is None else sent).append(
            result is not None and result[1] is not None and _amqp._dropped_fast)
        return result

    monkeypatch.setattr(_amqp, "begin_dropped", counted)
    monkeypatch.setattr(_amqp, "dropped_send", counted_send)
    try:
        for parent_at, headers, key, message_id, behaviour in cases:
            fast = one_publish(True, parents()[parent_at], headers, key, message_id,
                               behaviour, ids, exporter, nested)
            general = one_publish(False, parents()[parent_at], headers, key, message_id,
                                  behaviour, ids, exporter, nested)
            assert fast == general, (parent_at, headers, key, message_id, behaviour)
    finally:
        _amqp._dropped_fast = True
    return sum(taken)


def _all_cases(keys: list[Any] = KEYS[:1], message_ids: list[Any] = IDS[:2]) -> list[Any]:
    return list(itertools.product(range(len(parents())), HEADERS, keys, message_ids,
                                  ("return", "raise")))


@pytest.mark.parametrize("options", [{}, {"transaction_header": "x-transaction-id"},
                                     {"baggage_mirror": False}, {"fast_spans": False}],
                         ids=lambda o: ",".join(map(str, o.items())) or "defaults")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_shortcut_publishes_what_the_scope_publishes(
    sampler: str, options: dict[str, Any], install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(**options)
    hoptrace.inject({})  # (the propagator in force seen once, as any earlier send sees it)
    taken = compare(_all_cases(), ids, exporter, monkeypatch)
    if sampler in ("ratio", "default") and options.get("fast_spans", True):
        assert taken > 0
    else:
        assert taken == 0  # the child may record, or hoptrace cannot tell: the scope's path


def test_a_dropped_send_carries_the_dropped_span(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the comparison compares: a new span ID in the current trace, not sampled, the
    transaction in the baggage, the caller's properties copied, nothing exported."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    taken: list[Any] = []
    real = _amqp.begin_dropped
    monkeypatch.setattr(_amqp, "begin_dropped", lambda *a: taken.append(real(*a)) or taken[-1])
    got = one_publish(True, parents()[0], {"k": "v"}, "k", "m-1", "return", ids, exporter)
    assert taken[0] is not None and taken[0][1] is not None  # the shortcut, with a span
    (sent, same, *_), = got["seen"]
    assert not same and got["caller's headers unchanged"] and got["outcome"] == "published"
    _, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert trace_id == f"{UNSAMPLED.trace_id:032x}" and flags == "00"
    assert int(span_id, 16) not in (0, UNSAMPLED.span_id)
    assert sent["baggage"] == "transaction.id=" + TX and sent["k"] == "v"
    assert got["exported"] == [] and got["context restored"] and got["guard"] is False


@pytest.mark.parametrize("headers", [None, {}])
def test_a_dropped_send_without_headers_attaches_nothing(
    headers: Any, install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No headers of the caller's: hop.dropped_send writes the new headers with the dropped
    send span, and attaches nothing around the call (``basic_publish`` runs no user code):
    the caller's context is current in it, and after."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    metrics.enabled()  # (the meter provider in force seen once, as any earlier send sees it)
    taken: list[Any] = []
    real = _amqp.dropped_send
    monkeypatch.setattr(_amqp, "dropped_send", lambda *a: taken.append(real(*a)) or taken[-1])
    got = one_publish(True, parents()[0], headers, "k", "m-1", "return", ids, exporter,
                      in_call=True)
    assert taken[0] is not None and taken[0][0] is not None and taken[0][1] is None
    (_, sc, tx, baggage), (sent, same, *_) = got["seen"]
    assert sc == UNSAMPLED and tx == TX and baggage == {"transaction.id": TX}  # (the caller's)
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, int(trace_id, 16), flags) == ("00", UNSAMPLED.trace_id, "00")
    assert int(span_id, 16) not in (0, UNSAMPLED.span_id)  # the dropped send span's
    assert not same and sent["baggage"] == "transaction.id=" + TX
    assert got["exported"] == [] and got["context restored"] and got["guard"] is False


def test_other_routing_keys_and_message_ids(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    cases = list(itertools.product((0, 2, 7), (None, {"k": "v"}), KEYS, IDS,
                                   ("return", "raise")))
    assert compare(cases, ids, exporter, monkeypatch) > 0


def test_a_nested_publish_goes_out_unchanged(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    compare(_all_cases(), ids, exporter, monkeypatch, nested=True)
    got = one_publish(True, parents()[0], {"k": "v"}, "k", None, "return", ids, exporter,
                      nested=True)
    assert got["seen"][0][0] == {"k": "v"} and got["seen"][0][1]  # the caller's, as given


def test_b3_and_metrics_take_the_scope(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(B3MultiFormat())
    try:
        hoptrace.inject({})
        # (A publish of no headers may take hop.dropped_send, which renders through B3 with
        # the send's context attached, as the scope does: compared all the same.)
        assert compare(_all_cases(), ids, exporter, monkeypatch, sent=[]) == 0
    finally:
        propagate.set_global_textmap(previous)
    hoptrace.reset()
    hoptrace.inject({})
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        assert metrics.enabled()
        sent: list[bool] = []
        assert compare(_all_cases(), ids, exporter, monkeypatch, sent=sent) == 0
        assert not any(sent)  # metrics on: the scope's path
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def test_a_patched_non_recording_span_is_ended_both_ways(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NonRecordingSpan whose ``end`` is the user's: the scope ends it, so must the
    shortcut (and with the call's error, both record it)."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    ended: list[Any] = []
    monkeypatch.setattr(NonRecordingSpan, "end",
                        lambda self, end_time=None: ended.append(self.get_span_context()))
    monkeypatch.setattr(NonRecordingSpan, "record_exception",
                        lambda self, exc, *a, **k: ended.append(("error", str(exc))))
    for behaviour in ("return", "raise"):
        ended.clear()
        assert compare([(0, {"k": "v"}, "k", None, behaviour)], ids, exporter, monkeypatch)
        assert len(ended) == 2  # the send span's end, once each way


# ------------------------------------------------- kombu and aio-pika: the context attached ---


def one_client_publish(client: str, fast: bool, parent: dict[Any, Any], headers: Any,
                       behaviour: str, ids: SeededIds, exporter: InMemorySpanExporter
                       ) -> dict[str, Any]:
    """Publish once through kombu's or aio-pika's wrapper (their call may run user code, so
    the send's context is attached for it: ``test_send_attach.one_send`` records what the
    call saw, what it leaked, what is current after); return everything it left."""
    _amqp._dropped_fast = fast
    ids.rng = random.Random(5)
    random.seed(9)
    exporter.clear()
    got = sa.one_send(client, _headers(headers, parent), parent, behaviour, random.getstate())
    got.update({
        "guard": _amqp._publishing.get(),
        "next span ID": ids.generate_span_id(),
        "next random": random.getrandbits(64),
        "exported": [(s.name, s.context, s.parent, dict(s.attributes or {}),
                      s.status.status_code, [e.name for e in s.events])
                     for s in exporter.get_finished_spans()],
    })
    return got


def compare_clients(client: str, ids: SeededIds, exporter: InMemorySpanExporter,
                    monkeypatch: pytest.MonkeyPatch, into_new: list[bool] | None = None) -> int:
    """Each parent, headers and behaviour both ways; return how many took the shortcut
    with a dropped span (``into_new`` gets one entry per publish of no headers of the
    caller's that ``hop.dropped_send`` answered, a dict written in place)."""
    taken: list[bool] = []
    real = _amqp._attach_dropped
    real_send = _amqp.dropped_send

    def counted(*args: Any) -> Any:
        result = real(*args)
        taken.append(result is not None and result[1][2] is not None)
        return result

    def counted_send(*args: Any) -> Any:
        result = real_send(*args)
        if result is not None and result[1] is not None:
            taken.append(True)
            if into_new is not None:
                into_new.append(True)
        return result

    monkeypatch.setattr(_amqp, "_attach_dropped", counted)
    monkeypatch.setattr(_amqp, "dropped_send", counted_send)
    try:
        for parent_at, headers, behaviour in itertools.product(
                range(len(parents())), [h for h in HEADERS if h != [("k", "v")]],
                sa.BEHAVIOURS):
            if client == "aio-pika" and parents()[parent_at].get(SPAN_KEY) is BROKEN:
                # (Both ways the failed render sends a copy of the message that shares the
                # caller's headers dict, which test_send_attach's stand-in rejects.)
                continue
            fast = one_client_publish(client, True, parents()[parent_at], headers, behaviour,
                                      ids, exporter)
            general = one_client_publish(client, False, parents()[parent_at], headers,
                                         behaviour, ids, exporter)
            assert fast == general, (parent_at, headers, behaviour)
    finally:
        _amqp._dropped_fast = True
    return sum(taken)


@pytest.mark.parametrize("options", [{}, {"transaction_header": "x-transaction-id"},
                                     {"baggage_mirror": False}, {"fast_spans": False}],
                         ids=lambda o: ",".join(map(str, o.items())) or "defaults")
@pytest.mark.parametrize("sampler", ["ratio", "keeps unsampled children", "custom"])
@pytest.mark.parametrize("client", ["kombu", "aio-pika"])
def test_kombu_and_aio_pika_attach_what_the_scope_attaches(
    client: str, sampler: str, options: dict[str, Any], install: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(**options)
    hoptrace.inject({})
    into_new: list[bool] = []
    taken = compare_clients(client, ids, exporter, monkeypatch, into_new)
    assert (taken > 0) == (sampler == "ratio" and options.get("fast_spans", True))
    # No headers of the caller's (None, {}): hop.dropped_send writes a new dict in place.
    assert bool(into_new) == (sampler == "ratio" and options.get("fast_spans", True))


def test_a_dropped_kombu_send_runs_in_its_span(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the comparison compares: the call saw the dropped send span current, in the
    transaction, the headers carry that span, and the context is restored after."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    hoptrace.inject({})
    got = one_client_publish("kombu", True, parents()[0], {"k": "v"}, "return", ids, exporter)
    (sent, (trace_id, span_id, flags, tx, baggage, _)), = got["seen"]
    assert flags == 0
    assert trace_id == UNSAMPLED.trace_id and span_id not in (0, UNSAMPLED.span_id)
    assert sent["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-00" and tx == TX
    assert baggage == {"transaction.id": TX} and got["exported"] == []
    assert got["after"] == sa.snapshot(Context(parents()[0])) and got["guard"] is False
