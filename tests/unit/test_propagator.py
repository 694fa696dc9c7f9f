"""hoptrace's transaction-ID propagator, and hoptrace's inject/extract under other propagators.

No broker: carriers are plain dicts and pair lists. The global textmap is restored after
every test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import hoptrace
from hoptrace.core.propagator import baggage_entry, configured_textmap

b3 = pytest.importorskip("opentelemetry.propagators.b3")
jaeger = pytest.importorskip("opentelemetry.propagators.jaeger")

TX_HEADER = "x-transaction-id"
BAGGAGE_KEY = "transaction.id"


@pytest.fixture(autouse=True)
def textmap() -> Iterator[None]:
    """Put back whatever global propagator was in force before the test."""
    saved = propagate.get_global_textmap()
    try:
        yield
    finally:
        propagate.set_global_textmap(saved)


def w3c() -> list[TextMapPropagator]:
    return [TraceContextTextMapPropagator(), W3CBaggagePropagator()]


def trace_hex(span: Any) -> str:
    return f"{span.get_span_context().trace_id:032x}"


# ------------------------------------------------------------------- the propagator alone ---


def test_inject_inside_transaction_writes_the_baggage_entry_and_no_header() -> None:
    with hoptrace.transaction("edge") as tx:
        carrier: dict[str, str] = {}
        hoptrace.TransactionIdPropagator().inject(carrier)
    assert TX_HEADER not in carrier
    assert "baggage" in carrier, f"no baggage header written: {carrier}"
    assert baggage_entry(carrier["baggage"], BAGGAGE_KEY) == tx.transaction_id


def test_inject_keeps_the_other_baggage_entries() -> None:
    token = otel_context.attach(baggage.set_baggage("tenant", "acme co"))
    try:
        with hoptrace.transaction("edge") as tx:
            carrier: dict[str, str] = {}
            hoptrace.TransactionIdPropagator().inject(carrier)
    finally:
        otel_context.detach(token)
    assert TX_HEADER not in carrier
    assert baggage_entry(carrier.get("baggage", ""), BAGGAGE_KEY) == tx.transaction_id
    assert baggage_entry(carrier.get("baggage", ""), "tenant") == "acme co"


@pytest.mark.parametrize(
    "options", [{"transaction_header": "x-transaction-id"}, {"baggage_mirror": False}],
    ids=["header-set", "no-baggage-entry"],
)
def test_inject_writes_the_header_when_set_or_when_the_baggage_does_not_carry_the_id(
    options: dict[str, Any],
) -> None:
    hoptrace.configure(**options)
    with hoptrace.transaction("edge") as tx:
        carrier: dict[str, str] = {}
        hoptrace.TransactionIdPropagator().inject(carrier)
    assert carrier[TX_HEADER] == tx.transaction_id
    ctx = hoptrace.TransactionIdPropagator().extract(carrier)
    assert hoptrace.current_transaction_id(ctx) == tx.transaction_id


def test_inject_of_a_context_whose_baggage_lacks_the_id() -> None:
    # A transaction ID set without the baggage mirror (hoptrace's low-level setter): the W3C
    # baggage propagator (configured) could write that baggage after us, so the header too.
    from hoptrace.core.context import set_transaction_id

    ctx = set_transaction_id("order-42", baggage.set_baggage("tenant", "acme"))
    carrier: dict[str, str] = {}
    hoptrace.TransactionIdPropagator().inject(carrier, context=ctx)
    assert carrier[TX_HEADER] == "order-42"
    assert baggage_entry(carrier["baggage"], BAGGAGE_KEY) == "order-42"
    assert baggage_entry(carrier["baggage"], "tenant") == "acme"


def test_inject_outside_a_transaction_writes_nothing() -> None:
    carrier: dict[str, str] = {}
    hoptrace.TransactionIdPropagator().inject(carrier)
    assert carrier == {}


def test_extract_from_the_transaction_header_only() -> None:
    ctx = hoptrace.TransactionIdPropagator().extract({TX_HEADER: "order-42"})
    assert hoptrace.current_transaction_id(ctx) == "order-42"


def test_extract_from_the_baggage_only() -> None:
    carrier = {"baggage": "tenant=acme,transaction.id=order-43;prop=1"}
    ctx = hoptrace.TransactionIdPropagator().extract(carrier)
    assert hoptrace.current_transaction_id(ctx) == "order-43"


def test_extract_from_percent_encoded_baggage() -> None:
    ctx = hoptrace.TransactionIdPropagator().extract({"baggage": "transaction.id=order%3A44"})
    assert hoptrace.current_transaction_id(ctx) == "order:44"


def test_extract_keeps_the_context_it_was_given() -> None:
    key = otel_context.create_key("test.other")
    base = otel_context.set_value(key, "kept")
    ctx = hoptrace.TransactionIdPropagator().extract({TX_HEADER: "order-45"}, context=base)
    assert ctx.get(key) == "kept"
    assert hoptrace.current_transaction_id(ctx) == "order-45"


@pytest.mark.parametrize(
    "carrier",
    [
        {TX_HEADER: "has space"},
        {TX_HEADER: "x" * 129},
        {TX_HEADER: "semi;colon"},
        {TX_HEADER: b"\xff\xfe"},
        {TX_HEADER: 12345},
        {TX_HEADER: ""},
        {"baggage": "transaction.id=has%20space"},
        {"baggage": "transaction.id=" + "y" * 200},
        {"baggage": "transaction.id"},
        {"baggage": "," * 20000},
    ],
    ids=[
        "space", "too-long", "semicolon", "non-utf8", "int", "empty",
        "baggage-space", "baggage-too-long", "baggage-no-value", "baggage-huge",
    ],
)
def test_invalid_ids_are_rejected_without_raising(carrier: dict[str, Any]) -> None:
    key = otel_context.create_key("test.other")
    base = otel_context.set_value(key, "kept")
    ctx = hoptrace.TransactionIdPropagator().extract(carrier, context=base)
    assert hoptrace.current_transaction_id(ctx) is None
    assert ctx.get(key) == "kept"


def test_a_rejected_header_is_counted() -> None:
    hoptrace.TransactionIdPropagator().extract({TX_HEADER: "has space"})
    assert sum(hoptrace.diagnostics().values()) >= 1


def test_extract_honours_trust_incoming_off() -> None:
    hoptrace.configure(trust_incoming=False)
    ctx = hoptrace.TransactionIdPropagator().extract({TX_HEADER: "order-46"})
    assert hoptrace.current_transaction_id(ctx) is None


@pytest.mark.parametrize("ours_first", [False, True], ids=["w3c-then-hoptrace", "hoptrace-then-w3c"])
def test_composite_carries_the_id_in_the_baggage(ours_first: bool) -> None:
    members = w3c()
    ours = hoptrace.TransactionIdPropagator()
    composite = CompositePropagator([ours, *members] if ours_first else [*members, ours])
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction("edge") as tx:
            carrier: dict[str, str] = {}
            composite.inject(carrier)
            span = trace.get_current_span()
    finally:
        otel_context.detach(token)
    assert TX_HEADER not in carrier
    assert baggage_entry(carrier["baggage"], BAGGAGE_KEY) == tx.transaction_id
    assert baggage_entry(carrier["baggage"], "tenant") == "acme"
    assert carrier["traceparent"].split("-")[1] == trace_hex(span)

    # A receiver with plain W3C propagators finds the ID in the baggage alone.
    ctx = CompositePropagator(w3c()).extract(carrier)
    assert baggage.get_baggage(BAGGAGE_KEY, ctx) == tx.transaction_id
    assert hoptrace.current_transaction_id(ctx) == tx.transaction_id
    # And the same composite reads it back.
    ctx = composite.extract(carrier)
    assert hoptrace.current_transaction_id(ctx) == tx.transaction_id
    assert baggage.get_baggage("tenant", ctx) == "acme"


# ---------------------------------------------------------------- current_transaction_id ---


def test_scopes_put_the_id_in_the_otel_baggage() -> None:
    with hoptrace.transaction("edge") as tx:
        assert baggage.get_baggage(BAGGAGE_KEY) == tx.transaction_id
        headers = hoptrace.inject({})
    assert baggage.get_baggage(BAGGAGE_KEY) is None
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        assert baggage.get_baggage(BAGGAGE_KEY) == tx.transaction_id
    with hoptrace.transaction("edge2") as tx2, hoptrace.produce_scope({}, "orders", "rabbitmq"):
        assert baggage.get_baggage(BAGGAGE_KEY) == tx2.transaction_id


def test_current_transaction_id_falls_back_to_the_baggage() -> None:
    assert hoptrace.current_transaction_id() is None
    token = otel_context.attach(baggage.set_baggage(BAGGAGE_KEY, "from-another-instrumentation"))
    try:
        assert hoptrace.current_transaction_id() == "from-another-instrumentation"
    finally:
        otel_context.detach(token)
    assert hoptrace.current_transaction_id() is None
    ctx = baggage.set_baggage(BAGGAGE_KEY, "explicit-context")
    assert hoptrace.current_transaction_id(ctx) == "explicit-context"


def test_the_restored_id_wins_over_the_baggage() -> None:
    token = otel_context.attach(baggage.set_baggage(BAGGAGE_KEY, "older-baggage-value"))
    try:
        with hoptrace.consume_scope({TX_HEADER: "order-47"}, "orders", "rabbitmq"):
            assert hoptrace.current_transaction_id() == "order-47"
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize("value", ["has space", "", "x" * 129, "ü"])
def test_invalid_baggage_entry_is_no_transaction(value: str) -> None:
    assert hoptrace.current_transaction_id(baggage.set_baggage(BAGGAGE_KEY, value)) is None


def test_a_non_string_baggage_entry_is_no_transaction() -> None:
    assert hoptrace.current_transaction_id(baggage.set_baggage(BAGGAGE_KEY, 42)) is None


def test_the_fallback_follows_the_configured_baggage_key() -> None:
    hoptrace.configure(baggage_key="app.tx")
    ctx = baggage.set_baggage("app.tx", "order-48")
    assert hoptrace.current_transaction_id(ctx) == "order-48"
    assert hoptrace.current_transaction_id(baggage.set_baggage(BAGGAGE_KEY, "x1")) is None


# ------------------------------------------------------------------- configured_textmap ---


def test_w3c_composite_is_the_fast_path() -> None:
    propagate.set_global_textmap(CompositePropagator(w3c()))
    assert configured_textmap() is None
    propagate.set_global_textmap(CompositePropagator(list(reversed(w3c()))))
    assert configured_textmap() is None


def test_w3c_with_hoptrace_is_the_fast_path() -> None:
    propagate.set_global_textmap(
        CompositePropagator([*w3c(), hoptrace.TransactionIdPropagator()])
    )
    assert configured_textmap() is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: b3.B3MultiFormat(),
        lambda: b3.B3SingleFormat(),
        lambda: jaeger.JaegerPropagator(),
        lambda: TraceContextTextMapPropagator(),
        lambda: W3CBaggagePropagator(),
        lambda: CompositePropagator([TraceContextTextMapPropagator()]),
        lambda: CompositePropagator([*w3c(), b3.B3MultiFormat()]),
        lambda: CompositePropagator([hoptrace.TransactionIdPropagator()]),
    ],
    ids=["b3multi", "b3", "jaeger", "tracecontext", "baggage", "composite-tc",
         "w3c+b3", "hoptrace-only"],
)
def test_other_propagators_are_gone_through(make: Any) -> None:
    textmap = make()
    propagate.set_global_textmap(textmap)
    assert configured_textmap() is textmap


def test_classification_follows_later_changes() -> None:
    first = b3.B3MultiFormat()
    propagate.set_global_textmap(first)
    assert configured_textmap() is first
    propagate.set_global_textmap(CompositePropagator(w3c()))
    assert configured_textmap() is None
    second = jaeger.JaegerPropagator()
    propagate.set_global_textmap(second)
    assert configured_textmap() is second


_PROBE = """
import json
from opentelemetry import propagate
from hoptrace.core.propagator import configured_textmap
textmap = propagate.get_global_textmap()
members = getattr(textmap, "_propagators", [textmap])
chosen = configured_textmap()
print(json.dumps({
    "members": [type(m).__name__ for m in members],
    "configured": None if chosen is None else type(chosen).__name__,
}))
"""


@pytest.mark.parametrize(
    ("value", "members", "configured"),
    [
        (None, ["TraceContextTextMapPropagator", "W3CBaggagePropagator"], None),
        ("tracecontext,baggage",
         ["TraceContextTextMapPropagator", "W3CBaggagePropagator"], None),
        ("tracecontext,baggage,hoptrace",
         ["TraceContextTextMapPropagator", "W3CBaggagePropagator", "TransactionIdPropagator"],
         None),
        ("b3multi", ["B3MultiFormat"], "CompositePropagator"),
        ("tracecontext,baggage,jaeger",
         ["TraceContextTextMapPropagator", "W3CBaggagePropagator", "JaegerPropagator"],
         "CompositePropagator"),
    ],
    ids=["unset", "w3c", "w3c+hoptrace", "b3multi", "w3c+jaeger"],
)
def test_otel_propagators_env(value: str | None, members: list[str], configured: str | None) -> None:
    """The default OTel builds from OTEL_PROPAGATORS, the ``hoptrace`` entry point included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if value is not None:
        env["OTEL_PROPAGATORS"] = value
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {"members": members, "configured": configured}, proc.stderr


# ------------------------------------------------------------------- B3 ---


def test_inject_under_b3_writes_b3_headers(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    with hoptrace.transaction("edge") as tx:
        span = trace.get_current_span()
        carrier = hoptrace.inject({})
    headers = {k.lower(): v for k, v in carrier.items()}
    assert headers["x-b3-traceid"] == trace_hex(span)
    assert headers["x-b3-spanid"] == f"{span.get_span_context().span_id:016x}"
    assert headers["x-b3-sampled"] == "1"
    assert headers[TX_HEADER] == tx.transaction_id
    assert headers["x-hoptrace-sent-ns"].isdigit()
    assert "traceparent" not in headers
    assert "tracestate" not in headers


def test_inject_under_b3_without_sdk_mints_ids(no_sdk: None) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    with hoptrace.transaction("edge") as tx:
        trace_id = hoptrace.current_trace_id()
        carrier = hoptrace.inject({})
    assert carrier["x-b3-traceid"] == trace_id
    assert carrier[TX_HEADER] == tx.transaction_id
    assert "traceparent" not in carrier
    outside = hoptrace.inject({})  # outside a trace: a fresh valid one, and a new transaction
    assert len(outside["x-b3-traceid"]) == 32 and int(outside["x-b3-traceid"], 16)
    assert outside[TX_HEADER] and outside[TX_HEADER] != tx.transaction_id
    assert "traceparent" not in outside


def test_inject_under_b3_into_a_pair_list(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    with hoptrace.transaction("edge") as tx:
        span = trace.get_current_span()
        pairs = hoptrace.inject([("x-b3-traceid", b"stale"), ("app", b"1")])
    keys = [k for k, _ in pairs]
    assert keys.count("x-b3-traceid") == 1  # replaced, not appended
    found = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
    assert found["x-b3-traceid"] == trace_hex(span)
    assert found[TX_HEADER] == tx.transaction_id
    assert found["app"] == "1"
    assert "traceparent" not in found


def test_inject_under_b3_single_writes_the_b3_header(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3SingleFormat())
    with hoptrace.transaction("edge"):
        span = trace.get_current_span()
        carrier = hoptrace.inject({})
    assert carrier["b3"].split("-")[0] == trace_hex(span)
    assert "traceparent" not in carrier


def _otel_publish(textmap: TextMapPropagator | None = None) -> tuple[dict[str, str], Any, str]:
    """Headers written by OpenTelemetry's own propagation under an OTel span in a transaction."""
    with hoptrace.transaction("edge") as tx:
        with trace.get_tracer("test.otel").start_as_current_span("otel-send") as span:
            carrier: dict[str, str] = {}
            if textmap is None:
                propagate.inject(carrier)
            else:
                textmap.inject(carrier)
    assert tx.transaction_id is not None
    return carrier, span, tx.transaction_id


def _handler_view(carrier: Any, destination: str = "orders") -> dict[str, Any]:
    with hoptrace.consume_scope(carrier, destination, "rabbitmq"):
        return {
            "trace_id": hoptrace.current_trace_id(),
            "tx": hoptrace.current_transaction_id(),
        }


def test_consume_scope_reads_b3_written_by_otel(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    carrier, span, tx = _otel_publish()
    assert "x-b3-traceid" in carrier and "traceparent" not in carrier
    hoptrace.TransactionIdPropagator().inject(carrier, context=_tx_context(tx))
    seen = _handler_view(carrier)
    assert seen == {"trace_id": trace_hex(span), "tx": tx}
    process = spans.one("process orders")
    assert process.parent is not None
    assert process.parent.span_id == span.get_span_context().span_id
    assert process.context.trace_id == span.get_span_context().trace_id


def test_extract_reads_b3_written_by_otel(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    carrier, span, _ = _otel_publish()
    ctx = hoptrace.extract(carrier)
    assert hoptrace.current_trace_id(ctx) == trace_hex(span)
    assert hoptrace.current_span_id(ctx) == f"{span.get_span_context().span_id:016x}"


def test_b3_with_hoptrace_composite_carries_the_transaction(spans: Any) -> None:
    textmap = CompositePropagator([b3.B3MultiFormat(), hoptrace.TransactionIdPropagator()])
    propagate.set_global_textmap(textmap)
    assert configured_textmap() is textmap
    carrier, span, tx = _otel_publish()
    # hoptrace's propagator writes the baggage entry itself: no transaction header needed.
    assert TX_HEADER not in carrier
    assert baggage_entry(carrier["baggage"], BAGGAGE_KEY) == tx
    assert _handler_view(carrier) == {"trace_id": trace_hex(span), "tx": tx}


def test_b3_hop_between_two_hoptrace_scopes(spans: Any) -> None:
    propagate.set_global_textmap(b3.B3MultiFormat())
    with hoptrace.transaction("edge") as tx, hoptrace.produce_scope(
        {}, "orders", "rabbitmq"
    ) as produced:
        pass
    carrier = produced.carrier
    assert "x-b3-traceid" in carrier and "traceparent" not in carrier
    assert _handler_view(carrier)["tx"] == tx.transaction_id
    send = spans.one("send orders")
    process = spans.one("process orders")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id


def _tx_context(tx: str) -> Any:
    from hoptrace.core.context import set_transaction_id

    return set_transaction_id(tx)


# ------------------------------------------------------------------- Jaeger ---


def test_inject_under_jaeger_writes_uber_trace_id(spans: Any) -> None:
    propagate.set_global_textmap(jaeger.JaegerPropagator())
    with hoptrace.transaction("edge") as tx:
        span = trace.get_current_span()
        carrier = hoptrace.inject({})
    trace_id, span_id, _parent, _flags = carrier["uber-trace-id"].split(":")
    assert trace_id == trace_hex(span)
    assert span_id == f"{span.get_span_context().span_id:016x}"
    assert carrier[TX_HEADER] == tx.transaction_id
    assert carrier["uberctx-transaction.id"] == tx.transaction_id  # Jaeger's baggage
    assert "traceparent" not in carrier and "baggage" not in carrier


def test_consume_scope_reads_jaeger_written_by_otel(spans: Any) -> None:
    propagate.set_global_textmap(jaeger.JaegerPropagator())
    carrier, span, tx = _otel_publish()
    assert "uber-trace-id" in carrier and "traceparent" not in carrier
    assert TX_HEADER not in carrier  # OTel wrote only Jaeger's headers: the ID is in its baggage
    assert _handler_view(carrier) == {"trace_id": trace_hex(span), "tx": tx}
    process = spans.one("process orders")
    assert process.parent is not None
    assert process.parent.span_id == span.get_span_context().span_id


def test_extract_reads_jaeger_written_by_otel(spans: Any) -> None:
    propagate.set_global_textmap(jaeger.JaegerPropagator())
    carrier, span, tx = _otel_publish()
    ctx = hoptrace.extract(carrier)
    assert hoptrace.current_trace_id(ctx) == trace_hex(span)
    assert hoptrace.current_transaction_id(ctx) == tx
    assert baggage.get_baggage(BAGGAGE_KEY, ctx) == tx
