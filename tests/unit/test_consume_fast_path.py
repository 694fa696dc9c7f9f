"""consume_scope's propagation-only fast path gives exactly what its general path gives.

When no span is made (``propagation_only=True``, or no SDK), ``consume_scope._open`` takes
``_open_unrecorded``, which skips what only a span needs. Each case here opens the same
scope both ways, from the same ambient context, with the random parts (new transaction IDs,
new traces, the clock) made deterministic, and compares everything the open leaves behind:
the attached Context (span, transaction, baggage, hop, hop span), the scope's fields, the
metrics call, the diagnostics counts, and the context after close.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, Span, SpanContext, TraceFlags

import hoptrace
from hoptrace import _kafka
from hoptrace.core import hop, metrics
from hoptrace.core.context import (
    BAGGAGE_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    attach,
    detach,
    get_current,
)

_REAL_CONSUMED = metrics.consumed
NOW_NS = 1_700_000_000_000_000_000
TX = "c" * 32
TP_SAMPLED = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
TP_UNSAMPLED = "00-" + "d" * 32 + "-" + "e" * 16 + "-00"


def _pairs(**headers: str) -> list[tuple[str, bytes]]:
    return [(name.replace("_", "-"), value.encode()) for name, value in headers.items()]


CARRIERS: list[Any] = [
    None, [], {}, (), "not headers", 42, object(), [1, 2], [("traceparent", 5)],
    _pairs(traceparent=TP_SAMPLED, x_transaction_id=TX, baggage=f"transaction.id={TX}"),
    _pairs(traceparent=TP_UNSAMPLED, baggage=f"transaction.id={TX},tenant=acme"),
    _pairs(traceparent=TP_SAMPLED),
    _pairs(x_transaction_id=TX),
    _pairs(baggage="tenant=acme"),
    _pairs(traceparent="00-" + "0" * 32 + "-" + "b" * 16 + "-01", x_transaction_id="bad id!"),
    _pairs(traceparent="garbage", baggage="%%%=,,=", x_transaction_id="x" * 300),
    _pairs(traceparent=TP_SAMPLED, x_hoptrace_sent_ns=str(NOW_NS - 5_000_000)),
    _pairs(traceparent=TP_SAMPLED, x_hoptrace_sent_ns=str(NOW_NS + 5_000_000)),  # skew
    _pairs(traceparent=TP_SAMPLED, x_hoptrace_sent_ns="soon"),
    _pairs(traceparent=TP_SAMPLED, tracestate="k=v", baggage="hoptrace.origin=12," * 3),
    [("traceparent", TP_SAMPLED), ("x-transaction-id", TX)],  # str values
    (("traceparent", TP_SAMPLED.encode()),),
    {"traceparent": TP_SAMPLED, "x-transaction-id": TX, "baggage": f"transaction.id={TX}"},
    {"traceparent": TP_UNSAMPLED, "baggage": "tenant=acme"},
    {"traceparent": TP_SAMPLED, "x-hoptrace-sent-ns": str(NOW_NS - 1)},
    {"traceparent": b"\xff\xfe", "baggage": 3},
]


def _fuzzed(count: int) -> Iterator[Any]:
    """Hostile header lists: hoptrace's names with random, truncated or foreign values."""
    rng = random.Random(15)
    names = ["traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
             "TraceParent", "other"]
    values: list[Any] = [TP_SAMPLED, TP_UNSAMPLED, TX, f"transaction.id={TX}", "", "=",
                         str(NOW_NS), "-1", None, 7, b"\x00", TP_SAMPLED[:20], "a=b;c"]
    for _ in range(count):
        pairs = []
        for _ in range(rng.randrange(0, 5)):
            value = rng.choice(values)
            if isinstance(value, str) and rng.random() < 0.7:
                value = value.encode()
            pairs.append((rng.choice(names), value))
        yield pairs if rng.random() < 0.8 else dict(pairs)


class _NoContextSpan(NonRecordingSpan):
    """A hostile ambient span whose span context is None."""

    def get_span_context(self) -> Any:
        return None


@contextmanager
def _ambient(kind: str) -> Iterator[None]:
    """Make an ambient context of ``kind`` current for the block."""
    user = NonRecordingSpan(SpanContext(0x1234, 0x5678, False, TraceFlags(1)))
    table: dict[str, dict[str, object]] = {
        "none": {},
        "user span": {SPAN_KEY: user, TRANSACTION_KEY: "f" * 32,
                      BAGGAGE_KEY: {"tenant": "acme", "transaction.id": "f" * 32}},
        "baggage only": {BAGGAGE_KEY: {"tenant": "acme"}},
        "invalid span": {SPAN_KEY: INVALID_SPAN},
        "no context span": {SPAN_KEY: _NoContextSpan(INVALID_SPAN.get_span_context())},
        "hop scope": {},
    }
    values = table[kind]
    token = attach(Context(values))
    outer = None
    try:
        if kind == "hop scope":  # another message's scope still open here
            outer = hop.consume_scope(
                _pairs(traceparent=TP_UNSAMPLED, x_transaction_id="9" * 32), "other", "kafka",
            ).open()
        yield
    finally:
        if outer is not None:
            outer.close()
        detach(token)


def _norm(value: object, ambient: Context) -> object:
    if isinstance(value, Span):
        same = [k for k, v in ambient.items() if v is value]
        return ("span", type(value).__name__, value.get_span_context(), same)
    return value


def seeded_consume(counter: Iterator[int], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Draw hop's IDs from ``counter``, freeze its clock, and record every
    ``metrics.consumed`` call that records (its attributes resolved) into the list returned.

    (A call while metrics are off records nothing, and hop may skip it: not listed.)"""
    monkeypatch.setattr(hop, "generate_transaction_id", lambda: f"{next(counter):032x}")
    monkeypatch.setattr(hop, "mint_span_context", lambda: SpanContext(
        next(counter), next(counter), False, TraceFlags(0)))
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)  # hop reads time.time_ns
    calls: list[Any] = []

    def consumed(*args: Any) -> Any:
        extra = args[3]
        record = _REAL_CONSUMED(*args)
        if record is not None:
            calls.append((*args[:3], extra() if callable(extra) else extra, *args[4:]))
        return record

    monkeypatch.setattr(metrics, "consumed", consumed)
    return calls


def _snapshot(
    make: Callable[[], hop.consume_scope], fast: bool, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Open ``make()`` through one path; return everything the open and close left."""
    counter = itertools.count(1)
    monkeypatch.setattr(hop.consume_scope, "_unrecorded_fast", fast)
    calls = seeded_consume(counter, monkeypatch)
    hoptrace.reset_diagnostics()
    before = get_current()
    scope = make()
    scope.open()
    ctx = get_current()
    opened = {
        "context": {key: _norm(value, before) for key, value in ctx.items()},
        "hop span is the span": ctx.get(hop.HOP_SPAN_KEY) is ctx.get(SPAN_KEY),
        "attached": scope._attached is ctx,
        "incoming": vars(scope.incoming) if scope.incoming is not None else None,
        "transaction": scope.transaction_id,
        "queue wait": scope.queue_wait_ms,
        "span": scope.span,
        "active": scope.span_context,
        "active is the span's": scope.span_context
        is (cast(Span, ctx[SPAN_KEY]).get_span_context() if SPAN_KEY in ctx else None),
        "metrics": calls,
        "metrics record": scope.metrics_record is not None,
        "hop": hoptrace.current_hop(),
    }
    scope.close()
    opened["restored"] = get_current() is before
    opened["diagnostics"] = hoptrace.diagnostics()
    return opened


SETTINGS = [
    {"trust_incoming": trust, "link_mode": mode, "baggage_mirror": mirror}
    for trust, mode, mirror in itertools.product((True, False), ("parent", "link"), (True, False))
]
AMBIENTS = ["none", "user span", "baggage only", "invalid span", "no context span", "hop scope"]


def _compare(
    make: Callable[[], hop.consume_scope], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    general = _snapshot(make, False, monkeypatch)
    fast = _snapshot(make, True, monkeypatch)
    assert fast == general
    return fast


@pytest.fixture(params=["propagation_only", "no SDK"])
def unrecorded(request: pytest.FixtureRequest) -> str:
    """Both ways a consume scope makes no span: propagation-only with an SDK, and no SDK."""
    if request.param == "propagation_only":
        request.getfixturevalue("spans")
    else:
        request.getfixturevalue("no_sdk")
    return str(request.param)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_fast_path_opens_what_the_general_path_opens(
    unrecorded: str, settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=unrecorded == "propagation_only", **settings)
    compared = 0
    for carrier, ambient, sent_ns in itertools.product(
        [*CARRIERS, *_fuzzed(60)], AMBIENTS, (None, NOW_NS - 2_000_000, NOW_NS + 1)
    ):
        with _ambient(ambient):
            result = _compare(functools.partial(
                hop.consume_scope, carrier, "orders", "kafka", message_id="orders-0@42",
                sent_ns=sent_ns, attributes={"messaging.kafka.offset": 42},
            ), monkeypatch)
        assert result["restored"]
        compared += 1
    assert compared == (len(CARRIERS) + 60) * len(AMBIENTS) * 3


def test_a_kafka_record_scope_opens_the_same_both_ways(
    unrecorded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=unrecorded == "propagation_only")
    for carrier in CARRIERS[9:14]:
        result = _compare(functools.partial(
            _kafka.record_scope, "orders", 3, 42, b"k", carrier, 1_700_000_000_000, "g",
        ), monkeypatch)
        assert result["hop"] == hop.HopInfo("kafka", "orders", "orders-3@42")


def test_metrics_on_see_the_same_delivery_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        hoptrace.configure(propagation_only=True)
        for carrier in CARRIERS[9:20]:
            result = _compare(functools.partial(
                _kafka.record_scope, "orders", 3, 42, b"k", carrier, NOW_NS // 10**6, "g",
            ), monkeypatch)
            assert result["metrics record"]
            assert result["metrics"][0][3]["messaging.consumer.group.name"] == "g"
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def test_a_record_scope_sets_what_consume_scope_s_constructor_sets() -> None:
    """RecordScope sets consume_scope's fields itself (one frame): none may be missed."""
    fast = _kafka.RecordScope("orders", 3, 42, b"k", [("a", b"b")], 1_700_000_000_000, "g")
    general = hop.consume_scope(
        [("a", b"b")], "orders", _kafka.SYSTEM, message_id="orders-3@42",
        attributes=fast._attributes, sent_ns=1_700_000_000_000 * 1_000_000,
    )
    # consume_scope's fields; RecordScope's own hold the record's attributes' inputs.
    slots = [name for cls in hop.consume_scope.__mro__ for name in getattr(cls, "__slots__", ())]
    assert len(slots) > 15
    assert (fast._partition, fast._offset, fast._key, fast._group) == (3, 42, b"k", "g")
    for name in slots:
        unset = object()  # (a slot neither sets stays unset in both)
        assert getattr(fast, name, unset) == getattr(general, name, unset), name
    extra: Any = fast._attributes
    assert extra() == _kafka.record_attributes(3, 42, b"k", "g")
    assert _kafka.RecordScope("t", 0, 1, None, None, 0, None)._sent_ns is None
    assert _kafka.RecordScope("t", 0, 1, None, None, None, None)._sent_ns is None


def test_the_fast_path_is_the_one_taken_without_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hoptrace.configure(propagation_only=True)
    taken: list[bool] = []
    real = hop.consume_scope._open_unrecorded

    def spy(self: hop.consume_scope, settings: Any) -> None:
        taken.append(True)
        real(self, settings)

    monkeypatch.setattr(hop.consume_scope, "_open_unrecorded", spy)
    with hop.consume_scope(CARRIERS[9], "orders", "kafka"):
        assert trace.get_current_span().get_span_context().trace_id == 0xA * (16**32 - 1) // 15
    assert taken == [True]
