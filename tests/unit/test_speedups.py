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
from hoptrace.core.metrics import ORIGIN_BAGGAGE_KEY

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
    saved_pairs, saved_incoming = propagation._read_pairs, propagation._read_incoming
    propagation._read_common = _speedups.read_common if on else None
    propagation._read_pairs = _speedups.read_pairs if on else None
    # (what read() calls for both; set here too for a HOPTRACE_PURE_PYTHON=1 run)
    propagation._read_incoming = (
        _speedups.read_incoming if on and propagation._TUPLE_LAYOUT else None)
    propagation._write_common = _speedups.write_common if on else None
    propagation._mint_common = _speedups.mint_common if on else None
    try:
        yield
    finally:
        propagation._read_common, propagation._write_common, propagation._mint_common = saved
        propagation._read_pairs, propagation._read_incoming = saved_pairs, saved_incoming


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
        1700000000000000000, None,
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


# --- the pathway's origin entry ------------------------------------------------------------

ORIGIN = "1700000000123"
WITH_ORIGIN = {**HEADERS, "baggage": f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},transaction.id={TX}"}
READ_ARGS = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
             "transaction.id=", 8192, 128)


def test_the_origin_entry_before_the_mirror_is_read_in_c() -> None:
    fast = _speedups.read_common(WITH_ORIGIN, *READ_ARGS, True)
    assert fast is not None and fast[3] == TX and fast[4] is True and fast[6] == ORIGIN
    assert _speedups.read_common(WITH_ORIGIN, *READ_ARGS, False) is None
    assert _speedups.read_common(WITH_ORIGIN, *READ_ARGS) is None  # the 9-argument form
    _span, bag, tx, sent, rejected = read_both(WITH_ORIGIN)
    assert bag == {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX}
    assert list(bag) == [ORIGIN_BAGGAGE_KEY, "transaction.id"]  # _parse_baggage's order
    assert (tx, sent, rejected) == (TX, 1700000000000000000, ())


def test_the_origin_read_in_c_shares_the_transaction_id_object() -> None:
    """hop.py binds the baggage as is when its mirror entry *is* the transaction ID."""
    with accelerated(True):
        incoming = propagation.read(WITH_ORIGIN, get_settings())
    assert incoming.baggage is not None
    assert incoming.baggage["transaction.id"] is incoming.transaction_id
    ctx = propagation.extract(WITH_ORIGIN)
    assert ctx[BAGGAGE_KEY] == {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX}
    assert ctx[TRANSACTION_KEY] == TX


@pytest.mark.parametrize(
    "bag",
    [
        f"{ORIGIN_BAGGAGE_KEY}=,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}={'1' * 16},transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}={'1' * 17},transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=12a4,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=-1234,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=\u0661\u0662,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=12%33,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123;p=1,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123, transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123,,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123;transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123,transaction.id={TX}x",
        f"{ORIGIN_BAGGAGE_KEY}=123,transaction.id=other",
        f"{ORIGIN_BAGGAGE_KEY}=123,transaction.id={TX},tenant=a",
        f"tenant=a,{ORIGIN_BAGGAGE_KEY}=123,transaction.id={TX}",
        f"transaction.id={TX},{ORIGIN_BAGGAGE_KEY}=123",
        f"{ORIGIN_BAGGAGE_KEY.upper()}=123,transaction.id={TX}",
        f"hoptrace.origin_mx=123,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123,{ORIGIN_BAGGAGE_KEY}=456,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=123,transaction.id={TX}\u00e9",
        f"{ORIGIN_BAGGAGE_KEY}=123",
    ],
    ids=repr,
)
def test_every_departure_from_the_origin_shape_reads_the_same(bag: str) -> None:
    read_both({**HEADERS, "baggage": bag})


@pytest.mark.parametrize("profile", [
    {"baggage_allowlist": frozenset({"tenant"})},
    {"baggage_allowlist": frozenset({"tenant", ORIGIN_BAGGAGE_KEY})},
    {"baggage_allowlist": frozenset()},
    {"max_baggage_members": 1},
    {"max_baggage_members": 2},
    {"max_baggage_bytes": len(WITH_ORIGIN["baggage"])},
    {"max_baggage_bytes": len(WITH_ORIGIN["baggage"]) - 1},
    {"baggage_key": ORIGIN_BAGGAGE_KEY},
    {"baggage_key": "corr"},
    {"transaction_header": "X-Correlation-Id", "baggage_key": "corr"},
])
def test_the_origin_shape_reads_the_same_under_other_settings(profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile)
    read_both(WITH_ORIGIN)
    key = get_settings().baggage_key
    read_both({**HEADERS, "baggage": f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},{key}={TX}"})
    read_both({**HEADERS, "baggage": f"{key}={ORIGIN},{key}={TX}"})


def test_an_allowlist_without_the_origin_keeps_the_python_reader() -> None:
    hoptrace.configure(baggage_allowlist=frozenset({"tenant"}))
    _, bag, tx, _, rejected = read_both(WITH_ORIGIN)
    assert (bag, tx, rejected) == ({"transaction.id": TX}, TX, ())


origin_digits = st.text("0123456789", min_size=1, max_size=16)
origin_values = st.one_of(
    origin_digits,
    st.text("0123456789", min_size=17, max_size=20),
    st.text("0123456789a-%;=, \u0661", min_size=0, max_size=18),
)
baggage_keys = st.sampled_from([ORIGIN_BAGGAGE_KEY, "transaction.id", "tenant", "corr"])
origin_profiles = st.sampled_from([
    {},
    {"baggage_allowlist": frozenset({"tenant"})},
    {"baggage_allowlist": frozenset({ORIGIN_BAGGAGE_KEY})},
    {"max_baggage_members": 1},
    {"max_baggage_bytes": 60},
    {"baggage_key": "corr"},
    {"baggage_mirror": False},
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    origin=origin_values,
    tx=st.text("abcXYZ0189", min_size=1, max_size=40),
    extra=st.lists(st.tuples(baggage_keys, origin_values), max_size=2),
    order=st.permutations([0, 1, 2]),
    profile=origin_profiles,
)
def test_fuzzed_origin_baggage_reads_the_same(
    origin: str, tx: str, extra: list[tuple[str, str]], order: list[int],
    profile: dict[str, Any],
) -> None:
    hoptrace.configure(**profile)
    members = [f"{ORIGIN_BAGGAGE_KEY}={origin}", f"transaction.id={tx}",
               ",".join(f"{k}={v}" for k, v in extra)]
    bag = ",".join(m for m in (members[i] for i in order) if m)
    carrier = {**HEADERS, "x-transaction-id": tx, "baggage": bag}
    read_both(carrier)
    read_both({**carrier, "baggage": f"{ORIGIN_BAGGAGE_KEY}={origin},transaction.id={tx}"})


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


def render_both(
    ctx: Context, start: dict[str, Any], sent_time: bool, replace_header: bool = False
) -> list[tuple[str, Any]]:
    settings_now = get_settings()
    results = []
    for on in (False, True):
        random.seed(1234)  # a minted trace and transaction ID come out the same
        with accelerated(on):
            results.append(list(propagation.render(ctx, settings_now, dict(start), sent_time,
                                                   replace_header).items()))
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
    {"transaction_header": "x-transaction-id"},
    {"baggage_mirror": False, "transaction_header": "x-tx"},
    {"sent_time_header": "x-sent"},
    {"max_baggage_bytes": 40},  # the mirror of a 32-character ID no longer fits: the header
    {"max_baggage_bytes": 47},  # it just fits
    {"max_baggage_bytes": 46},
])
def test_writing_under_other_settings_gives_the_same_headers(profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile, warning_interval=0)
    for span in SPANS:
        for tx in (None, TX, "order-42:retry.1"):
            for entries in (None, {"tenant": "a"}):
                for replace_header in (False, True):
                    render_both(_context(span, tx, entries), {}, True, replace_header)


ORIGIN_ENTRIES = [
    {ORIGIN_BAGGAGE_KEY: ORIGIN},
    {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX},
    {"transaction.id": TX, ORIGIN_BAGGAGE_KEY: ORIGIN},
    {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": "old"},
    {ORIGIN_BAGGAGE_KEY: "1" * 16, "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: "1" * 17, "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: "", "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: "12a", "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: "1 2", "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: "\u0661\u0662", "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: 1700000000123, "transaction.id": TX},
    {ORIGIN_BAGGAGE_KEY: ORIGIN, "tenant": "a"},
    {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX, "tenant": "a"},
    {"tenant": "a", ORIGIN_BAGGAGE_KEY: ORIGIN},
]


@pytest.mark.parametrize("span", SPANS, ids=repr)
@pytest.mark.parametrize("tx", [None, TX, "order-42:retry.1", "caf\u00e9", 42])
@pytest.mark.parametrize("entries", ORIGIN_ENTRIES, ids=repr)
def test_writing_the_origin_entry_gives_the_same_headers(
    span: Any, tx: str | None, entries: dict[str, Any]
) -> None:
    render_both(_context(span, tx, entries), {}, True)


@pytest.mark.parametrize("profile", [
    {"baggage_mirror": False},
    {"transaction_header": "X-Correlation-Id", "baggage_key": "corr"},
    {"baggage_key": ORIGIN_BAGGAGE_KEY},
    {"max_baggage_members": 1},
    {"max_baggage_members": 2},
    {"max_baggage_bytes": len(WITH_ORIGIN["baggage"])},
    {"max_baggage_bytes": len(WITH_ORIGIN["baggage"]) - 1},
    {"baggage_allowlist": frozenset({"tenant"})},
    {"transaction_id_generator": lambda: "order-42"},
])
def test_writing_the_origin_entry_under_other_settings_gives_the_same_headers(
    profile: dict[str, Any]
) -> None:
    hoptrace.configure(**profile)
    key = get_settings().baggage_key
    for span in SPANS:
        for tx in (None, TX):
            for entries in ({ORIGIN_BAGGAGE_KEY: ORIGIN, key: TX}, {ORIGIN_BAGGAGE_KEY: ORIGIN}):
                render_both(_context(span, tx, entries), {}, True)


def test_the_origin_entry_is_written_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both writers (a span's IDs, minted IDs) take the origin shape without _write_text."""
    def no_python(*args: Any) -> Any:
        raise AssertionError("the Python writer ran")

    with accelerated(True):
        monkeypatch.setattr(propagation, "_write_text", no_python)
        for span in (SPANS[2], None):  # None: minted (no SDK in this process's tracing)
            values = propagation.render(
                _context(span, TX, {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX}),
                get_settings(),
            )
            assert values["baggage"] == f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},transaction.id={TX}"
        values = propagation.render(_context(None, None, {ORIGIN_BAGGAGE_KEY: ORIGIN}),
                                    get_settings())
        assert "x-transaction-id" not in values
        tx = values["baggage"].rpartition("=")[2]
        assert len(tx) == 32
        assert values["baggage"] == f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},transaction.id={tx}"


def test_a_round_trip_with_the_origin_stays_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_python(*args: Any) -> Any:
        raise AssertionError("the Python reader ran")

    with accelerated(True):
        values = propagation.render(
            _context(SPANS[2], TX, {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX}),
            get_settings(),
        )
        monkeypatch.setattr(propagation, "_take_all", no_python)
        incoming = propagation.read(values, get_settings())
    assert incoming.baggage == {ORIGIN_BAGGAGE_KEY: ORIGIN, "transaction.id": TX}
    assert incoming.transaction_id == TX and incoming.span_context is not None


def test_the_origin_argument_is_checked_in_c() -> None:
    for origin in ("", "1" * 17, "12a", "\u0661", 12, b"12", "12\u00e9"):
        values: dict[str, Any] = {}
        assert _speedups.write_common(values, 5, 6, True, "traceparent", "x", TX, "baggage",
                                      "transaction.id=", None, origin) is False
        assert _speedups.mint_common(values, bytes(range(1, 41)), "traceparent", "x", None,
                                     "baggage", "transaction.id=", None, origin) is False
        assert values == {}
    for args in (("transaction.id=", "caf\u00e9"), (None, TX), ("k\u00e9y=", TX)):
        values = {}
        assert _speedups.write_common(values, 5, 6, True, "traceparent", "x", args[1],
                                      "baggage", args[0], None, ORIGIN) is False
        assert values == {}
    values = {}
    assert _speedups.write_common(values, None, None, True, "traceparent", "x", TX, "baggage",
                                  "transaction.id=", None, None) is True
    assert values == {"x": TX, "baggage": "transaction.id=" + TX}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    origin=st.one_of(origin_values, st.integers(0, 10**17)),
    tx=st.one_of(st.none(), st.text("abcXYZ0189-:\u00e9", min_size=1, max_size=40)),
    extra=st.dictionaries(baggage_keys, origin_values, max_size=2),
    origin_first=st.booleans(),
    span=st.sampled_from(SPANS),
    profile=origin_profiles,
)
def test_fuzzed_origin_entries_write_the_same(
    origin: Any, tx: str | None, extra: dict[str, str], origin_first: bool, span: Any,
    profile: dict[str, Any],
) -> None:
    hoptrace.configure(**profile)
    entries = {ORIGIN_BAGGAGE_KEY: origin, **extra} if origin_first \
        else {**extra, ORIGIN_BAGGAGE_KEY: origin}
    render_both(_context(span, tx, entries), {}, True)


def test_writing_into_a_dict_with_entries_keeps_their_order() -> None:
    start = {"x-transaction-id": "old", "content-type": "json", "traceparent": "old"}
    items = render_both(_context(SPANS[2], TX, None), start, True)
    assert [k for k, _ in items][:3] == ["x-transaction-id", "content-type", "traceparent"]


# --- the header economy: the ID travels as the baggage entry, no header by default ---------

NO_HEADER = {k: v for k, v in HEADERS.items() if k != "x-transaction-id"}
NO_HEADER_ORIGIN = {k: v for k, v in WITH_ORIGIN.items() if k != "x-transaction-id"}


def test_the_common_case_is_written_in_c_without_a_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_python(*args: Any) -> Any:
        raise AssertionError("the Python writer ran")

    with accelerated(True):
        monkeypatch.setattr(propagation, "_write_text", no_python)
        for span, tx in ((SPANS[2], TX), (None, TX), (None, None)):  # None: minted IDs
            values = propagation.render(_context(span, tx, None), get_settings())
            assert list(values) == ["traceparent", "baggage", "x-hoptrace-sent-ns"]
            assert values["baggage"] == "transaction.id=" + (tx or values["baggage"][15:])


def test_the_c_writers_write_no_header_without_a_transaction_key() -> None:
    values: dict[str, Any] = {}
    assert _speedups.write_common(values, 5, 6, True, "traceparent", None, TX, "baggage",
                                  "transaction.id=", None) is True
    assert values == {"traceparent": f"00-{5:032x}-{6:016x}-01",
                      "baggage": "transaction.id=" + TX}
    values = {}
    raw = bytes(range(1, 41))
    assert _speedups.mint_common(values, raw, "traceparent", None, None, "baggage",
                                 "transaction.id=", None, ORIGIN) is True
    assert values == {
        "traceparent": f"00-{raw[:16].hex()}-{raw[16:24].hex()}-00",
        "baggage": f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},transaction.id={raw[24:].hex()}",
    }


def test_the_mirror_alone_is_read_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    for carrier, origin in ((NO_HEADER, None), (NO_HEADER_ORIGIN, ORIGIN)):
        assert _speedups.read_common(carrier, *READ_ARGS, True) == (
            0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TX, True,
            1700000000000000000, origin,
        )

    def no_python(*args: Any) -> Any:
        raise AssertionError("the Python reader ran")

    with accelerated(True):
        monkeypatch.setattr(propagation, "_take_all", no_python)
        incoming = propagation.read(NO_HEADER, get_settings())
    assert incoming.transaction_id == TX and incoming.baggage == {"transaction.id": TX}
    assert incoming.baggage["transaction.id"] is incoming.transaction_id


@pytest.mark.parametrize(
    "bag",
    [
        "transaction.id=",
        "transaction.id=order-42:retry.1",
        "transaction.id=bad id",
        "transaction.id=caf\u00e9",
        "transaction.id=" + "x" * 128,
        "transaction.id=" + "x" * 129,
        "transaction.id=" + TX + " ",
        " transaction.id=" + TX,
        "transaction.id=" + TX + ";p=1",
        "transaction.id=%41" + TX,
        "transactionXid=" + TX,
        "transaction.id=a,transaction.id=b",
        "tenant=a,transaction.id=" + TX,
        "transaction.id=" + TX + ",tenant=a",
        f"{ORIGIN_BAGGAGE_KEY}={ORIGIN}",
        f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},",
        f"{ORIGIN_BAGGAGE_KEY}=,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}={'1' * 17},transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}=12a,transaction.id={TX}",
        f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},transaction.id=",
        f"{ORIGIN_BAGGAGE_KEY}={ORIGIN},tenant=a",
        f"{ORIGIN_BAGGAGE_KEY}{ORIGIN},transaction.id={TX}",
        ("transaction.id=" + TX).encode(),
        "x" * 9000,
    ],
    ids=repr,
)
def test_every_departure_from_the_header_less_shape_reads_the_same(bag: Any) -> None:
    read_both({**NO_HEADER, "baggage": bag})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tx=st.text("abcXYZ0189-:.,;= \u00e9%", min_size=0, max_size=140),
    origin=st.one_of(st.none(), origin_values),
    profile=origin_profiles,
    header=st.sampled_from([None, TX, "order-42"]),
)
def test_fuzzed_header_less_baggage_reads_the_same(
    tx: str, origin: str | None, profile: dict[str, Any], header: str | None
) -> None:
    hoptrace.configure(**profile)
    prefix = propagation._names.mirror_prefix
    bag = (f"{ORIGIN_BAGGAGE_KEY}={origin}," if origin is not None else "") + prefix + tx
    carrier = {**NO_HEADER, "baggage": bag}
    if header is not None:  # an older sender's header beside it: the header wins
        carrier["x-transaction-id"] = header
    _span, _bag, got, _sent, _rejected = read_both(carrier)
    if header is not None:
        assert got == header


def test_writing_mints_a_trace_without_an_sdk_as_python_does() -> None:
    items = dict(render_both(Context(), {}, True))
    assert items["traceparent"].startswith("00-") and items["traceparent"].endswith("-00")


def test_writing_mints_with_a_custom_transaction_id_generator_as_python_does() -> None:
    hoptrace.configure(transaction_id_generator=lambda: "order-42")
    items = dict(render_both(Context(), {}, True))
    assert items["baggage"] == "transaction.id=order-42" and "x-transaction-id" not in items


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
    origin = "".join(["1700", "000000123"])
    bad_origin = {**WITH_ORIGIN, "baggage": f"{ORIGIN_BAGGAGE_KEY}=12a,transaction.id={tx}"}
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
            _speedups.read_common(WITH_ORIGIN, *args, True)
            _speedups.read_common(bad_origin, *args, True)
            _speedups.write_common({}, big, 2**63 + 7, True, "traceparent", "x", tx, "baggage",
                                   "transaction.id=", "sent", origin)
            _speedups.write_common({}, 1, 1, True, "traceparent", "x", tx, "baggage",
                                   "transaction.id=", "sent", "12a")
            _speedups.mint_common({}, raw, "traceparent", "x", None, "baggage",
                                  "transaction.id=", "sent", origin)
            _speedups.mint_common({}, raw[:24], "traceparent", "x", tx, "baggage",
                                  "transaction.id=", None, origin)

    watched = (HEADERS["traceparent"], tx, raw, big, HEADERS, origin, WITH_ORIGIN["baggage"])
    rounds(1000)
    gc.collect()
    refs = [sys.getrefcount(x) for x in watched]
    blocks = sys.getallocatedblocks()
    rounds(20_000)
    gc.collect()
    assert [sys.getrefcount(x) for x in watched] == refs
    assert sys.getallocatedblocks() - blocks < 200  # 20,000 rounds leaking one block: 20,000
