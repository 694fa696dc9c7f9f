"""The propagation-only consume path reads the carrier itself and keeps what read() keeps.

``consume_scope._open_unrecorded`` calls the C reader directly (``read()``'s fast path,
inline) and keeps its raw result, building :attr:`consume_scope.incoming` from it only
when asked. These tests compare that with ``read()`` on many carriers, hostile ones
included: the same :class:`Incoming`, the same context in the handler, the same warnings;
and check the inline read steps aside for a configured non-W3C propagator and for a
``NonRecordingSpan`` whose constructor does more than store the span context.
(test_consume_fast_path.py compares the whole fast path with the general one.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators import b3
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_consume_fast_path import CARRIERS, _fuzzed

import hoptrace
from hoptrace.core import hop, propagation
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY, get_current
from hoptrace.core.settings import get_settings

TX = "c" * 32
TP = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def _carriers() -> Iterator[Any]:
    """Header lists and dicts, valid and hostile, as a consumer gets them."""
    yield [("traceparent", TP.encode()), ("x-transaction-id", TX.encode()),
           ("baggage", f"transaction.id={TX},tenant=acme".encode()),
           ("x-hoptrace-sent-ns", b"1700000000000000000")]
    yield {"traceparent": TP, "baggage": f"transaction.id={TX}", "tracestate": "k=v"}
    yield from CARRIERS
    yield from _fuzzed(150)


def _open(carrier: Any) -> tuple[hop.consume_scope, dict[str, Any], object]:
    """Open a scope on ``carrier``; return it, what its handler would see, and what it kept
    before anyone asked for :attr:`incoming`."""
    hoptrace.reset_diagnostics()
    scope = hop.consume_scope(carrier, "orders", "kafka", message_id="orders-0@1")
    scope.open()
    kept = scope._incoming
    ctx = get_current()
    seen = {
        "trace": trace.get_current_span().get_span_context(),
        "transaction": ctx.get(TRANSACTION_KEY),
        "baggage": ctx.get(BAGGAGE_KEY),
        "hop": hoptrace.current_hop(),
        "span type": type(ctx.get(SPAN_KEY)).__name__,
        "incoming": vars(scope.incoming) if scope.incoming is not None else None,
        "diagnostics": hoptrace.diagnostics(),
    }
    scope.close()
    return scope, seen, kept


@pytest.fixture(autouse=True)
def _propagation_only(no_sdk: None) -> Iterator[None]:
    hoptrace.configure(propagation_only=True)
    yield


def test_the_incoming_it_keeps_is_the_one_read_returns() -> None:
    settings = get_settings()
    inline = 0
    for carrier in _carriers():
        before = get_current()
        scope, seen, kept = _open(carrier)
        assert get_current() is before
        expected = propagation.read(carrier, settings)
        assert seen["incoming"] == vars(expected), carrier
        assert scope.incoming is scope.incoming  # built once
        if expected.transaction_id is not None:  # a trusted sender's ID is the handler's
            assert seen["transaction"] == expected.transaction_id
        if expected.span_context is not None:
            assert seen["trace"] == expected.span_context
        if type(kept) is tuple:
            inline += 1
            assert not expected.rejected  # only an all-valid carrier is kept raw
    # The inline read ran (a build with the C reader; the pure-Python one reads through read).
    assert inline > 20 or propagation._read_incoming is None


def test_hostile_headers_warn_as_read_does() -> None:
    carrier = [("traceparent", b"garbage"), ("x-transaction-id", b"bad id!")]
    _, seen, kept = _open(carrier)
    assert not isinstance(kept, tuple)
    assert seen["incoming"]["rejected"]
    assert seen["diagnostics"]  # counted, as read() counts it
    assert seen["transaction"] not in (None, "bad id!")
    assert seen["trace"].is_valid and seen["trace"].trace_id != int("a" * 32, 16)


def test_a_configured_propagator_is_gone_through() -> None:
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(b3.B3MultiFormat())
    try:
        carrier = {"x-b3-traceid": "1" * 32, "x-b3-spanid": "2" * 16, "x-b3-sampled": "1",
                   "traceparent": TP}
        _, seen, kept = _open(carrier)
        assert not isinstance(kept, tuple)
        assert seen["trace"].trace_id == int("1" * 32, 16)  # B3's, not the traceparent's
    finally:
        propagate.set_global_textmap(saved)
    _, seen, kept = _open({"traceparent": TP})  # the W3C set again: the inline read
    assert seen["trace"].trace_id == int("a" * 32, 16)
    assert isinstance(kept, tuple) or propagation._read_incoming is None


def test_the_span_is_made_by_the_class_when_its_constructor_does_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hop._NRS_INIT is NonRecordingSpan.__init__
    made: list[SpanContext] = []
    plain = NonRecordingSpan.__init__

    def init(self: NonRecordingSpan, context: SpanContext) -> None:
        made.append(context)
        plain(self, context)

    monkeypatch.setattr(NonRecordingSpan, "__init__", init)
    _, seen, _ = _open({"traceparent": TP})
    assert made == [seen["trace"]]
    assert seen["span type"] == "NonRecordingSpan"


def test_an_ambient_context_is_kept_under_the_message_s() -> None:
    user = NonRecordingSpan(SpanContext(0x1234, 0x5678, False, TraceFlags(1)))
    token = hoptrace.core.context.attach(Context({SPAN_KEY: user, "other": 1}))
    try:
        scope = hop.consume_scope({"traceparent": TP, "baggage": f"transaction.id={TX}"},
                                  "orders", "kafka")
        with scope:
            ctx = get_current()
            assert ctx.get("other") == 1
            assert ctx.get(TRANSACTION_KEY) == TX
            # an ambient span stays the parent: the producer's context is not the handler's
            assert trace.get_current_span() is user
        assert get_current().get(SPAN_KEY) is user
    finally:
        hoptrace.core.context.detach(token)
