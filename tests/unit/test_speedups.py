"""The C module ``hoptrace._speedups`` gives exactly what the pure-Python code gives.

Every read and write here runs twice, once through the C fast path and once with it switched
off, and the two results must be equal: the extracted context, the rejection reasons, and the
headers written (names, order and values; the send time may differ only by the clock).

The module is optional for users, but ``make test`` builds it, so in CI its absence fails the
run rather than skipping these tests.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

import hoptrace
from hoptrace._config import get_settings
from hoptrace.core import propagation
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fuzz_extract import PROFILES, dict_carriers

try:
    from hoptrace import _speedups  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the module was not built
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("hoptrace._speedups is not built", allow_module_level=True)

TX = "0af7651916cd43dd8448eb211c80319c"
HEADERS = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "x-transaction-id": TX,
    "baggage": "transaction.id=" + TX,
    "x-hoptrace-sent-ns": "1700000000000000000",
}


@contextmanager
def accelerated(on: bool) -> Iterator[None]:
    saved = propagation._read_common, propagation._write_common, propagation._mint_common
    propagation._read_common = _speedups.read_common if on else None
    propagation._write_common = _speedups.write_common if on else None
    propagation._mint_common = _speedups.mint_common if on else None
    try:
        yield
    finally:
        propagation._read_common, propagation._write_common, propagation._mint_common = saved


def outcome(incoming: propagation.Incoming) -> tuple[Any, ...]:
    sc = incoming.span_context
    span = None if sc is None else (
        sc.trace_id, sc.span_id, sc.is_remote, int(sc.trace_flags), sc.trace_state.to_header(),
        sc.is_valid,
    )
    return span, incoming.baggage, incoming.transaction_id, incoming.sent_ns, incoming.rejected


def read_both(carrier: Any) -> tuple[Any, ...]:
    settings_now = get_settings()
    with accelerated(False):
        expected = outcome(propagation.read(carrier, settings_now))
    with accelerated(True):
        got = outcome(propagation.read(carrier, settings_now))
    assert got == expected, carrier
    return got


# --- reading -----------------------------------------------------------------------------


def test_the_common_case_is_read_in_c() -> None:
    names = propagation._names
    fast = _speedups.read_common(
        HEADERS, "traceparent", "tracestate", "baggage", names.transaction, names.sent,
        names.mirror_prefix, 8192, 128,
    )
    assert fast == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TX, True,
        1700000000000000000,
    )
    span, bag, tx, sent, rejected = read_both(HEADERS)
    assert span is not None and span[0] == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert (bag, tx, sent, rejected) == ({"transaction.id": TX}, TX, 1700000000000000000, ())


@pytest.mark.parametrize(
    "change",
    [
        {"traceparent": HEADERS["traceparent"].upper()},
        {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"},
        {"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"},
        {"traceparent": HEADERS["traceparent"].encode()},
        {"tracestate": "vendor=1"},
        {"x-transaction-id": "order-42:retry.1"},
        {"x-transaction-id": "bad\r\nid"},
        {"x-transaction-id": ""},
        {"x-transaction-id": "x" * 129},
        {"x-transaction-id": "caf\u00e9"},
        {"baggage": "tenant=a,transaction.id=" + TX},
        {"baggage": "transaction.id=other"},
        {"x-hoptrace-sent-ns": "-5"},
        {"x-hoptrace-sent-ns": "\u0661\u0662"},
        {"x-hoptrace-sent-ns": "9" * 21},
        {"x-hoptrace-sent-ns": "9" * 20},
        {"x-hoptrace-sent-ns": 17},
        {"traceparent": None},
    ],
    ids=repr,
)
def test_every_departure_from_the_common_case_reads_the_same(change: dict[str, Any]) -> None:
    read_both({**HEADERS, **change})


def test_missing_headers_read_the_same() -> None:
    for drop in HEADERS:
        read_both({k: v for k, v in HEADERS.items() if k != drop})
    assert read_both({}) == (None, None, None, None, ())


def test_other_carrier_types_are_left_to_python() -> None:
    class Headers(dict):  # type: ignore[type-arg]
        pass

    args = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
            "transaction.id=", 8192, 128)
    assert _speedups.read_common(Headers(HEADERS), *args) is None
    assert _speedups.read_common(list(HEADERS.items()), *args) is None
    read_both(Headers(HEADERS))


def test_a_key_whose_comparison_raises_is_left_to_python() -> None:
    class Hostile(str):
        def __hash__(self) -> int:
            return hash("traceparent")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

    carrier = {Hostile("traceparent"): "x", "x-transaction-id": TX}
    args = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
            "transaction.id=", 8192, 128)
    assert _speedups.read_common(carrier, *args) is None
    with accelerated(True):
        propagation.read(carrier, get_settings())  # never raises


def test_a_key_that_empties_the_dict_midway_does_not_pull_values_away() -> None:
    """A key whose __eq__ removes headers during a later lookup: values read stay alive."""
    carrier: dict[Any, Any] = {}

    class Saboteur(str):
        def __hash__(self) -> int:
            return hash("baggage")

        def __eq__(self, other: object) -> bool:
            carrier.pop("traceparent", None)
            carrier.pop("x-transaction-id", None)
            return False

    # Built at run time, so the dict holds the only reference to each value.
    carrier["traceparent"] = "".join(["00-", "4bf92f3577b34da6a3ce929d0e0e4736", "-",
                                      "00f067aa0ba902b7", "-01"])
    carrier["x-transaction-id"] = "".join(["tx", "42"])
    carrier[Saboteur("baggage-not")] = "x"
    fast = _speedups.read_common(carrier, "traceparent", "tracestate", "baggage",
                                 "x-transaction-id", "x-hoptrace-sent-ns", "transaction.id=",
                                 8192, 128)
    assert fast is not None
    # traceparent was read before the saboteur ran; the transaction ID was gone by its turn.
    assert fast[0] == 0x4BF92F3577B34DA6A3CE929D0E0E4736 and fast[3] is None
    assert "traceparent" not in carrier  # the lookup did run the saboteur


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(carrier=dict_carriers, profile=st.sampled_from(PROFILES))
def test_fuzzed_dict_carriers_read_the_same(carrier: dict[str, Any], profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile)
    read_both(carrier)


@settings(max_examples=200, deadline=None)
@given(
    trace_id=st.integers(1, 2**128 - 1),
    span_id=st.integers(1, 2**64 - 1),
    flags=st.integers(0, 255),
    tx=st.text("abcXYZ0189", min_size=1, max_size=128),
    sent=st.integers(0, 10**20 - 1),
)
def test_well_formed_headers_read_the_same(
    trace_id: int, span_id: int, flags: int, tx: str, sent: int
) -> None:
    carrier = {
        "traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}",
        "x-transaction-id": tx,
        "baggage": "transaction.id=" + tx,
        "x-hoptrace-sent-ns": str(sent),
    }
    span, _bag, got_tx, got_sent, rejected = read_both(carrier)
    assert span is not None and (span[0], span[1], span[3]) == (trace_id, span_id, flags & 1)
    assert (got_tx, got_sent, rejected) == (tx, sent, ())


# --- writing -----------------------------------------------------------------------------


def _context(span: Any, tx: str | None, entries: dict[str, str] | None) -> Context:
    values: dict[str, object] = {}
    if span is not None:
        values[SPAN_KEY] = span
    if tx is not None:
        values[TRANSACTION_KEY] = tx
    if entries is not None:
        values[BAGGAGE_KEY] = entries
    return Context(values)


def render_both(ctx: Context, start: dict[str, Any], sent_time: bool) -> list[tuple[str, Any]]:
    settings_now = get_settings()
    results = []
    for on in (False, True):
        random.seed(1234)  # a minted trace and transaction ID come out the same
        with accelerated(on):
            results.append(list(propagation.render(ctx, settings_now, dict(start), sent_time)
                                .items()))
    expected, got = results
    sent_name = settings_now.sent_time_header
    for items in (expected, got):
        for index, (key, value) in enumerate(items):
            if key == sent_name and key not in start:
                assert type(value) is str and value.isdigit()
                items[index] = (key, "<now>")
    assert got == expected
    return got


SPANS = [
    None,
    trace.INVALID_SPAN,
    NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True,
                                 TraceFlags(1))),
    NonRecordingSpan(SpanContext(1, 1, False, TraceFlags(0))),
    NonRecordingSpan(SpanContext(2**128 - 1, 2**64 - 1, False, TraceFlags(3))),
    NonRecordingSpan(SpanContext(5, 6, True, TraceFlags(1), TraceState([("v", "1")]))),
]


@pytest.mark.parametrize("span", SPANS, ids=repr)
@pytest.mark.parametrize("tx", [None, TX, "order-42:retry.1"])
@pytest.mark.parametrize("entries", [None, {}, {"tenant": "a b"}, {"transaction.id": "old"}])
@pytest.mark.parametrize("sent_time", [True, False])
def test_writing_gives_the_same_headers(
    span: Any, tx: str | None, entries: dict[str, str] | None, sent_time: bool
) -> None:
    render_both(_context(span, tx, entries), {}, sent_time)


@pytest.mark.parametrize("profile", [
    {"baggage_mirror": False},
    {"transaction_header": "X-Correlation-Id", "baggage_key": "corr"},
    {"sent_time_header": "x-sent"},
])
def test_writing_under_other_settings_gives_the_same_headers(profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile)
    for span in SPANS:
        render_both(_context(span, TX, None), {}, True)


def test_writing_into_a_dict_with_entries_keeps_their_order() -> None:
    start = {"x-transaction-id": "old", "content-type": "json", "traceparent": "old"}
    items = render_both(_context(SPANS[2], TX, None), start, True)
    assert [k for k, _ in items][:3] == ["x-transaction-id", "content-type", "traceparent"]


def test_writing_mints_a_trace_without_an_sdk_as_python_does() -> None:
    items = dict(render_both(Context(), {}, True))
    assert items["traceparent"].startswith("00-") and items["traceparent"].endswith("-00")


def test_writing_mints_with_a_custom_transaction_id_generator_as_python_does() -> None:
    hoptrace.configure(transaction_id_generator=lambda: "order-42")
    items = dict(render_both(Context(), {}, True))
    assert items["x-transaction-id"] == "order-42"


def test_minting_reads_the_random_bytes_as_python_does() -> None:
    values: dict[str, Any] = {}
    raw = bytes(range(1, 41))
    assert _speedups.mint_common(values, raw, "traceparent", "x", None, "baggage",
                                 "transaction.id=", None) is True
    assert values == {
        "traceparent": f"00-{raw[:16].hex()}-{raw[16:24].hex()}-00",
        "x": raw[24:].hex(),
        "baggage": "transaction.id=" + raw[24:].hex(),
    }


@pytest.mark.parametrize("raw", [bytes(24) + b"x" * 16, b"x" * 16 + bytes(8) + b"x" * 16,
                                 b"x" * 39, bytearray(40), "x" * 40])
def test_minting_leaves_zero_ids_and_odd_input_to_python(raw: Any) -> None:
    values: dict[str, Any] = {}
    assert _speedups.mint_common(values, raw, "traceparent", "x", None, "baggage", None,
                                 None) is False
    assert values == {}
    assert _speedups.mint_common(values, b"x" * 40, "traceparent", "x", "tx", "baggage", None,
                                 None) is False  # a given transaction ID takes 24 bytes


def test_out_of_range_ids_are_left_to_python() -> None:
    for trace_id, span_id in ((2**128, 1), (-1, 1), (1, 2**64), (1, -1), (True, 1), (1.0, 1)):
        values: dict[str, Any] = {}
        written = _speedups.write_common(values, trace_id, span_id, True, "traceparent", "x",
                                         TX, "baggage", None, None)
        assert written is False and values == {}


def test_a_non_str_transaction_id_is_left_to_python() -> None:
    values: dict[str, Any] = {}
    assert _speedups.write_common(values, None, None, False, "traceparent", "x", 5, "baggage",
                                  None, None) is False
    assert values == {}


def test_wrong_argument_counts_raise() -> None:
    with pytest.raises(TypeError):
        _speedups.read_common({})
    with pytest.raises(TypeError):
        _speedups.write_common({})
    with pytest.raises(TypeError):
        _speedups.mint_common({})


def test_pure_python_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPTRACE_PURE_PYTHON", "1")
    assert propagation._load_speedups() is None
    monkeypatch.setenv("HOPTRACE_PURE_PYTHON", "0")
    assert propagation._load_speedups() is _speedups


def test_no_references_or_memory_blocks_leak() -> None:
    import gc

    tx = TX
    raw = bytes(range(1, 41))
    big = 2**127 + 12345
    bad = {"traceparent": HEADERS["traceparent"].upper(), "x-transaction-id": tx}
    args = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
            "transaction.id=", 8192, 128)

    def rounds(count: int) -> None:
        for _ in range(count):
            _speedups.read_common(HEADERS, *args)
            _speedups.read_common(bad, *args)
            _speedups.write_common({}, big, 2**63 + 7, True, "traceparent", "x", tx, "baggage",
                                   "transaction.id=", "sent")
            _speedups.write_common({}, 2**128, 1, True, "traceparent", "x", tx, "baggage", None,
                                   None)
            _speedups.mint_common({}, raw, "traceparent", "x", None, "baggage",
                                  "transaction.id=", "sent")
            _speedups.mint_common({}, raw[:24], "traceparent", "x", tx, "baggage", None, None)

    watched = (HEADERS["traceparent"], tx, raw, big, HEADERS)
    rounds(1000)
    gc.collect()
    refs = [sys.getrefcount(x) for x in watched]
    blocks = sys.getallocatedblocks()
    rounds(20_000)
    gc.collect()
    assert [sys.getrefcount(x) for x in watched] == refs
    assert sys.getallocatedblocks() - blocks < 200  # 20,000 rounds leaking one block: 20,000
