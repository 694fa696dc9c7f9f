"""A Kafka send whose span the sampler drops, in the 1%-sampled production setup.

With ``ParentBased(TraceIdRatioBased(0.01))`` and a transaction per message, 99% of
transactions have an unsampled root, and their send spans are dropped children. With
metrics off, confluent-kafka's ``produce()`` then writes only the headers, carrying the
dropped child as the send scope would (no scope, no delivery-callback wrapper), and
aiokafka / kafka-python end the send at once instead of in an ack callback. What goes on
the wire, which callbacks run, and what metrics count must not change. No broker: the
clients' calls are stand-ins.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

import hoptrace
from hoptrace import _kafka
from hoptrace import aiokafka as hop_aiokafka
from hoptrace import confluent_kafka as ck
from hoptrace import kafka_python as hop_kafka_python
from hoptrace.core import metrics
from hoptrace.core.context import get_current
from hoptrace.core.propagator import baggage_entry

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class DropAll(Sampler):
    """A user's own sampler: hoptrace cannot know what it decides without asking it."""

    calls = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        DropAll.calls += 1
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "DropAll"


#: The exporter of the provider the running test installed.
_exporters: list[InMemorySpanExporter] = []


def _provider(sampler: Sampler) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    _exporters[:] = [exporter]
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


@pytest.fixture
def sampled_1pct() -> Iterator[InMemorySpanExporter]:
    yield from _provider(ParentBased(TraceIdRatioBased(0.01)))


@pytest.fixture
def every_span() -> Iterator[InMemorySpanExporter]:
    yield from _provider(ParentBased(ALWAYS_ON))


@pytest.fixture
def user_sampler() -> Iterator[InMemorySpanExporter]:
    yield from _provider(DropAll())


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    metrics.use_meter_provider(provider)
    try:
        yield metric_reader
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def unsampled_transaction() -> Any:
    """A transaction whose root the 1% sampler dropped (99 in 100 are)."""
    for _ in range(50):
        tx = hoptrace.transaction("job")
        tx.__enter__()
        if not trace.get_current_span().get_span_context().trace_flags.sampled:
            return tx
        tx.__exit__(None, None, None)
        _exporters[0].clear()  # the 1 in 100 root that was sampled is not the test's
    raise AssertionError("50 sampled roots in a row at 1%")


class Message:
    """A delivered confluent-kafka message, as the delivery report gives it."""

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return 7


def produced(**kwargs: Any) -> dict[str, Any]:
    """Produce through hoptrace's confluent-kafka wrapper; return what the client got."""
    got: list[dict[str, Any]] = []
    ck._produce(lambda topic, *args, **kw: got.append(kw), None, "orders", (b"v",), kwargs)
    (sent,) = got
    return sent


def text(headers: Any) -> dict[str, str]:
    if isinstance(headers, list):
        return {k: v.decode() for k, v in headers}
    return dict(headers)


def scope_headers(headers: Any = None, timestamp_given: bool = False) -> Any:
    """The headers the full send scope writes for the same send (the reference)."""
    scope = _kafka.send_scope("orders", headers, b"k", timestamp_given)
    carrier = scope.carrier
    scope.close()
    return carrier


def without_span_id(values: dict[str, str]) -> dict[str, str]:
    """The header values with the send span's own (random) ID left out."""
    out = dict(values)
    out["traceparent"] = TRACEPARENT.sub(r"00-\1-*-\3", out["traceparent"])
    return out


@pytest.mark.parametrize("user_headers", [None, [("app", b"1")], {"app": "1"},
                                          [("x-transaction-id", b"c" * 32)]])
def test_an_unsampled_transaction_sends_the_scopes_headers(
    sampled_1pct: InMemorySpanExporter, user_headers: Any
) -> None:
    reported: list[Any] = []
    kwargs: dict[str, Any] = {"on_delivery": lambda err, msg: reported.append((err, msg))}
    if user_headers is not None:
        kwargs["headers"] = user_headers
    before = None if user_headers is None else type(user_headers)(user_headers)
    tx = unsampled_transaction()
    try:
        root = trace.get_current_span().get_span_context()
        outer = get_current()
        assert _kafka.headers_only() not in (True, False)  # the dropped send span
        sent = produced(**kwargs)
        assert get_current() is outer  # the context is left as it was
        reference = scope_headers(user_headers)
    finally:
        tx.__exit__(None, None, None)
    assert user_headers == before  # the caller's headers are copied, not changed
    assert sent["headers"] is not user_headers
    values, expected = text(sent["headers"]), text(reference)
    assert list(values) == list(expected)  # the same headers, in the same order
    assert without_span_id(values) == without_span_id(expected)
    trace_id, span_id, flags = TRACEPARENT.fullmatch(values["traceparent"]).groups()  # type: ignore[union-attr]
    assert trace_id == f"{root.trace_id:032x}" and flags == "00"  # the transaction's, unsampled
    assert span_id != f"{root.span_id:016x}"  # a send span of its own, as the scope's
    assert baggage_entry(values["baggage"], "transaction.id") == tx.transaction_id
    if "x-transaction-id" in values:
        assert values["x-transaction-id"] == tx.transaction_id
    # The caller's callback goes to the client as given, and runs once when it reports.
    assert sent["on_delivery"] is kwargs["on_delivery"]
    sent["on_delivery"](None, "msg")
    assert reported == [(None, "msg")]
    assert not sampled_1pct.get_finished_spans()  # nothing recorded in a dropped trace
    assert not [k for k in hoptrace.diagnostics() if k.startswith("internal_error")]


def test_the_producer_level_callback_is_left_to_the_client(
    sampled_1pct: InMemorySpanExporter,
) -> None:
    got: list[dict[str, Any]] = []
    default = lambda err, msg: None  # noqa: E731
    tx = unsampled_transaction()
    try:
        ck._produce(lambda topic, *a, **kw: got.append(kw), default, "orders", (b"v",), {})
    finally:
        tx.__exit__(None, None, None)
    (sent,) = got
    assert "on_delivery" not in sent and "callback" not in sent  # librdkafka calls the default


def test_a_sampled_transaction_keeps_the_send_span(every_span: InMemorySpanExporter) -> None:
    reported: list[Any] = []
    with hoptrace.transaction("job"):
        assert _kafka.headers_only() is False
        sent = produced(on_delivery=lambda err, msg: reported.append(err))
    sent["on_delivery"](None, Message())
    assert reported == [None]
    (span,) = [s for s in every_span.get_finished_spans() if s.name == "send orders"]
    assert span.attributes is not None and span.attributes["messaging.kafka.offset"] == 7
    _, span_id, flags = TRACEPARENT.fullmatch(text(sent["headers"])["traceparent"]).groups()  # type: ignore[union-attr]
    assert span_id == f"{span.context.span_id:016x}" and flags == "01"


def test_a_user_sampler_gets_the_full_scope(user_sampler: InMemorySpanExporter) -> None:
    with hoptrace.transaction("job") as tx:
        assert _kafka.headers_only() is False
        DropAll.calls = 0
        sent = produced()
    assert DropAll.calls == 1  # the user's sampler decided the send span
    values = text(sent["headers"])
    assert TRACEPARENT.fullmatch(values["traceparent"]).group(3) == "00"  # type: ignore[union-attr]
    assert baggage_entry(values["baggage"], "transaction.id") == tx.transaction_id


def sent_count(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    return sum(
        int(getattr(p, "value", 0))
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics for m in s.metrics if m.name == metrics.SENT_MESSAGES
        for p in m.data.data_points
    )


def test_with_metrics_on_every_client_counts_its_sends(
    sampled_1pct: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    acks: list[Any] = []

    class Future:
        def add_callback(self, fn: Any, *args: Any) -> None:
            acks.append((fn, args))

        def add_errback(self, fn: Any, *args: Any) -> None:
            pass

        def add_done_callback(self, fn: Any) -> None:
            acks.append((fn, ()))

        def cancelled(self) -> bool:
            return False

        def exception(self) -> None:
            return None

        def result(self) -> None:
            return None

    async def aio_send(*args: Any) -> Future:
        return Future()

    tx = unsampled_transaction()
    try:
        assert _kafka.headers_only() is False  # metrics on: the sends keep their scopes
        sent = produced()
        hop_kafka_python._send(lambda *a: Future(), None, "orders", b"v", None, None, None, None)
        asyncio.run(hop_aiokafka._send(aio_send, None, "orders", b"v", None, None, None, None))
    finally:
        tx.__exit__(None, None, None)
    assert len(acks) == 2  # kafka-python and aiokafka end their sends at the ack
    sent["on_delivery"](None, Message())  # confluent-kafka's report ends its send
    for fn, args in acks:
        fn(*args, None) if args else fn(Future())
    assert sent_count(reader) == 3


def test_without_metrics_nothing_waits_for_the_ack(sampled_1pct: InMemorySpanExporter) -> None:
    class Future:
        def add_callback(self, *args: Any) -> None:
            raise AssertionError("a dropped send span with metrics off awaits no ack")

        add_errback = add_done_callback = add_callback

    async def aio_send(*args: Any) -> Future:
        got.append(args[-1])
        return Future()

    def send(*args: Any) -> Future:
        got.append(args[4])
        return Future()

    got: list[Any] = []
    tx = unsampled_transaction()
    try:
        hop_kafka_python._send(send, None, "orders", b"v", None, None, None, None)
        asyncio.run(hop_aiokafka._send(aio_send, None, "orders", b"v", None, None, None, None))
        root = trace.get_current_span().get_span_context()
    finally:
        tx.__exit__(None, None, None)
    for headers in got:
        values = text(headers)
        trace_id, _, flags = TRACEPARENT.fullmatch(values["traceparent"]).groups()  # type: ignore[union-attr]
        assert trace_id == f"{root.trace_id:032x}" and flags == "00"
        assert baggage_entry(values["baggage"], "transaction.id") == tx.transaction_id
    assert len(got) == 2
    assert hoptrace.current_transaction_id() is None
