"""bench/callgrind_peers.py counts what each case's function does: check that it does it.

Each case's built function is run a few times outside valgrind, its spans recorded in memory:
a case that made no span, one span fewer, or spans not joined as the variant joins them would
give an instruction count of some other work. The handler each case runs is watched too: the
context it sees is what the case's instrumentation gives the application.
"""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import callgrind_peers  # noqa: E402  (bench/ is not a package)

CALLS = 3
#: Clients whose consumer holds the last record's scope (and its process span) until the
#: next poll.
HOLDING = ("confluent", "kafkapython", "aiokafka")
#: The cases whose peer has no contrib release for the oldest matrix cell's SDK (noxfile's
#: DESELECT names them).
NO_OLD_CONTRIB = ("otel_confluent", "otel_aiokafka")


def _cases(kind: str) -> list[str]:
    return [c for c in callgrind_peers.CASES if c.rpartition("_")[0] == kind]


def _run(case: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str | None]]:
    """``CALLS`` calls of ``case``, in a context of their own (the scope the consumer still
    holds after the last one ends with it); what the handler saw each time: the current span
    ID and the ``transaction.id`` baggage entry."""
    seen: list[tuple[int, str | None]] = []
    handler = callgrind_peers._handler

    def watched() -> None:
        handler()
        seen.append((trace.get_current_span().get_span_context().span_id,
                     baggage.get_baggage("transaction.id")))  # type: ignore[arg-type]

    monkeypatch.setattr(callgrind_peers, "_handler", watched)
    try:
        one = callgrind_peers.build(case, trace.get_tracer_provider())

        def calls() -> None:
            for _ in range(CALLS):
                one()

        contextvars.Context().run(calls)
    finally:
        callgrind_peers.reset()
    return seen


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


def test_every_client_a_peer_instruments_has_each_kind() -> None:
    for client, stand_ins in callgrind_peers.CLIENTS.items():
        assert stand_ins.peers
        kinds = [case.rpartition("_")[0] for case in callgrind_peers.client_cases(client)]
        assert kinds[0] == "plain" and {"floor", "hop"} <= set(kinds)
    assert set(callgrind_peers.CLIENT_NAMES) == set(callgrind_peers.CLIENTS)


@pytest.mark.parametrize("case", _cases("plain"))
def test_the_plain_cases_make_no_span(spans: Any, case: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _run(case, monkeypatch)
    assert spans.all() == []
    assert seen == [(0, None)] * CALLS  # the handler ran, in no trace


@pytest.mark.parametrize("case", _cases("floor") + _cases("floor_promise"))
def test_the_floor_handles_each_message_in_a_child_of_its_send(
    spans: Any, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _run(case, monkeypatch)
    sends, consumers = _by_kind(spans)
    _check_sends(sends)
    assert [s.parent.span_id for s in consumers] == _ids(sends)  # type: ignore[union-attr]
    assert [span_id for span_id, _ in seen] == _ids(consumers)  # attached around the handler
    ids = [tx for _, tx in seen]
    assert len(set(ids)) == CALLS and all(tx and len(tx) == 32 for tx in ids)
    if case.startswith("floor_promise"):
        for send, process, tx in zip(sends, consumers, ids, strict=True):
            assert send.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]
            assert process.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]
            assert process.attributes["hoptrace.queue_wait_ms"] >= 0  # type: ignore[index,operator]


@pytest.mark.parametrize("case", _cases("hop"))
def test_hoptrace_handles_each_message_in_a_child_of_its_send(
    spans: Any, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _run(case, monkeypatch)
    sends, consumers = _by_kind(spans)
    _check_sends(sends)  # on confluent-kafka each ended by the delivery report
    # On the Kafka clients the last record's scope is still held: its span is not ended.
    handled = CALLS - 1 if case.rpartition("_")[2] in HOLDING else CALLS
    assert [s.parent.span_id for s in consumers] == _ids(sends)[:handled]  # type: ignore[union-attr]
    assert [span_id for span_id, _ in seen][:handled] == _ids(consumers)
    for send, process in zip(sends, consumers, strict=False):
        tx = send.attributes["hoptrace.transaction.id"]  # type: ignore[index]
        assert process.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]


@pytest.mark.parametrize("case", [c for c in _cases("otel") if c != "otel_confluent"])
def test_contrib_continues_each_send_s_trace(
    spans: Any, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case in NO_OLD_CONTRIB:
        pytest.importorskip("opentelemetry.instrumentation.aiokafka")  # not in every cell
    seen = _run(case, monkeypatch)
    sends, consumers = _by_kind(spans)
    _check_sends(sends)
    assert [s.parent.span_id for s in consumers] == _ids(sends)  # type: ignore[union-attr]
    if case.endswith(("_kafkapython", "_aiokafka")):
        # Contrib ends its receive span and detaches before the record is returned.
        assert seen == [(0, None)] * CALLS
    else:  # the handler runs in the consumer span, the business ID in its baggage
        assert [span_id for span_id, _ in seen] == _ids(consumers)
        assert len({tx for _, tx in seen}) == CALLS and all(tx for _, tx in seen)


def test_contrib_confluent_makes_recv_and_a_linked_process_span(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.instrumentation.confluent_kafka")  # not in every cell
    _run("otel_confluent", monkeypatch)
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


@pytest.mark.parametrize("case", ["floor_confluent", "floor_promise_confluent",
                                  "hop_confluent", "otel_confluent"])
def test_every_confluent_case_sends_the_trace_and_a_business_id(
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
    _run(case, monkeypatch)
    sends, _ = _by_kind(spans)
    assert len(sent) == CALLS
    for headers, send in zip(sent, sends, strict=True):
        _, _, span_id, _ = headers["traceparent"].decode().split("-")
        assert int(span_id, 16) == send.context.span_id
        key, _, tx = headers["baggage"].decode().partition("=")
        assert key == "transaction.id" and len(tx) == 32
    assert len({h["baggage"] for h in sent}) == CALLS  # a new ID per message


#: Runs a ddtrace case in an interpreter of its own (ddtrace patches kombu and Celery for the
#: whole process) and prints its traces: per trace, per span, name, IDs and baggage.
_DDTRACE_RUN = """
import contextvars, json, sys
sys.path.insert(0, sys.argv[1])
import callgrind_peers
callgrind_peers._dd_tracer()
from ddtrace.trace import TraceFilter, tracer
traces = []
class Keep(TraceFilter):
    def process_trace(self, trace):
        traces.append([[s.name, s.trace_id, s.span_id, s.parent_id or 0,
                        s.context.get_baggage_item("transaction.id")] for s in trace])
        return trace
tracer.configure(trace_processors=[Keep()])
one = callgrind_peers.build(sys.argv[2])
contextvars.Context().run(lambda: [one() for _ in range(int(sys.argv[3]))])
print(json.dumps(traces))
"""


@pytest.mark.parametrize("case", _cases("ddtrace"))
def test_ddtrace_handles_each_message_in_a_child_of_its_send(case: str) -> None:
    pytest.importorskip("ddtrace")
    out = subprocess.run([sys.executable, "-c", _DDTRACE_RUN, str(BENCH), case, str(CALLS)],
                         capture_output=True, text=True, check=True, timeout=120)
    traces = json.loads(out.stdout.splitlines()[-1])
    # One trace per span: each ends (and is encoded) on its own, send then receive.
    assert [len(t) for t in traces] == [1] * 2 * CALLS
    for (send,), (receive,) in zip(traces[::2], traces[1::2], strict=True):
        assert send[3] == 0 and receive[1] == send[1] and receive[3] == send[2]
        assert len(send[4]) == 32 and receive[4] == send[4]  # the business ID carried
    assert len({t[0][4] for t in traces}) == CALLS


def test_the_encoding_processor_exports_every_batch_as_otlp() -> None:
    exporter = callgrind_peers.OtlpEncoder()
    provider = TracerProvider()
    processor = callgrind_peers.ForegroundBatchProcessor(exporter, size=4)
    provider.add_span_processor(processor)
    one = callgrind_peers.build("floor_confluent", provider)
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


def test_the_ratios_are_over_each_client_s_peers() -> None:
    counts = {"plain_kombu": 10, "floor_kombu": 510, "hop_kombu": 810, "ddtrace_kombu": 1010,
              "plain_pika": 20, "hop_pika": 620, "otel_pika": 1020}
    over = callgrind_peers._overheads(counts)
    assert over == {"floor_kombu": 500, "hop_kombu": 800, "ddtrace_kombu": 1000,
                    "hop_pika": 600, "otel_pika": 1000}
    assert callgrind_peers._ratios(over) == {
        "hop_pika/otel_pika": 0.6, "hop_kombu/ddtrace_kombu": 0.8,
        "floor_kombu/ddtrace_kombu": 0.5}
