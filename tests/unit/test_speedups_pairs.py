"""``_speedups.read_pairs``: Kafka's header lists read in C give exactly what Python gives.

The Kafka clients hand headers over as ``(str, bytes)`` pairs: confluent-kafka a list of tuples
(values may be None) or None, kafka-python a list of tuples, aiokafka a tuple of tuples. Each
read here runs twice, through the C fast path and with it switched off, and the extracted
context and rejection reasons must be equal. Anything unusual (a header seen twice, a value
that is not ASCII bytes or str, an odd item, a long value) must be left to the Python reader.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hoptrace
from hoptrace._config import get_settings
from hoptrace.core import propagation
from hoptrace.core.metrics import ORIGIN_BAGGAGE_KEY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fuzz_extract import PROFILES, confluent_lists, entries, list_carriers
from test_speedups import read_both

try:
    from hoptrace import _speedups  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the module was not built
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("hoptrace._speedups is not built", allow_module_level=True)

TX = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PAIRS = [
    ("traceparent", TRACEPARENT.encode()),
    ("x-transaction-id", TX.encode()),
    ("baggage", ("transaction.id=" + TX).encode()),
    ("x-hoptrace-sent-ns", b"1700000000000000000"),
]
ARGS = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
        "transaction.id=", 8192, 128)
EXPECTED = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TX, True,
            1700000000000000000, None)


def fast(carrier: Any, *extra: Any) -> Any:
    names = propagation._names
    return _speedups.read_pairs(
        carrier, "traceparent", "tracestate", "baggage", names.transaction, names.sent,
        names.mirror_prefix, 8192, 128, *extra,
    )


# --- the clients' shapes -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [
    PAIRS,  # confluent-kafka, kafka-python: a list of tuples
    tuple(PAIRS),  # aiokafka: a tuple of tuples
    [(k, v.decode()) for k, v in PAIRS],  # text values
    [("other", None), *PAIRS, ("x-other", b"\xff\xfe"), ("", b"")],  # unrelated headers
], ids=["list", "tuple", "str-values", "with-others"])
def test_the_clients_header_lists_are_read_in_c(shape: Any) -> None:
    assert fast(shape) == EXPECTED
    assert fast(shape) == _speedups.read_common({k: v.decode() for k, v in PAIRS}, *ARGS)
    span, bag, tx, sent, rejected = read_both(shape)
    assert span is not None and span[0] == EXPECTED[0] and span[3] == 1
    assert (bag, tx, sent, rejected) == ({"transaction.id": TX}, TX, EXPECTED[5], ())


def test_the_list_read_goes_through_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """read() takes read_pairs' result for a list: Python's scan never runs."""
    def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Python reader ran")

    monkeypatch.setattr(propagation, "read_headers", no_scan)
    monkeypatch.setattr(propagation, "_read_pairs", _speedups.read_pairs)
    monkeypatch.setattr(propagation, "_read_incoming", _speedups.read_incoming)
    incoming = propagation.read(PAIRS, get_settings())
    assert incoming.transaction_id == TX and incoming.sent_ns == EXPECTED[5]


def test_missing_headers_read_the_same() -> None:
    for drop in range(len(PAIRS)):
        read_both(PAIRS[:drop] + PAIRS[drop + 1:])
    assert fast([]) == (None, None, False, None, False, None, None)
    assert read_both([]) == read_both(()) == (None, None, None, None, ())


def test_the_origin_entry_is_read_in_c() -> None:
    bag = f"{ORIGIN_BAGGAGE_KEY}=1700000000123,transaction.id={TX}".encode()
    carrier = [(k, bag if k == "baggage" else v) for k, v in PAIRS]
    assert fast(carrier, True)[6] == "1700000000123"
    assert read_both(carrier)[1] == {ORIGIN_BAGGAGE_KEY: "1700000000123", "transaction.id": TX}


class TextKey(str):
    pass


class PairTuple(tuple):  # type: ignore[type-arg]
    pass


#: Each leaves the common case; (whether read_pairs must decline it, the carrier).
DEPARTURES: list[tuple[bool, list[Any]]] = [
    (True, [*PAIRS, ("traceparent", PAIRS[0][1])]),  # the same header twice, same value
    (True, [*PAIRS, ("x-transaction-id", b"other")]),  # twice, different values
    (True, [("traceparent", None), *PAIRS[1:]]),  # confluent-kafka's None value
    (True, [("traceparent", bytearray(PAIRS[0][1])), *PAIRS[1:]]),
    (True, [("traceparent", memoryview(PAIRS[0][1])), *PAIRS[1:]]),
    (True, [("traceparent", 17), *PAIRS[1:]]),
    (True, [*PAIRS[:1], ("x-transaction-id", b"caf\xc3\xa9"), *PAIRS[2:]]),  # UTF-8, not ASCII
    (True, [*PAIRS[:1], ("x-transaction-id", b"\xff\xfe"), *PAIRS[2:]]),  # not UTF-8
    (True, [*PAIRS[:2], ("baggage", b"transaction.id=" + b"x" * 9000)]),  # over the decode limit
    (True, [(b"traceparent", PAIRS[0][1]), *PAIRS[1:]]),  # a bytes key (decoded by Python)
    (True, [(TextKey("traceparent"), PAIRS[0][1]), *PAIRS[1:]]),  # a str subclass key
    (True, [["traceparent", PAIRS[0][1]], *PAIRS[1:]]),  # a list item
    (True, [PairTuple(PAIRS[0]), *PAIRS[1:]]),  # a tuple subclass
    (True, [("traceparent", PAIRS[0][1], b"x"), *PAIRS[1:]]),  # three items
    (True, [None, *PAIRS]),  # junk
    (True, [("other", b"x", b"y"), *PAIRS]),  # an odd item, even of another header
    (False, [*PAIRS, ("tracestate", b"vendor=1")]),  # read_common declines: a tracestate
    (False, [("traceparent", TRACEPARENT.upper().encode()), *PAIRS[1:]]),
    (False, [("traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"), *PAIRS[1:]]),
    (False, [*PAIRS[:1], ("x-transaction-id", b"order-42:retry.1"), *PAIRS[2:]]),
    (False, [*PAIRS[:1], ("x-transaction-id", b"bad\r\nid"), *PAIRS[2:]]),
    (False, [*PAIRS[:1], ("x-transaction-id", b""), *PAIRS[2:]]),
    (False, [*PAIRS[:2], ("baggage", b"tenant=a,transaction.id=" + TX.encode())]),
    (False, [*PAIRS[:3], ("x-hoptrace-sent-ns", b"-5")]),
    (False, [*PAIRS[:3], ("x-hoptrace-sent-ns", b"9" * 21)]),
    (False, [("TraceParent", PAIRS[0][1]), *PAIRS[1:]]),  # another name: not read at all
]


@pytest.mark.parametrize(("declined", "carrier"), DEPARTURES, ids=repr)
def test_every_departure_from_the_common_case_reads_the_same(
    declined: bool, carrier: list[Any]
) -> None:
    if declined:
        assert fast(carrier) is None
        assert fast(tuple(carrier)) is None
    read_both(carrier)
    read_both(tuple(carrier))


def test_other_carriers_and_header_names_are_left_to_python() -> None:
    class Headers(list):  # type: ignore[type-arg]
        pass

    assert fast(Headers(PAIRS)) is None
    assert fast(dict(PAIRS)) is None
    assert fast(None) is None
    assert fast(iter(PAIRS)) is None
    read_both(Headers(PAIRS))
    # A header name that is not ASCII text (the settings allow none): Python does it all.
    assert _speedups.read_pairs(PAIRS, "traceparent", "tracestate", "baggage", None,
                                "x-hoptrace-sent-ns", "transaction.id=", 8192, 128) is None
    assert _speedups.read_pairs(PAIRS, "traceparent", "tracestate", "baggage", "x-tx\u00e9",
                                "x-hoptrace-sent-ns", "transaction.id=", 8192, 128) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(carrier=st.one_of(list_carriers, list_carriers.map(tuple), confluent_lists),
       profile=st.sampled_from(PROFILES))
def test_fuzzed_list_carriers_read_the_same(carrier: Any, profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile)
    read_both(carrier)


#: Pairs as the Kafka clients deliver them: str names, bytes values (or None on confluent).
kafka_pairs = st.lists(
    entries.map(lambda e: (e[0], e[1].encode("utf-8", "surrogatepass")
                           if type(e[1]) is str else e[1] if type(e[1]) is bytes else None)),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(carrier=kafka_pairs, profile=st.sampled_from(PROFILES))
def test_fuzzed_kafka_pairs_read_the_same(carrier: Any, profile: dict[str, Any]) -> None:
    hoptrace.configure(**profile)
    read_both(carrier)
    read_both(tuple(carrier))


@settings(max_examples=200, deadline=None)
@given(
    trace_id=st.integers(1, 2**128 - 1), span_id=st.integers(1, 2**64 - 1),
    sampled=st.booleans(), tx=st.text("abcXYZ019", min_size=1, max_size=128),
    sent=st.integers(0, 10**20 - 1), order=st.permutations(range(4)),
    extra=st.lists(st.tuples(st.sampled_from(["key", "x-other", "id"]),
                             st.binary(max_size=8)), max_size=3),
)
def test_well_formed_pairs_in_any_order_are_read_in_c(
    trace_id: int, span_id: int, sampled: bool, tx: str, sent: int, order: list[int],
    extra: list[tuple[str, bytes]],
) -> None:
    pairs = [
        ("traceparent", f"00-{trace_id:032x}-{span_id:016x}-0{int(sampled)}".encode()),
        ("x-transaction-id", tx.encode()),
        ("baggage", f"transaction.id={tx}".encode()),
        ("x-hoptrace-sent-ns", str(sent).encode()),
    ]
    carrier = [pairs[i] for i in order] + extra
    assert fast(carrier) == (trace_id, span_id, sampled, tx, True, sent, None)
    read_both(carrier)


def test_wrong_argument_counts_raise() -> None:
    with pytest.raises(TypeError):
        _speedups.read_pairs([])


def test_no_references_or_memory_blocks_leak() -> None:
    import gc

    good = [(k, bytes(v)) for k, v in PAIRS]
    twice = [*good, good[1]]
    odd = [*good, ["x", b"y"]]
    bad_tail = [*good, ("x-transaction-id", b"\xff")]
    watched = [good, twice, odd, bad_tail, *good, *(v for _, v in good)]

    def rounds(count: int) -> None:
        for _ in range(count):
            fast(good)
            fast(tuple(good))
            fast(twice)
            fast(odd)
            fast(bad_tail)
            fast([*good[:3], ("tracestate", b"a=b")])

    rounds(1000)
    gc.collect()
    refs = [sys.getrefcount(x) for x in watched]
    blocks = sys.getallocatedblocks()
    rounds(20_000)
    gc.collect()
    assert [sys.getrefcount(x) for x in watched] == refs
    assert sys.getallocatedblocks() - blocks < 200
