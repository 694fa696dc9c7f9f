"""inject/extract over every carrier type: round trips, replace-not-append, no mutation."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context, trace

import hoptrace

HEADERS = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns")
#: What inject writes by default: the transaction ID travels as the baggage entry alone.
WRITTEN = ("traceparent", "baggage", "x-hoptrace-sent-ns")


def carriers() -> list[Any]:
    return [
        None,
        {},
        {"other": "kept"},
        [],
        [("other", b"kept")],
        (),
        (("other", b"kept"),),
        MappingProxyType({"other": "kept"}),
    ]


def keys_of(carrier: Any) -> list[str]:
    if isinstance(carrier, (list, tuple)):
        return [k for k, _ in carrier]
    return list(carrier)


@pytest.mark.parametrize("carrier", carriers(), ids=repr)
def test_round_trip_in_a_transaction(carrier: Any, spans: Any) -> None:
    had_other = carrier is not None and "other" in keys_of(carrier)
    with hoptrace.transaction("edge") as tx:
        trace_id = hoptrace.current_trace_id()
        out = hoptrace.inject(carrier)
    ctx = hoptrace.extract(out)
    assert hoptrace.current_transaction_id(ctx) == tx.transaction_id
    assert hoptrace.current_trace_id(ctx) == trace_id
    assert dict(baggage.get_all(ctx)) == {"transaction.id": tx.transaction_id}
    assert ("other" in keys_of(out)) is had_other


@pytest.mark.parametrize("carrier", [(), (("other", b"kept"),), MappingProxyType({"a": "b"})])
def test_immutable_carriers_get_a_new_carrier(carrier: Any) -> None:
    snapshot = list(carrier.items()) if isinstance(carrier, MappingProxyType) else list(carrier)
    out = hoptrace.inject(carrier)
    assert out is not carrier
    after = list(carrier.items()) if isinstance(carrier, MappingProxyType) else list(carrier)
    assert after == snapshot


@pytest.mark.parametrize("carrier", [{"a": "b"}, [("a", b"b")]])
def test_copy_leaves_the_callers_carrier_alone(carrier: Any) -> None:
    before = dict(carrier) if isinstance(carrier, dict) else list(carrier)
    out = hoptrace.inject(carrier, copy=True)
    assert out is not carrier
    assert carrier == before
    assert "traceparent" in keys_of(out)


@pytest.mark.parametrize("carrier", [{}, []])
def test_mutable_carriers_are_updated_in_place(carrier: Any) -> None:
    assert hoptrace.inject(carrier) is carrier
    assert sorted(keys_of(carrier)) == sorted(WRITTEN)


def test_list_carriers_get_bytes_and_dicts_get_str() -> None:
    assert all(isinstance(v, bytes) for _, v in hoptrace.inject([]))
    assert all(isinstance(v, str) for v in hoptrace.inject({}).values())


def test_unsupported_carrier_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="unsupported carrier type"):
        hoptrace.inject("traceparent=1")  # type: ignore[arg-type]


def test_publish_outside_a_transaction_gets_a_fresh_transaction_id(no_sdk: None) -> None:
    first = hoptrace.extract(hoptrace.inject({}))
    second = hoptrace.extract(hoptrace.inject({}))
    tx1, tx2 = hoptrace.current_transaction_id(first), hoptrace.current_transaction_id(second)
    assert tx1 and tx2 and tx1 != tx2
    assert len(tx1) == 32 and int(tx1, 16) >= 0


def test_custom_transaction_id_generator() -> None:
    counter = iter(range(1, 100))
    hoptrace.configure(transaction_id_generator=lambda: f"order-{next(counter)}")
    headers = hoptrace.inject({})
    assert headers["baggage"].startswith("transaction.id=order-")
    assert hoptrace.current_transaction_id(hoptrace.extract(headers)).startswith("order-")


def test_header_wins_over_baggage_mirror() -> None:
    ctx = hoptrace.extract({"x-transaction-id": "from-header", "baggage": "transaction.id=old"})
    assert hoptrace.current_transaction_id(ctx) == "from-header"


def test_baggage_round_trips_with_percent_encoding(spans: Any) -> None:
    ctx = baggage.set_baggage("tenant", "ac me,;=%")
    token = context.attach(ctx)
    try:
        with hoptrace.transaction():
            headers = hoptrace.inject({})
    finally:
        context.detach(token)
    restored = hoptrace.extract(headers)
    assert baggage.get_baggage("tenant", restored) == "ac me,;=%"


def test_tracestate_round_trips(spans: Any) -> None:
    headers = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "vendor=x1,other@t=y"}
    ctx = hoptrace.extract(headers)
    out = hoptrace.inject({}, context=ctx)
    assert out["tracestate"] == "vendor=x1,other@t=y"
    assert out["traceparent"] == headers["traceparent"]


def test_unsampled_flag_survives(no_sdk: None) -> None:
    tp = f"00-{'a' * 32}-{'b' * 16}-00"
    out = hoptrace.inject({}, context=hoptrace.extract({"traceparent": tp}))
    assert out["traceparent"].endswith("-00")


def test_future_version_traceparent_is_accepted() -> None:
    tp = f"01-{'a' * 32}-{'b' * 16}-01-future-field"
    assert hoptrace.current_trace_id(hoptrace.extract({"traceparent": tp})) == "a" * 32


def test_disabled_is_a_no_op() -> None:
    hoptrace.configure(enabled=False)
    carrier = {"a": "b"}
    assert hoptrace.inject(carrier) == {"a": "b"}
    assert hoptrace.current_transaction_id(hoptrace.extract({"x-transaction-id": "t"})) is None


def test_no_sdk_mints_a_trace_so_hops_share_one(no_sdk: None) -> None:
    headers = hoptrace.inject({})
    ctx = hoptrace.extract(headers)
    trace_id = hoptrace.current_trace_id(ctx)
    assert trace_id is not None
    assert trace.get_current_span(ctx).get_span_context().trace_flags.sampled is False
    again = hoptrace.inject({}, context=ctx)
    assert hoptrace.current_trace_id(hoptrace.extract(again)) == trace_id


def test_with_sdk_and_no_span_inject_leaves_the_sampling_decision_downstream(spans: Any) -> None:
    headers = hoptrace.inject({})
    assert "traceparent" not in headers
    assert headers["baggage"].startswith("transaction.id=")


def test_otel_getter_and_setter_work_with_otel_propagators() -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tp = f"00-{'c' * 32}-{'d' * 16}-01"
    carrier: list[tuple[str, Any]] = [("traceparent", tp.encode())]
    ctx = TraceContextTextMapPropagator().extract(carrier, getter=hoptrace.HeadersGetter())
    assert hoptrace.current_trace_id(ctx) == "c" * 32
    out: list[tuple[str, Any]] = [("traceparent", b"old")]
    TraceContextTextMapPropagator().inject(out, context=ctx, setter=hoptrace.HeadersSetter())
    assert out == [("traceparent", tp.encode())]


# --- property tests -------------------------------------------------------------------------

header_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=80),
    st.binary(max_size=80),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
header_keys = st.one_of(st.sampled_from(HEADERS), st.text(max_size=12))
dict_carriers = st.dictionaries(header_keys, header_values, max_size=8)
list_carriers = st.lists(
    st.one_of(st.tuples(header_keys, header_values), st.tuples(st.binary(max_size=12), header_values),
              header_values),
    max_size=8,
)
any_carrier = st.one_of(dict_carriers, list_carriers, list_carriers.map(tuple), header_values)


@settings(max_examples=400, deadline=None)
@given(any_carrier)
def test_extract_never_raises(carrier: Any) -> None:
    ctx = hoptrace.extract(carrier)
    tx = hoptrace.current_transaction_id(ctx)
    assert tx is None or (1 <= len(tx) <= 128 and "\n" not in tx and "\r" not in tx)
    with hoptrace.consume_scope(carrier, "fuzz", "kafka"):
        assert hoptrace.current_transaction_id() is not None
        assert hoptrace.current_trace_id() is not None


transaction_ids = st.from_regex(r"[A-Za-z0-9._:\-]{1,128}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["dict", "list", "tuple", "none"]),
    transaction_ids,
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True), st.text(max_size=20), max_size=5
    ),
)
def test_inject_then_extract_round_trips(shape: str, tx: str, entries: dict[str, str]) -> None:
    ctx = context.get_current()
    for key, value in entries.items():
        ctx = baggage.set_baggage(key, value, ctx)
    carrier: Any = {"dict": {}, "list": [], "tuple": (), "none": None}[shape]
    token = context.attach(ctx)
    try:
        with hoptrace.transaction(transaction_id=tx):
            trace_id = hoptrace.current_trace_id()
            out = hoptrace.inject(carrier)
    finally:
        context.detach(token)
    restored = hoptrace.extract(out)
    assert hoptrace.current_transaction_id(restored) == tx
    assert hoptrace.current_trace_id(restored) == trace_id
    got = dict(baggage.get_all(restored))
    assert got.pop("transaction.id") == tx
    entries.pop("transaction.id", None)
    assert got == entries


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["dict", "list"]), st.integers(min_value=1, max_value=5), list_carriers)
def test_repeated_inject_never_duplicates(shape: str, times: int, noise: list[Any]) -> None:
    carrier: Any = {} if shape == "dict" else [item for item in noise if isinstance(item, tuple)]
    passed_on = "x-transaction-id" in keys_of(carrier)  # then rewritten, never left stale
    for _ in range(times):
        carrier = hoptrace.inject(carrier)
    keys = keys_of(carrier)
    for header in WRITTEN:
        assert keys.count(header) == 1
    assert keys.count("x-transaction-id") == passed_on


# A valid ID already in the outgoing carrier is kept when no transaction is active (a message
# that a framework or another instrumentation passes on); inside a transaction, the
# transaction's ID wins.


def test_inject_outside_a_transaction_keeps_the_carriers_valid_id() -> None:
    headers = hoptrace.inject({"x-transaction-id": "keep-1"})
    assert headers["x-transaction-id"] == "keep-1"
    assert "transaction.id=keep-1" in headers["baggage"]


def test_inject_keeps_an_id_carried_only_in_the_baggage() -> None:
    headers = hoptrace.inject([("baggage", b"tenant=acme,transaction.id=keep-2")])
    values = {k: v.decode() for k, v in headers}
    assert "x-transaction-id" not in values
    assert "transaction.id=keep-2" in values["baggage"]


def test_inject_replaces_an_invalid_carried_id() -> None:
    headers = hoptrace.inject({"x-transaction-id": "bad id\r\n"})
    assert headers["x-transaction-id"] != "bad id\r\n"
    assert len(headers["x-transaction-id"]) == 32


def test_inside_a_transaction_its_id_wins_over_the_carriers() -> None:
    with hoptrace.transaction("edge") as tx:
        headers = hoptrace.inject({"x-transaction-id": "stale-3"})
    assert headers["x-transaction-id"] == tx.transaction_id


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("shape", ["dict", "list", "tuple"])
def test_a_passed_on_header_is_replaced_not_left_stale(shape: str, copy: bool, spans: Any) -> None:
    """hoptrace writes no header, but one the carrier holds would win at the consumer: it is
    rewritten with the current ID (for inject and produce_scope alike)."""
    pairs = [("x-transaction-id", b"stale-3"), ("other", b"kept")]
    carrier: Any = {k: v.decode() for k, v in pairs} if shape == "dict" else pairs
    if shape == "tuple":
        carrier = tuple(pairs)
    with hoptrace.transaction("edge") as tx:
        out = hoptrace.inject(list(carrier) if shape == "list" else carrier, copy=copy)
        with hoptrace.produce_scope(
            dict(carrier) if shape == "dict" else list(carrier), "orders", "kafka", copy=copy
        ) as scope:
            pass
    for sent in (out, scope.carrier):
        assert keys_of(sent).count("x-transaction-id") == 1
        assert hoptrace.current_transaction_id(hoptrace.extract(sent)) == tx.transaction_id


# The header economy: traceparent (+ tracestate) and baggage with the ID as its entry; the
# x-transaction-id header is read always, written only when set or when the baggage cannot
# carry the ID.


@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "no-sdk"])
@pytest.mark.parametrize("carrier", [None, {}, [], ()], ids=repr)
def test_no_transaction_header_on_the_wire_by_default(
    carrier: Any, sdk: bool, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("spans" if sdk else "no_sdk")
    with hoptrace.transaction("edge") as tx:
        inside = hoptrace.inject(carrier)
    outside = hoptrace.inject(carrier)
    for out, expected in ((inside, tx.transaction_id), (outside, None)):
        assert "x-transaction-id" not in keys_of(out)
        got = hoptrace.current_transaction_id(hoptrace.extract(out))
        assert got is not None and got == (expected or got)
        assert f"transaction.id={got}" == dict(keys_and_text(out))["baggage"]


def keys_and_text(carrier: Any) -> list[tuple[str, str]]:
    if isinstance(carrier, (list, tuple)):
        return [(k, v.decode()) for k, v in carrier]
    return list(carrier.items())


def test_a_set_transaction_header_is_written_beside_the_baggage_entry() -> None:
    hoptrace.configure(transaction_header="x-transaction-id")
    with hoptrace.transaction(transaction_id="order-5"):
        headers = hoptrace.inject({})
    assert headers["x-transaction-id"] == "order-5"
    assert headers["baggage"] == "transaction.id=order-5"


@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "no-sdk"])
def test_the_id_survives_when_the_baggage_entry_is_off(
    sdk: bool, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("spans" if sdk else "no_sdk")
    hoptrace.configure(baggage_mirror=False)
    with hoptrace.transaction(transaction_id="order-6"):
        headers = hoptrace.inject({})
    assert headers["x-transaction-id"] == "order-6"
    assert "baggage" not in headers
    assert hoptrace.current_transaction_id(hoptrace.extract(headers)) == "order-6"


@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "no-sdk"])
@pytest.mark.parametrize("tx", ["order-7-" + "x" * 40, None], ids=["given", "generated"])
def test_the_id_survives_a_baggage_limit_that_drops_the_entry(
    tx: str | None, sdk: bool, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("spans" if sdk else "no_sdk")
    hoptrace.configure(max_baggage_bytes=40, warning_interval=0)
    if tx is None:
        headers = hoptrace.inject({})  # a generated ID: 32 characters, over 40 with its key
    else:
        with hoptrace.transaction(transaction_id=tx):
            headers = hoptrace.inject({})
    carried = headers["x-transaction-id"]
    assert carried == (tx or carried) and len(carried) >= 32
    assert hoptrace.current_transaction_id(hoptrace.extract(headers)) == carried


@pytest.mark.parametrize(
    ("tx", "kept"),
    [
        ("order-8-" + "x" * 30, "transaction.id=order-8-" + "x" * 30),  # 53 bytes: alone
        ("order-8-" + "x" * 50, "tenant=acme"),  # the entry alone is over 60 bytes
    ],
    ids=["entry-kept-first", "entry-too-long"],
)
def test_other_entries_never_crowd_the_id_out(tx: str, kept: str) -> None:
    hoptrace.configure(max_baggage_bytes=60, warning_interval=0)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction(transaction_id=tx):
            headers = hoptrace.inject({})
    finally:
        context.detach(token)
    assert headers["baggage"] == kept
    assert headers.get("x-transaction-id") == (None if tx in kept else tx)
    assert hoptrace.current_transaction_id(hoptrace.extract(headers)) == tx


def test_a_message_from_an_older_sender_with_only_the_header_is_read(spans: Any) -> None:
    old = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-transaction-id": "legacy-9",
    }
    assert hoptrace.current_transaction_id(hoptrace.extract(old)) == "legacy-9"
    with hoptrace.consume_scope(old, "orders", "kafka"):
        assert hoptrace.current_transaction_id() == "legacy-9"
        passed_on = hoptrace.inject({})
    assert "x-transaction-id" not in passed_on
    assert passed_on["baggage"] == "transaction.id=legacy-9"


def test_produce_scope_outside_a_transaction_keeps_the_carriers_id(spans: Any) -> None:
    with hoptrace.produce_scope({"baggage": "transaction.id=keep-4"}, "orders", "kafka") as s:
        inside = hoptrace.current_transaction_id()
        carrier = s.carrier
    assert inside == "keep-4" and "transaction.id=keep-4" in carrier["baggage"]
    assert "x-transaction-id" not in carrier
    assert spans.one("send orders").attributes["hoptrace.transaction.id"] == "keep-4"


def test_max_baggage_bytes_counts_utf8_bytes_of_an_incoming_header(caplog: Any) -> None:
    """A text header is measured as the bytes it takes on the wire, as a bytes header is."""
    hoptrace.configure(max_baggage_bytes=40, warning_interval=0)
    try:
        entry = "k=" + "é" * 30  # 32 characters, 62 bytes in UTF-8
        for header in (entry, entry.encode("utf-8")):
            caplog.clear()
            ctx = hoptrace.extract({"baggage": header})
            assert baggage.get_baggage("k", ctx) is None
            assert "ignored incoming baggage (size)" in caplog.text, header
    finally:
        hoptrace.configure(max_baggage_bytes=8192, warning_interval=60)


def test_max_baggage_bytes_trims_the_outgoing_header_at_the_limit() -> None:
    """A header exactly at the limit is kept whole; one byte under, an entry is dropped."""
    token = context.attach(baggage.set_baggage("a", "b", baggage.set_baggage("k", "v")))
    try:
        with hoptrace.transaction():
            full = hoptrace.inject({})["baggage"]
            hoptrace.configure(max_baggage_bytes=len(full))
            assert hoptrace.inject({})["baggage"] == full  # exactly at the limit: kept whole
            hoptrace.configure(max_baggage_bytes=len(full) - 1)
            trimmed = hoptrace.inject({})["baggage"]
    finally:
        hoptrace.configure(max_baggage_bytes=8192)
        context.detach(token)
    assert len(trimmed.encode()) < len(full) and "transaction.id=" in trimmed


ORIGIN_KEY = "hoptrace.origin_ms"  # the pathway metric's entry (hoptrace.core.metrics)


@pytest.mark.parametrize("origin", ["1700000000123", "1" * 16, "1" * 17, "12a"])
def test_the_origin_entry_rides_the_baggage_before_the_mirror(origin: str) -> None:
    """The pathway's origin entry and the transaction ID: the header, then both back out."""
    token = context.attach(baggage.set_baggage(ORIGIN_KEY, origin))
    try:
        with hoptrace.transaction(transaction_id="order42"):
            headers = hoptrace.inject({})
    finally:
        context.detach(token)
    assert headers["baggage"] == f"{ORIGIN_KEY}={origin},transaction.id=order42"
    restored = hoptrace.extract(headers)
    assert hoptrace.current_transaction_id(restored) == "order42"
    assert dict(baggage.get_all(restored)) == {ORIGIN_KEY: origin, "transaction.id": "order42"}


@pytest.mark.parametrize(
    ("allow", "kept"),
    [(None, True), ({ORIGIN_KEY}, True), ({"tenant"}, False), (set(), False)],
)
def test_an_incoming_origin_entry_obeys_the_allowlist(allow: Any, kept: bool) -> None:
    hoptrace.configure(baggage_allowlist=allow)
    ctx = hoptrace.extract({
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x-transaction-id": "order42",
        "baggage": f"{ORIGIN_KEY}=1700000000123,transaction.id=order42",
    })
    assert hoptrace.current_transaction_id(ctx) == "order42"
    expected = {ORIGIN_KEY: "1700000000123"} if kept else {}
    assert dict(baggage.get_all(ctx)) == {**expected, "transaction.id": "order42"}
