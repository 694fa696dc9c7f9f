"""Kafka sends when the sampler drops their span: no scope, the same outcome as the scope's.

In the 1%-sampled production setup (``ParentBased(TraceIdRatioBased(0.01))``, a transaction
per message) 99% of sends run under an unsampled root, so their send span is a dropped
child. With metrics off, ``_kafka.dropped_send`` then attaches the send's context (that
dropped span current, the transaction bound) and renders the headers in one step instead
of opening a ``produce_scope``; confluent-kafka's ``produce()``, which runs no user code,
gets the same headers from ``_kafka.dropped_headers`` with nothing attached, where it took
``headers_only``'s steps before. Each case here sends twice from the same random state,
once that way and once through the scope (``_kafka._dropped_fast`` off), and compares what
the client's stand-in got (headers) and saw (the whole current context, the span IDs
drawn), what it returned or raised, what is current afterwards, hoptrace's diagnostic
counts and the spans exported, over samplers that drop or keep such children, ambient
contexts of every kind, header shapes a client accepts or rejects, clients that raise or
leak a context, a B3 propagator, a patched ``NonRecordingSpan`` and metrics on.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_send_attach import BEHAVIOURS, KAFKA_HEADERS, one_send

import hoptrace
from hoptrace import _kafka
from hoptrace.core import metrics
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY
from hoptrace.core.hop import HOP_SPAN_KEY

UNSAMPLED = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
REMOTE_UNSAMPLED = SpanContext(0x4321, 0x8765, is_remote=True, trace_flags=TraceFlags(0))
SAMPLED = SpanContext(0xABCD, 0xDCBA, is_remote=False, trace_flags=TraceFlags(1))
TX = "d" * 32


class DropAll(Sampler):
    """A user's own sampler: hoptrace cannot know what it decides without asking it."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "DropAll"


SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "1%": lambda: ParentBased(TraceIdRatioBased(0.01)),
    "parent-based, all on": lambda: ParentBased(ALWAYS_ON),
    # Children of an unsampled local parent are kept: no shortcut for them.
    "keeps unsampled children": lambda: ParentBased(
        TraceIdRatioBased(0.01), local_parent_not_sampled=ALWAYS_ON),
    "remote unsampled kept": lambda: ParentBased(
        ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON),
    "user's own": DropAll,
}


def contexts() -> list[dict[Any, Any]]:
    """The ambient contexts a send runs in (fresh span objects per call)."""
    unsampled = NonRecordingSpan(UNSAMPLED)
    return [
        {},
        {SPAN_KEY: unsampled},  # no transaction: the scope draws one first (its path)
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX, BAGGAGE_KEY: {"transaction.id": TX}},
        {SPAN_KEY: unsampled, HOP_SPAN_KEY: unsampled, TRANSACTION_KEY: TX},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: TX,
         BAGGAGE_KEY: {"transaction.id": TX, "tenant": "a"}, "user": 1},
        {SPAN_KEY: unsampled, TRANSACTION_KEY: 123},  # malformed: the baggage's or none
        {SPAN_KEY: unsampled, BAGGAGE_KEY: {"transaction.id": "e" * 32}},
        {SPAN_KEY: NonRecordingSpan(REMOTE_UNSAMPLED), TRANSACTION_KEY: TX},
        {SPAN_KEY: NonRecordingSpan(SAMPLED), TRANSACTION_KEY: TX},  # a child that records
        {SPAN_KEY: NonRecordingSpan(SpanContext(0, 0, False)), TRANSACTION_KEY: TX},
        # Not ASCII: the C writer leaves the headers to Python (render's, as pairs). (Last:
        # test_celery_dropped_send.py picks some of these by index.)
        {SPAN_KEY: unsampled, TRANSACTION_KEY: "caf\u00e9-" + "d" * 27},
    ]


class Provider:
    """The installed provider's exported spans."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def take(self) -> list[tuple[Any, ...]]:
        spans = [(s.name, s.context.trace_id, s.context.span_id,
                  s.parent.span_id if s.parent else None, dict(s.attributes or {}))
                 for s in self.exporter.get_finished_spans()]
        self.exporter.clear()
        return spans


def install(sampler: Sampler) -> Iterator[Provider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield Provider(exporter)
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


@pytest.fixture(params=list(SAMPLERS))
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield from install(SAMPLERS[request.param]())


@pytest.fixture
def one_pct() -> Iterator[Provider]:
    yield from install(SAMPLERS["1%"]())


class Shortcut:
    """Counts the sends hop's dropped send took (``_kafka.dropped_send`` for the caller's
    headers, called directly for none); ``off()`` sends through the scope."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.taken = 0
        real = _kafka._hop_dropped_send

        def counted(*args: Any) -> Any:
            result = real(*args)
            self.taken += result is not None
            return result

        monkeypatch.setattr(_kafka, "_hop_dropped_send", counted)

    def off(self) -> None:
        self.monkeypatch.setattr(_kafka, "_dropped_fast", False)


def compare(client: str, provider: Provider, monkeypatch: pytest.MonkeyPatch,
            headers_shapes: list[Any] = KAFKA_HEADERS) -> int:
    """Send every case with the shortcut, then through the scope; assert the same outcome.
    Return how many sends took the shortcut."""
    shortcut = Shortcut(monkeypatch)
    cases = list(itertools.product(headers_shapes, range(len(contexts())), BEHAVIOURS))
    states, fast = [], []
    for headers, which, behaviour in cases:
        states.append(random.getstate())
        got = one_send(SENDS.get(client, client), headers, contexts()[which], behaviour, states[-1])
        got["spans"] = provider.take()
        fast.append(got)
    taken = shortcut.taken
    shortcut.off()
    for (headers, which, behaviour), state, got in zip(cases, states, fast, strict=True):
        want = one_send(SENDS.get(client, client), headers, contexts()[which], behaviour, state)
        want["spans"] = provider.take()
        assert got == want, (client, headers, contexts()[which], behaviour)
    return taken


def confluent_produce(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    """confluent-kafka's ``produce()`` through hoptrace's wrapper (``_produce``)."""
    from test_send_attach import client_call

    from hoptrace import confluent_kafka as hop_confluent

    def produce(topic: str, *args: Any, **kwargs: Any) -> None:
        client_call(behaviour, kwargs.get("headers"), seen)

    kwargs: dict[str, Any] = {"key": b"k"}
    if headers is not None:  # (as a caller that gives none: no headers argument at all)
        kwargs["headers"] = headers
    before = list(headers.items()) if isinstance(headers, dict) else copy.copy(headers)
    hop_confluent._produce(produce, None, "orders", (b"v",), kwargs)
    # The caller's headers are never changed: what is sent is a copy.
    assert (list(headers.items()) if isinstance(headers, dict) else headers) == before


#: The clients compared, and the stand-in send of each that test_send_attach has none for.
CLIENTS = ("kafka-python", "aiokafka", "confluent-kafka")
SENDS: dict[str, Callable[..., Any]] = {"confluent-kafka": confluent_produce}


@pytest.mark.parametrize("client", CLIENTS)
def test_the_shortcut_sends_and_attaches_what_the_scope_does(
    client: str, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = compare(client, provider, monkeypatch)
    sampler = trace.get_tracer_provider().sampler  # type: ignore[attr-defined]
    # Every ParentBased sampler here drops some unsampled parent's children (local or
    # remote): those sends took the shortcut. A sampler hoptrace cannot read: none did.
    assert (taken > 0) == isinstance(sampler, ParentBased)


@pytest.mark.parametrize("options", [
    {"transaction_header": "x-transaction-id"},
    {"baggage_mirror": False},
    {"baggage_mirror": False, "transaction_header": "x-request-id"},
    {"fast_spans": False},
], ids=lambda o: ",".join(map(str, o.items())))
@pytest.mark.parametrize("client", CLIENTS)
def test_the_same_under_other_settings(
    client: str, options: dict[str, Any], one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(**options)
    taken = compare(client, one_pct, monkeypatch)
    assert (taken == 0) == (options == {"fast_spans": False})


@pytest.mark.parametrize("client", CLIENTS)
def test_the_same_through_another_propagator(
    client: str, one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator

    b3 = pytest.importorskip("opentelemetry.propagators.b3")
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator(
        [b3.B3MultiFormat(), W3CBaggagePropagator()]))
    assert compare(client, one_pct, monkeypatch, KAFKA_HEADERS[:6]) > 0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_patched_non_recording_span_goes_through_the_scope(
    client: str, one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended: list[Any] = []
    monkeypatch.setattr(NonRecordingSpan, "end", lambda self, end_time=None: ended.append(
        self.get_span_context().span_id))
    assert compare(client, one_pct, monkeypatch, KAFKA_HEADERS[:6]) == 0
    assert ended  # the scope ended its dropped send spans, as it must while end is patched
    ended.clear()
    monkeypatch.undo()
    monkeypatch.setattr(NonRecordingSpan, "is_recording", lambda self: False)
    assert compare(client, one_pct, monkeypatch, KAFKA_HEADERS[:6]) == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_metrics_on_go_through_the_scope(
    client: str, one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(meters)
    try:
        # (Metric values are not compared send by send: both paths go through the scope.)
        assert compare(client, one_pct, monkeypatch, KAFKA_HEADERS[:3]) == 0
    finally:
        metrics.use_meter_provider(None)
        meters.shutdown()


def test_a_send_in_an_unsampled_transaction_takes_the_shortcut(one_pct: Provider) -> None:
    """What the shortcut gives: the headers carry a send span of its own in the transaction's
    unsampled trace, current while the client runs, and nothing is left attached."""
    from opentelemetry.context import get_current

    from hoptrace import kafka_python as hop_kafka_python

    seen: list[Any] = []

    def send(producer: Any, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: Any = None, timestamp_ms: Any = None) -> Any:
        seen.append((headers, trace.get_current_span().get_span_context(),
                     hoptrace.current_transaction_id()))
        return None

    for _ in range(50):
        with hoptrace.transaction("job") as tx:
            root = trace.get_current_span().get_span_context()
            if root.trace_flags.sampled:  # the 1 in 100 that records: not this test's
                continue
            before = get_current()
            hop_kafka_python._wrap_send(send)(object(), "orders", b"v")
            assert get_current() is before
            break
    else:
        raise AssertionError("50 sampled roots in a row at 1%")
    one_pct.take()
    ((headers, sc, current_tx),) = seen
    values = {k: v.decode() for k, v in headers}
    assert values["traceparent"] == f"00-{root.trace_id:032x}-{sc.span_id:016x}-00"
    assert sc.trace_id == root.trace_id and sc.span_id != root.span_id
    assert current_tx == tx.transaction_id
    assert not hoptrace.diagnostics()
