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


# ------------------------------------------------------- target 2 (b): 1% sampled ---

#: The seed and message count of the 1% tests: messages 59, 108, 168 and 186 (from 0) are
#: sampled, the last one is not (so no recorded process span is still held at the end).
SEED, MESSAGES = 2, 300
SAMPLED_CLIENTS = [c for c, stand_ins in callgrind_peers.CLIENTS.items()
                   if "otel" in stand_ins.peers]


@pytest.fixture
def sampled_spans() -> Any:
    """The 1% kinds' provider (their sampler and seeded IDs), recording into memory."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(**callgrind_peers.sampled_setup(SEED))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


def _run_sampled(case: str, monkeypatch: pytest.MonkeyPatch, provider: Any = None,
                 messages: int = MESSAGES) -> list[tuple[int, int, str | None]]:
    """``messages`` calls of ``case``; what the handler saw each time: the current trace
    and span IDs and the ``transaction.id`` baggage entry."""
    seen: list[tuple[int, int, str | None]] = []
    handler = callgrind_peers._handler

    def watched() -> None:
        handler()
        current = trace.get_current_span().get_span_context()
        seen.append((current.trace_id, current.span_id,
                     baggage.get_baggage("transaction.id")))  # type: ignore[arg-type]

    monkeypatch.setattr(callgrind_peers, "_handler", watched)
    try:
        one = callgrind_peers.build(case, provider)
        contextvars.Context().run(lambda: [one() for _ in range(messages)])
    finally:
        callgrind_peers.reset()
    return seen


def _sampled_roots() -> tuple[list[int], set[int]]:
    """Each message's root trace ID, and those the sampler keeps."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    ratio = TraceIdRatioBased(callgrind_peers.RATE)
    roots = callgrind_peers.message_roots(SEED, MESSAGES, skip=0)
    kept = {t for t in roots if t & ratio.TRACE_ID_LIMIT < ratio.bound}
    assert len(kept) == 4  # see SEED
    return roots, kept


def _check_recorded_messages(exporter: Any) -> dict[int, tuple[ReadableSpan, ReadableSpan]]:
    """The 1% recorded: one root ``job`` span per sampled message, nothing else; each root
    parents the message's send span. Returns each recorded trace's root and send."""
    _, kept = _sampled_roots()
    finished = exporter.get_finished_spans()
    jobs = [s for s in finished if s.name == "job"]
    assert all(s.parent is None for s in jobs)
    # The same messages as on the other side, decided by the seeded roots alone.
    assert sorted(s.context.trace_id for s in jobs) == sorted(kept)
    sends = {}
    for job in jobs:
        (send,) = [s for s in finished if s.kind is SpanKind.PRODUCER
                   and s.context.trace_id == job.context.trace_id]
        assert send.parent.span_id == job.context.span_id
        sends[job.context.trace_id] = (job, send)
    return sends


@pytest.mark.parametrize("client", SAMPLED_CLIENTS)
def test_hoptrace_1pct_records_the_sampled_messages_and_carries_every_one(
    sampled_spans: Any, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _run_sampled(f"s_hop_{client}@{SEED}", monkeypatch, trace.get_tracer_provider())
    roots, kept = _sampled_roots()
    sends = _check_recorded_messages(sampled_spans)
    finished = sampled_spans.get_finished_spans()
    # Every message, sampled or not, is handled in its root's trace, its transaction ID in
    # the baggage (a new one per message).
    assert [trace_id for trace_id, _, _ in seen] == roots
    assert len({tx for _, _, tx in seen}) == MESSAGES and all(
        tx and len(tx) == 32 for _, _, tx in seen)
    for trace_id, span_id, tx in seen:
        processes = [s for s in finished if s.kind is SpanKind.CONSUMER
                     and s.context.trace_id == trace_id]
        if trace_id not in kept:
            assert processes == []
            continue
        job, send = sends[trace_id]
        (process,) = processes
        assert process.parent.span_id == send.context.span_id
        assert span_id == process.context.span_id  # the handler runs in the process span
        # The transaction's root carries its ID, and so does the process span (the send
        # span in the transaction's trace need not repeat it).
        for span in (job, process):
            assert span.attributes["hoptrace.transaction.id"] == tx  # type: ignore[index]
    assert len(finished) == 3 * len(kept)


@pytest.mark.parametrize("client", SAMPLED_CLIENTS)
def test_contrib_1pct_records_the_same_messages(
    sampled_spans: Any, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if client in ("confluent", "aiokafka"):
        pytest.importorskip("opentelemetry.instrumentation."
                            + {"confluent": "confluent_kafka"}.get(client, client))
    seen = _run_sampled(f"s_otel_{client}@{SEED}", monkeypatch, trace.get_tracer_provider())
    roots, kept = _sampled_roots()
    sends = _check_recorded_messages(sampled_spans)
    finished = sampled_spans.get_finished_spans()
    consumers = [s for s in finished if s.kind is SpanKind.CONSUMER]
    if client == "confluent":
        # Contrib's recv span is a root of its own (sampled at 1% on its own: its trace IDs
        # come from the other stream), its process span a child of it, linked to the send.
        assert {s.name for s in consumers} <= {"recv", "orders process"}
        for process in (s for s in consumers if s.name == "orders process"):
            assert next(link.context.trace_id for link in process.links) in roots
        assert len(seen) == MESSAGES
        return
    # Elsewhere contrib's consumer span continues the send's trace.
    assert sorted(s.parent.span_id for s in consumers) == sorted(
        send.context.span_id for _, send in sends.values())
    if client in ("kafkapython", "aiokafka"):
        # Contrib ends its receive span and detaches before the record is returned.
        assert seen == [(0, 0, None)] * MESSAGES
        return
    # The handler runs in the message's trace, the business ID in its baggage.
    assert [trace_id for trace_id, _, _ in seen] == roots
    assert len({tx for _, _, tx in seen}) == MESSAGES and all(tx for _, _, tx in seen)
    by_trace = {s.context.trace_id: s for s in consumers}
    for trace_id, span_id, _ in seen:
        if trace_id in kept:
            assert span_id == by_trace[trace_id].context.span_id


@pytest.mark.parametrize("client", SAMPLED_CLIENTS)
def test_propagation_only_1pct_carries_a_new_transaction_per_message(
    no_sdk: None, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _run_sampled(f"s_prop_{client}", monkeypatch, messages=5)
    assert len({trace_id for trace_id, _, _ in seen}) == 5 and all(t for t, _, _ in seen)
    assert len({tx for _, _, tx in seen}) == 5 and all(
        tx and len(tx) == 32 for _, _, tx in seen)


def test_the_1pct_cases_export_every_batch_of_counted_messages(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a 1% case records in the counted loop is exported in it: a flush at the end of
    the warm-up (``callgrind_cases.repeat_calls``'s) and every BATCH messages after."""
    import callgrind_cases

    handled: list[int] = []
    flushed: list[int] = []
    exporter = callgrind_peers.OtlpEncoder()

    class Flushes(callgrind_peers.ForegroundBatchProcessor):
        def force_flush(self, timeout_millis: int = 30000) -> bool:
            flushed.append(len(handled))
            return super().force_flush(timeout_millis)

    provider = TracerProvider(**callgrind_peers.sampled_setup(1))
    processor = Flushes(exporter)
    provider.add_span_processor(processor)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setattr(callgrind_peers, "_handler", lambda: handled.append(1))
    try:
        one = callgrind_peers.build("s_hop_pika@1", provider)
        contextvars.Context().run(callgrind_cases.repeat_calls, one, callgrind_peers.BATCH)
    finally:
        callgrind_peers.reset()
    warmup, batch = callgrind_peers.WARMUP, callgrind_peers.BATCH
    assert flushed == [warmup, warmup + batch]
    assert processor._queue == []
    sampled = callgrind_peers.recorded(1, warmup + batch, skip=0)
    assert sampled > 0 and exporter.spans == 3 * sampled  # root, send, process


def test_the_seeded_roots_decide_the_recorded_share() -> None:
    counted = callgrind_peers.SAMPLED_CALLS
    assert counted % callgrind_peers.BATCH == 0
    for seed in callgrind_peers.SEEDS:
        # Enough messages that the 1% is represented: within 0.5x..2x of the rate.
        assert 0.5 * counted / 100 <= callgrind_peers.recorded(seed) <= 2 * counted / 100
    ids = callgrind_peers.SeededIds(7)
    ids.generate_trace_id(), ids.generate_span_id()  # the global random: not the roots'
    ids.message_root()
    assert ids.generate_trace_id() == callgrind_peers.message_roots(7, 1, skip=0)[0]
    # Only the roots' trace IDs are its own: every other ID is the SDK generator's inherited
    # method, whose draws hoptrace's C paths make as they make production's.
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    assert issubclass(callgrind_peers.SeededIds, RandomIdGenerator)
    assert not {"generate_span_id", "is_trace_id_random"} & set(vars(callgrind_peers.SeededIds))


def test_the_sampled_summary_is_per_client_and_seed() -> None:
    counts = {"plain_pika": 100, "s_hop_pika@1": 1100, "s_otel_pika@1": 3100,
              "s_hop_pika@2": 1300, "s_otel_pika@2": 2900, "s_prop_pika": 900}
    assert callgrind_peers.SEEDS == (1, 2)
    entry = callgrind_peers._sampled(counts)["clients"]["pika"]
    assert entry["s_hop"] == 1100 and entry["s_otel"] == 2900 and entry["s_prop"] == 800
    assert entry["ratios"] == [0.333, 0.429] and entry["ratio"] == round(2200 / 5800, 3)


def test_the_default_ids_row_is_read_at_the_seeded_rows_recorded_counts() -> None:
    # Built from a known cost: each message 1000 over plain, each recorded one 300,000 more.
    # s_hopd records counts of its own (here 5 and 3 fewer than the seeded rows).
    calls, base, each = callgrind_peers.SAMPLED_CALLS, 1000, 300_000
    seeded = {seed: callgrind_peers.recorded(seed) for seed in callgrind_peers.SEEDS}
    own = {1: seeded[1] - 5, 2: seeded[2] - 3}
    assert seeded[1] != seeded[2]  # (the slope needs two counts)
    counts = {"plain_pika": 0, "s_prop_pika": 800}
    for seed in callgrind_peers.SEEDS:
        counts[f"s_hop_pika@{seed}"] = round(base + seeded[seed] * each / calls)
        counts[f"s_otel_pika@{seed}"] = 5000
        counts[f"s_hopd_pika@{seed}"] = round(base - 100 + own[seed] * each / calls)
    entry = callgrind_peers._sampled(counts, {
        f"s_hopd_pika@{seed}": own[seed] for seed in callgrind_peers.SEEDS})["clients"]["pika"]
    assert abs(entry["recorded_cost"] - each) < 2 * calls  # (the counts were rounded)
    # At the seeded counts, s_hopd is the seeded rows' mean less the 100 it saves.
    assert abs(entry["s_hopd_at_seeded"] - (entry["s_hop"] - 100)) <= 2
    assert entry["s_hopd_at_seeded_over_s_prop"] == round(entry["s_hopd_at_seeded"] / 800, 3)
    # As counted, its own counts flatter it by the 4 fewer messages it records on average.
    assert abs(entry["s_hopd"] - (entry["s_hopd_at_seeded"] - 4 * each / calls)) <= 2
    import run  # make bench's row leads with the comparable figure

    _, met, figure = run._default_ids_row("pika", entry, calls)
    assert met is None and figure.startswith(
        f"hoptrace {entry['s_hopd_at_seeded'] / 1000:.1f}k = "
        f"{entry['s_hopd_at_seeded'] / 800:.2f}{run.TIMES} at the seeded rows' recorded counts")


def test_make_bench_reads_target_2b_per_client(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import run

    counts = {"plain_pika": 100, "s_hop_pika@1": 1100, "s_otel_pika@1": 3100,
              "s_hop_pika@2": 1300, "s_otel_pika@2": 2900, "s_prop_pika": 900,
              "plain_celery": 0, "s_hop_celery@1": 2000, "s_otel_celery@1": 3000,
              "s_hop_celery@2": 2000, "s_otel_celery@2": 3000}
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    (tmp_path / "peers_instructions.json").write_text(json.dumps({
        "over_plain": {}, "clients": callgrind_peers.CLIENT_NAMES,
        "sampled": callgrind_peers._sampled(counts)}))
    rows = {name: (met, figure) for name, met, figure in run.peer_targets()}
    met, figure = rows[f"2 pika, in instructions: 1% sampled spans ≤ 0.5{run.TIMES} "
                       "OTel contrib's"]
    seeds = callgrind_peers._sampled(counts)["recorded_messages"]
    assert met is True and "1.1k vs otel 2.9k" in figure and f"= 0.38{run.TIMES}" in figure
    assert (f"0.333{run.TIMES} ({seeds['1']} recorded), 0.429{run.TIMES} ({seeds['2']} "
            "recorded)") in figure
    met, figure = rows[f"2 pika, in instructions: 1% sampled spans ≤ 1.25{run.TIMES} its "
                       "propagation-only"]
    assert met is False and "hoptrace 1.1k vs propagation-only 0.8k" in figure
    assert f"= 1.38{run.TIMES}, the recorded 1% encoded" in figure
    assert f"2 celery, in instructions: 1% sampled spans ≤ 1.25{run.TIMES} its " \
        "propagation-only" not in rows  # (no s_prop counted for it here)
    met, figure = rows[f"2 celery, in instructions: 1% sampled spans ≤ 0.5{run.TIMES} "
                       "OTel contrib's"]
    assert met is False and f"= 0.67{run.TIMES}" in figure and "propagation-only" not in figure
