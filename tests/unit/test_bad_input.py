"""Every malformed header yields a counted rejection and a valid context in the consumer scope.

A case whose traceparent is rejected starts a fresh trace; a case whose transaction ID is
rejected gets a fresh transaction ID. A bad baggage, tracestate or send-time value is dropped
on its own: the valid traceparent and transaction ID beside it are kept (W3C: a broken
tracestate must not discard traceparent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

import hoptrace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{SPAN}-01"
TX = "tx-order-42"
HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Case:
    name: str
    carrier: Any
    reason: str
    fresh_trace: bool
    fresh_tx: bool


def d(**overrides: Any) -> dict[str, Any]:
    """A valid AMQP-style carrier with some values replaced."""
    base: dict[str, Any] = {"traceparent": TP, "x-transaction-id": TX}
    for key, value in overrides.items():
        base[key.replace("_", "-")] = value
    return base


BAD_TP = "traceparent"
CASES = [
    Case("version ff", d(traceparent=f"ff-{TRACE}-{SPAN}-01"), "traceparent.format", True, False),
    Case("version not hex", d(traceparent=f"0g-{TRACE}-{SPAN}-01"), "traceparent.format", True, False),
    Case("all-zero trace id", d(traceparent=f"00-{'0' * 32}-{SPAN}-01"), "traceparent.zero_id", True, False),
    Case("all-zero span id", d(traceparent=f"00-{TRACE}-{'0' * 16}-01"), "traceparent.zero_id", True, False),
    Case("short trace id", d(traceparent=f"00-{TRACE[:31]}-{SPAN}-01"), "traceparent.format", True, False),
    Case("long span id", d(traceparent=f"00-{TRACE}-{SPAN}0-01"), "traceparent.format", True, False),
    Case("uppercase", d(traceparent=TP.upper()), "traceparent.format", True, False),
    Case("trailing junk", d(traceparent=TP + "x"), "traceparent.format", True, False),
    Case("v00 with extra field", d(traceparent=TP + "-abc"), "traceparent.format", True, False),
    Case("missing flags", d(traceparent=f"00-{TRACE}-{SPAN}"), "traceparent.format", True, False),
    Case("empty traceparent", d(traceparent=""), "traceparent.format", True, False),
    Case("padded traceparent", d(traceparent=f" {TP} "), "traceparent.format", True, False),
    Case("non-utf8 traceparent", d(traceparent=b"\xff\xfe" + TP.encode()), "traceparent.encoding", True, False),
    Case("int traceparent", d(traceparent=12345), "traceparent.type", True, False),
    Case("None traceparent", d(traceparent=None), "traceparent.type", True, False),
    Case("nested traceparent", d(traceparent={"v": TP}), "traceparent.type", True, False),
    Case("list traceparent", d(traceparent=[TP]), "traceparent.type", True, False),
    Case("huge traceparent", d(traceparent="0" * 10_000), "traceparent.size", True, False),
    Case(
        "duplicate traceparent",
        [("traceparent", TP.encode()), ("traceparent", f"00-{TRACE}-{'1' * 16}-01".encode()),
         ("x-transaction-id", TX.encode())],
        "traceparent.duplicate", True, False,
    ),
    Case("CR/LF transaction id", d(x_transaction_id="tx\r\nFAKE log line"), "transaction_id.format", False, True),
    Case("129-char transaction id", d(x_transaction_id="a" * 129), "transaction_id.size", False, True),
    Case("space in transaction id", d(x_transaction_id="tx 1"), "transaction_id.format", False, True),
    Case("non-ascii transaction id", d(x_transaction_id="tx-\u00e9"), "transaction_id.format", False, True),
    Case("non-utf8 transaction id", d(x_transaction_id=b"tx-\xff"), "transaction_id.encoding", False, True),
    Case("int transaction id", d(x_transaction_id=42), "transaction_id.type", False, True),
    Case("None transaction id", d(x_transaction_id=None), "transaction_id.type", False, True),
    Case("empty transaction id", d(x_transaction_id=""), "transaction_id.format", False, True),
    Case(
        "duplicate transaction id",
        [("traceparent", TP.encode()), ("x-transaction-id", b"a"), ("x-transaction-id", b"b")],
        "transaction_id.duplicate", False, True,
    ),
    Case(
        "CR/LF transaction id mirrored in baggage",
        {"traceparent": TP, "baggage": "transaction.id=tx%0D%0Aforged"},
        "transaction_id.format", False, True,
    ),
    Case("oversized baggage", d(baggage="k=" + "v" * 9000), "baggage.size", False, False),
    Case(
        "too many baggage members",
        d(baggage=",".join(f"k{i}=v" for i in range(200))),
        "baggage.members", False, False,
    ),
    Case("malformed baggage member", d(baggage="a=1,=2,b"), "baggage.format", False, False),
    Case("non-utf8 baggage", d(baggage=b"a=\xff"), "baggage.encoding", False, False),
    Case("int baggage", d(baggage=7), "baggage.type", False, False),
    Case("nested baggage", d(baggage={"a": {"b": 1}}), "baggage.type", False, False),
    Case("oversized tracestate", d(tracestate="a=" + "b" * 600), "tracestate.size", False, False),
    Case(
        "33 tracestate members",
        d(tracestate=",".join(f"k{i}=v" for i in range(33))),
        "tracestate.members", False, False,
    ),
    Case("malformed tracestate", d(tracestate="UPPER=x"), "tracestate.format", False, False),
    Case("non-utf8 tracestate", d(tracestate=b"a=\xff"), "tracestate.encoding", False, False),
    Case("garbage send time", d(x_hoptrace_sent_ns="yesterday"), "sent_time.format", False, False),
    Case("bytes send time too long", d(x_hoptrace_sent_ns=b"9" * 40), "sent_time.size", False, False),
]


@pytest.mark.parametrize("mode", ["sdk", "no_sdk", "propagation_only"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_counted_and_context_stays_valid(
    case: Case, mode: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    request.getfixturevalue("spans" if mode == "sdk" else "no_sdk")
    if mode == "propagation_only":
        hoptrace.configure(propagation_only=True)
    ran = []
    with caplog.at_level("WARNING", logger="hoptrace"):
        with hoptrace.consume_scope(case.carrier, "orders", "rabbitmq") as scope:
            ran.append(1)
            trace_id = hoptrace.current_trace_id()
            tx = hoptrace.current_transaction_id()
    assert ran == [1]
    counts = hoptrace.diagnostics()
    assert counts.get(f"rejected.{case.reason}", 0) >= 1, counts
    assert case.reason in scope.incoming.rejected
    assert trace_id is not None and HEX32.fullmatch(trace_id)
    assert (trace_id != TRACE) is case.fresh_trace
    assert tx is not None and re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", tx)
    assert (tx != TX) is case.fresh_tx
    assert any(case.reason.split(".")[0] in r.getMessage() for r in caplog.records)
    assert not any("\r" in r.getMessage() or "\n" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_extract_never_raises_and_keeps_only_valid_parts(case: Case) -> None:
    ctx = hoptrace.extract(case.carrier)
    tx = hoptrace.current_transaction_id(ctx)
    assert tx in (None, TX)
    assert (tx is None) is case.fresh_tx
    assert (hoptrace.current_trace_id(ctx) == TRACE) is not case.fresh_trace


def test_rejection_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hoptrace"):
        for _ in range(50):
            hoptrace.extract({"traceparent": "garbage"})
    assert hoptrace.diagnostics()["rejected.traceparent.format"] == 50
    assert len([r for r in caplog.records if "traceparent" in r.getMessage()]) == 1


def test_baggage_allowlist_drops_other_keys_but_keeps_the_mirror() -> None:
    hoptrace.configure(baggage_allowlist=["tenant"])
    ctx = hoptrace.extract(
        {"baggage": "tenant=acme,secret=s3cr3t,transaction.id=tx-9", "traceparent": TP}
    )
    from opentelemetry import baggage

    assert dict(baggage.get_all(ctx)) == {"tenant": "acme", "transaction.id": "tx-9"}
    assert hoptrace.current_transaction_id(ctx) == "tx-9"
    assert hoptrace.diagnostics()["baggage.filtered"] == 1
