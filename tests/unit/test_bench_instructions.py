"""``make bench``'s ``instructions`` stage: the cases it counts, and the target rows it reads.

The aiokafka and kafka-python send cases must count what the bench's variants do: the plain
client's stand-in gets the three static header pairs, the traced one the headers hoptrace
writes. The target rows must read both formats of results/instructions.json: today's, every
client, and the one before, confluent-kafka alone.
"""

from __future__ import annotations

import contextvars
import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import callgrind_cases  # noqa: E402  (bench/ is not a package)
import run  # noqa: E402

TIMES = run.TIMES

pytest.importorskip("aiokafka")
pytest.importorskip("kafka")


def _headers_sent(case: str, stand_in: str) -> list[Any]:
    """The ``headers`` each call of ``case`` handed the client's stand-in ``stand_in``."""
    seen: list[Any] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == stand_in:
            seen.append(frame.f_locals["headers"])

    def calls() -> None:
        one = callgrind_cases.build(case)
        sys.setprofile(profile)
        try:
            for _ in range(3):
                one()
        finally:
            sys.setprofile(None)

    contextvars.Context().run(calls)
    return seen


@pytest.mark.parametrize(("path", "stand_in"), [("aiosend", "aiosend"), ("kpsend", "kpsend")])
def test_send_cases_send_what_the_bench_variants_send(path: str, stand_in: str) -> None:
    plain = _headers_sent(f"plain_{path}", stand_in)
    assert len(plain) == 3
    assert all(h == [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),
                     ("x-transaction-id", b"c" * 32),
                     ("baggage", b"transaction.id=" + b"c" * 32)] for h in plain)
    assert plain[0] is not plain[1]  # a new list per send, as the static variant passes

    traced = _headers_sent(f"prop_{path}", stand_in)
    assert len(traced) == 3
    names = [[name for name, _ in headers] for headers in traced]
    assert names == [["traceparent", "baggage"]] * 3  # hoptrace's, propagation-only
    trace_ids = {dict(headers)["traceparent"].split(b"-")[1] for headers in traced}
    assert len(trace_ids) == 3  # a new trace per message: each case call is a send

    # fwd: sent from inside a consumed message's handler, so in that message's trace and
    # transaction (the trace ID and the transaction ID the case's incoming headers carry).
    forwarded = _headers_sent(f"fwd_{path}", stand_in)
    assert len(forwarded) == 3
    for headers in forwarded:
        values = dict(headers)
        # propagation-only makes no span: the incoming span context is passed on as it came
        assert values["traceparent"] == b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
        assert values["baggage"] == b"transaction.id=" + b"c" * 32


def test_every_client_counts_plain_and_prop_produce_and_consume() -> None:
    assert set(run.INSTRUCTION_CLIENTS) == set(run.CLIENTS)
    for client in run.CLIENTS:
        cases = run.instruction_cases(client)
        assert [c.split("_", 1)[0] for c in cases[:4]] == ["plain", "plain", "prop", "prop"]
        script = run.INSTRUCTION_CLIENTS[client][0]
        known = callgrind_cases.CASES if script == "callgrind_cases.py" else None
        if known is not None:
            assert set(cases) <= set(known)
    assert run.instruction_cases("confluent-kafka")[4:] == list(run.SAMPLED_CASES)


def _write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]) -> None:
    (tmp_path / "instructions.json").write_text(json.dumps(data))
    monkeypatch.setattr(run, "RESULTS", tmp_path)


CONFLUENT = {"plain_produce": 1649, "plain_consume": 1133, "prop_produce": 27992,
             "prop_consume": 62061, "sprop_produce": 52969, "sprop_consume": 62058,
             "sfast_produce": 85832, "sfast_consume": 79959}


def test_targets_from_the_format_before_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, monkeypatch, {"client": "confluent-kafka (stand-ins)",
                                   "instructions_per_message": CONFLUENT,
                                   "instructions_per_us": 7368.0})
    rows = run.instruction_targets()
    assert [r[0] for r in rows] == [
        "2 confluent-kafka, in instructions, the recorded 1% not encoded: 1% sampled spans "
        "over its propagation-only",
        "3 confluent-kafka, in instructions: propagation-only ≤ static headers + 10 µs",
    ]
    assert rows[0][1:] == (None, "163.0k vs 112.2k instructions per message over plain = "
                           f"1.45{TIMES} (callgrind: produce 85.8k + poll 80.0k against 53.0k + "
                           "62.1k)")
    assert rows[1][1] is False
    assert rows[1][2].startswith("+87.3k instructions per message, +11.8 µs at this machine's "
                                 "7.4k instructions per µs on that path (produce 28.0k, poll "
                                 "62.1k, against 1.6k and 1.1k")


def test_targets_for_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clients = {
        "confluent-kafka": {"produce": "produce", "consume": "consume",
                            "instructions_per_message": CONFLUENT,
                            "instructions_per_us": 7000.0, "rate_from": "confluent-kafka"},
        "pika": {"produce": "pika_publish", "consume": "pika_consume",
                 "instructions_per_message": {"plain_pika_publish": 1400,
                                              "plain_pika_consume": 1000,
                                              "prop_pika_publish": 30400,
                                              "prop_pika_consume": 41000},
                 "instructions_per_us": 7000.0, "rate_from": "confluent-kafka"},
        "kafka-python": {"produce": "kpsend", "consume": "next",
                         "instructions_per_message": {"plain_kpsend": 1900, "plain_next": 900,
                                                      "prop_kpsend": 60000,
                                                      "prop_next": 50000},
                         "instructions_per_us": 5000.0, "rate_from": "kafka-python"},
    }
    _write(tmp_path, monkeypatch, {"python": "3.11.7", "calls": 2000, "clients": clients})
    rows = {r[0]: r for r in run.instruction_targets()}
    assert list(rows) == [
        "2 confluent-kafka, in instructions, the recorded 1% not encoded: 1% sampled spans "
        "over its propagation-only",
        "3 confluent-kafka, in instructions: propagation-only ≤ static headers + 10 µs",
        "3 kafka-python, in instructions: propagation-only ≤ static headers + 10 µs",
        "3 pika, in instructions: propagation-only ≤ static headers + 10 µs",
    ]
    pika = rows["3 pika, in instructions: propagation-only ≤ static headers + 10 µs"]
    assert pika[1] is True  # 69.0k over plain at 7.0k per µs: 9.9 µs
    assert pika[2] == (
        "+69.0k instructions per message, +9.9 µs at this machine's 7.0k instructions per µs "
        "on confluent-kafka's path (pika's could not be timed) (produce 30.4k, consume 41.0k, "
        "against 1.4k and 1.0k for the plain client sending static headers)")
    kp = rows["3 kafka-python, in instructions: propagation-only ≤ static headers + 10 µs"]
    assert kp[1] is False  # 107.2k at 5.0k per µs: 21.4 µs
    assert "+107.2k instructions per message, +21.4 µs" in kp[2]
    assert "on that path (produce 60.0k, consume 50.0k" in kp[2]


@pytest.mark.parametrize(("floor", "out_of_reach"), [(560, True), (450, False)])
def test_target_1_in_instructions_reads_the_peers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, floor: int, out_of_reach: bool
) -> None:
    """The ratios are computed from the counts; "out of reach" only when the floor is."""
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    over = {"hop_confluent": 700, "otel_confluent": 1000, "floor_confluent": floor,
            "floor_promise_confluent": 600, "hop_pika": 520, "otel_pika": 1040,
            "hop_celery": 800, "otel_celery": 1200, "ddtrace_celery": 1000,
            "floor_celery": floor}
    clients = {"confluent": "confluent-kafka", "pika": "pika", "celery": "celery"}
    (tmp_path / "peers_instructions.json").write_text(
        json.dumps({"over_plain": over, "clients": clients}))
    rows = {name.split(",")[0]: (met, figure) for name, met, figure in run.peer_targets()}
    met, figure = rows["1 confluent-kafka"]
    assert met is False and "= 0.70" in figure and f"= {floor / 1000:.2f}" in figure
    assert f"(0.60{run.TIMES} with the transaction ID" in figure
    assert ("OUT OF REACH" in figure) is out_of_reach
    assert rows["1 pika"] == (True, rows["1 pika"][1]) and "= 0.50" in rows["1 pika"][1]
    assert "floor" not in rows["1 pika"][1]  # none counted there
    met, figure = rows["1 celery"]  # against the cheaper of its two peers, ddtrace
    assert met is False and "vs ddtrace 1k" in figure and "= 0.80" in figure
    assert f"= {floor / 1000:.2f}" in figure and ("OUT OF REACH" in figure) is out_of_reach


def test_target_1_in_instructions_is_absent_without_the_peers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert run.peer_targets() == []


def test_inline_mint_piece_builds_the_span_a_propagation_only_transaction_gets() -> None:
    """The 2 (a) floor subtracts ``piece_mint_inline`` as what propagation-only pays for its
    transaction's span: it must build that span, as ``transaction.open`` does, not another."""
    import callgrind_spans
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    import hoptrace

    def spans() -> tuple[Any, Any]:
        minted = callgrind_spans.build("piece_mint_inline")()
        hoptrace.configure(propagation_only=True)
        with hoptrace.transaction("job") as tx:
            opened = tx.span
        return minted, opened

    minted, opened = contextvars.Context().run(spans)
    for span in (minted, opened):
        assert type(span) is NonRecordingSpan
        assert type(span.get_span_context()) is SpanContext
    got, want = minted.get_span_context(), opened.get_span_context()
    assert got.is_valid and want.is_valid
    assert (got.is_remote, got.trace_flags, got.trace_state) == (
        want.is_remote, want.trace_flags, want.trace_state)
    assert got.trace_id != want.trace_id and got.span_id != want.span_id  # drawn, not fixed


def test_c_floor_pieces_build_what_a_dropped_span_is_from_the_sdks_draws() -> None:
    """The 2 (a) floor in C (``cfloor_child``, ``cfloor_root``, ``bench/cfloor.c``) must do
    the steps it claims no implementation can leave out: the SDK's RandomIdGenerator's draws
    from ``random`` in its order, the ratio's decision on the trace ID, and the same
    ``NonRecordingSpan`` a dropped span is, else the floor would be too low. (Building the
    pieces installs no provider, and the global ``random`` is given back as it was.)"""
    import random

    import callgrind_spans
    from opentelemetry import trace
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
    from opentelemetry.trace import DEFAULT_TRACE_STATE, NonRecordingSpan, SpanContext

    provider = trace._TRACER_PROVIDER
    child, root = callgrind_spans.build("cfloor_child"), callgrind_spans.build("cfloor_root")
    assert trace._TRACER_PROVIDER is provider  # (a provider left behind breaks later tests)
    ids, ratio = RandomIdGenerator(), TraceIdRatioBased(0.01)

    def same_span(span: Any, trace_id: int, span_id: int) -> None:
        assert type(span) is NonRecordingSpan and type(span.get_span_context()) is SpanContext
        got = span.get_span_context()
        assert (got.trace_id, got.span_id) == (trace_id, span_id)
        assert got.is_valid and not got.is_remote and not got.trace_flags.sampled
        assert got.trace_state is DEFAULT_TRACE_STATE and not span.is_recording()

    kept = dropped = 0
    state = random.getstate()
    try:
        for seed in range(400):
            random.seed(seed)
            span = child()
            random.seed(seed)
            same_span(span, 0xABC, ids.generate_span_id())
            random.seed(seed)
            span = root()
            random.seed(seed)
            trace_id = ids.generate_trace_id()
            if ratio.should_sample(None, trace_id, "job").decision is Decision.RECORD_AND_SAMPLE:
                assert span is None
                kept += 1
            else:
                same_span(span, trace_id, ids.generate_span_id())
                dropped += 1
    finally:
        random.setstate(state)
    assert kept and dropped  # (both of the ratio's answers met)
