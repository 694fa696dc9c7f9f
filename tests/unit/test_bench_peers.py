"""bench/callgrind_peers.py counts what each case's function does: check that it does it.

Each case's built function is run a few times outside valgrind, its spans recorded in memory:
a case that made no span, one span fewer, or spans not joined as the variant joins them would
give an instruction count of some other work.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import callgrind_peers  # noqa: E402  (bench/ is not a package)

CALLS = 3


def _run(case: str) -> None:
    """``CALLS`` calls of ``case``, in a context of their own: the scope the consumer still
    holds after the last one (hoptrace's and contrib's alike) ends with it."""
    one = callgrind_peers.build(case, trace.get_tracer_provider())

    def calls() -> None:
        for _ in range(CALLS):
            one()

    contextvars.Context().run(calls)


def _by_kind(spans: Any) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    finished = spans.all()
    sends = [s for s in finished if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert len(sends) + len(consumers) == len(finished), [s.name for s in finished]
    return sends, consumers


def _ids(spans: list[ReadableSpan]) -> list[int]:
    return [s.context.span_id for s in spans]


def _check_sends(sends: list[ReadableSpan]) -> None:
    """One root send span per message, each in its own trace (produced elsewhere)."""
    assert len(sends) == CALLS
    assert all(s.parent is None for s in sends)
    assert len({s.context.trace_id for s in sends}) == CALLS


@pytest.mark.parametrize("case", ["floor", "floor_promise", "hop_pika", "otel_pika"])
def test_a_child_of_each_send_handles_it(spans: Any, case: str) -> None:
    _run(case)
    sends, consumers = _by_kind(spans)
    _check_sends(sends)
    assert len(consumers) == CALLS
    assert [s.parent.span_id for s in consumers] == _ids(sends)  # type: ignore[union-attr]
    if case in ("floor_promise", "hop_pika"):
        for send, process in zip(sends, consumers, strict=True):
            tx = send.attributes["hoptrace.transaction.id"]  # type: ignore[index]
            assert process.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]
            assert process.attributes["hoptrace.queue_wait_ms"] >= 0  # type: ignore[index,operator]


@pytest.mark.parametrize("case", ["plain_confluent", "plain_pika"])
def test_the_plain_cases_make_no_span(spans: Any, case: str) -> None:
    _run(case)
    assert spans.all() == []


def test_hoptrace_confluent_holds_each_process_span_until_the_next_poll(spans: Any) -> None:
    _run("hop_fast")
    sends, consumers = _by_kind(spans)
    _check_sends(sends)  # each ended by the delivery report the stand-in calls back
    assert len(consumers) == CALLS - 1  # the last record's scope is still held
    assert [s.parent.span_id for s in consumers] == _ids(sends)[:-1]  # type: ignore[union-attr]
    for send, process in zip(sends, consumers, strict=False):
        tx = send.attributes["hoptrace.transaction.id"]  # type: ignore[index]
        assert process.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]


def test_contrib_confluent_makes_recv_and_a_linked_process_span(spans: Any) -> None:
    pytest.importorskip("opentelemetry.instrumentation.confluent_kafka")  # not in every cell
    _run("otel_confluent")
    sends, consumers = _by_kind(spans)
    _check_sends(sends)
    recvs = [s for s in consumers if s.name == "recv"]
    processes = [s for s in consumers if s.name == "orders process"]
    assert len(recvs) == CALLS and len(processes) == CALLS - 1  # the last one still open
    assert all(s.parent is None for s in recvs)
    assert [s.parent.span_id for s in processes] == _ids(recvs)[:-1]  # type: ignore[union-attr]
    assert [[link.context.span_id for link in s.links] for s in processes] == [
        [i] for i in _ids(sends)[:-1]
    ]


@pytest.mark.parametrize("case", ["floor", "floor_promise", "hop_fast", "otel_confluent"])
def test_every_kafka_case_sends_the_trace_and_a_business_id(
    spans: Any, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case == "otel_confluent":
        pytest.importorskip("opentelemetry.instrumentation.confluent_kafka")
    sent: list[dict[str, bytes]] = []
    produce: Callable[..., Any] = callgrind_peers._Kafka.produce

    def spy(self: Any, topic: str, value: Any = None, *args: Any, **kwargs: Any) -> None:
        sent.append(dict(kwargs["headers"]))
        produce(self, topic, value, *args, **kwargs)

    monkeypatch.setattr(callgrind_peers._Kafka, "produce", spy)
    _run(case)
    sends, _ = _by_kind(spans)
    assert len(sent) == CALLS
    for headers, send in zip(sent, sends, strict=True):
        _, _, span_id, _ = headers["traceparent"].decode().split("-")
        assert int(span_id, 16) == send.context.span_id
        key, _, tx = headers["baggage"].decode().partition("=")
        assert key == "transaction.id" and len(tx) == 32
    assert len({h["baggage"] for h in sent}) == CALLS  # a new ID per message


def test_the_encoding_processor_exports_every_batch_as_otlp() -> None:
    exporter = callgrind_peers.OtlpEncoder()
    provider = TracerProvider()
    processor = callgrind_peers.ForegroundBatchProcessor(exporter, size=4)
    provider.add_span_processor(processor)
    one = callgrind_peers.build("floor", provider)
    for _ in range(CALLS):
        one()
    assert exporter.spans == 4  # one batch exported, two spans queued
    assert exporter.bytes > 4 * 100
    processor.force_flush()
    assert exporter.spans == 2 * CALLS


@pytest.mark.parametrize("case", callgrind_peers.PROC_CASES)
def test_the_processor_cases_end_a_span(case: str) -> None:
    callgrind_peers.build(case)()


def test_calls_are_whole_batches() -> None:
    assert callgrind_peers.CALLS % callgrind_peers.BATCH == 0
