"""_kafka.send_headers against the general calls it shortcuts: the same headers, byte for byte.

The reference below is send_headers written with the general calls (current_transaction_id,
write_headers into a new list, random.randbytes for the minted IDs); the function under test
skips them where their answer is known. Both run from the same random state, so even the
IDs minted outside a transaction must match.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import test_confluent_kafka_unit as unit
from opentelemetry import propagate
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from hoptrace import _kafka
from hoptrace.core import propagation
from hoptrace.core.carriers import write_headers
from hoptrace.core.context import (
    BAGGAGE_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    current_transaction_id,
    generate_transaction_id,
    get_current,
)
from hoptrace.core.settings import get_settings

#: Both ways a send makes no span (propagation-only with an SDK, or no SDK): that fixture.
headers_only_mode = unit.headers_only_mode

CARRIED = "c" * 32
SENT = "x-hoptrace-sent-ns"


class Headers(Mapping[str, Any]):
    """A read-only mapping that is no dict."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def reference(headers: Any, timestamp_given: bool, span: Any) -> Any:
    """send_headers through the general calls (its behaviour before the shortcuts)."""
    carrier: Any = [] if headers is None else headers
    try:
        ctx = get_current()
        tx = ctx.get(TRANSACTION_KEY)
        if (tx is None and current_transaction_id(ctx) is None) or (
            tx is not None and not isinstance(tx, str)
        ):
            chosen = propagation.carried_transaction_id(headers) if headers else None
            if chosen is None and tx is not None:
                chosen = generate_transaction_id()
            if chosen is not None:
                ctx = Context({**ctx, TRANSACTION_KEY: chosen})
        if span is not None:
            ctx = Context({**ctx, SPAN_KEY: span})
        values = propagation.render(ctx, get_settings(), None, timestamp_given,
                                    headers is not None
                                    and propagation.holds_transaction_header(headers))
        return write_headers(carrier, values, copy=True)
    except Exception:
        return carrier


def _randbytes_getrandbits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the reference mint through random.randbytes (the module's draw replaced)."""
    monkeypatch.setattr(
        propagation, "_getrandbits", lambda bits: int.from_bytes(random.randbytes(bits // 8),
                                                                 "little"))


HEADERS: list[Any] = [
    None,
    [],
    [("k", b"v")],
    [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"), ("k", b"v")],
    [("x-transaction-id", CARRIED.encode())],
    [(b"x-transaction-id", CARRIED.encode()), ("baggage", b"a=1")],
    [("x-transaction-id", b"not an id!")],
    [("x-transaction-id", b"\xff\xfe")],
    [42, ("k",), None, ("k", b"v", b"extra")],
    (("k", b"v"), ("x-transaction-id", CARRIED.encode())),
    {},
    {"k": "v", "x-transaction-id": CARRIED},
    {"traceparent": "garbage", "baggage": "x=1"},
    Headers({"x-transaction-id": CARRIED, "k": "v"}),
    Headers({}),
]

TRACE = SpanContext(0x1234, 0x5678, is_remote=False)
DROPPED = NonRecordingSpan(TRACE)
#: The send spans ``send_headers`` is given (render writes each as the context's span): none,
#: a dropped one, a sampled one with trace state, and an invalid one.
SPANS = [
    None,
    DROPPED,
    NonRecordingSpan(SpanContext(0x9ABC, 0xDEF0, False, TraceFlags(1),
                                 TraceState([("vendor", "v1")]))),
    NonRecordingSpan(INVALID_SPAN_CONTEXT),
]


def contexts() -> list[tuple[str, dict[Any, Any]]]:
    return [
        ("none", {}),
        ("transaction", {TRANSACTION_KEY: "d" * 32, BAGGAGE_KEY: {"transaction.id": "d" * 32}}),
        ("transaction without baggage", {TRANSACTION_KEY: "e" * 32}),
        ("malformed transaction", {TRANSACTION_KEY: 123}),
        ("baggage from another instrumentation", {BAGGAGE_KEY: {"transaction.id": "f" * 32}}),
        ("baggage with a bad entry", {BAGGAGE_KEY: {"transaction.id": "bad id"}}),
        ("other baggage", {BAGGAGE_KEY: {"tenant": "a"}}),
        ("empty baggage", {BAGGAGE_KEY: {}}),
        ("an active span", {SPAN_KEY: NonRecordingSpan(SpanContext(0xABC, 0xDEF, False))}),
    ]


def copy_of(headers: Any) -> Any:
    if isinstance(headers, Headers):
        return Headers(dict(headers))
    if isinstance(headers, dict):
        return dict(headers)
    return list(headers) if isinstance(headers, list) else headers


def untimed(headers: Any) -> Any:
    """``headers`` with the send time (read from the clock at each call) as a placeholder."""
    def value(key: Any, raw: Any) -> Any:
        if key == SENT:
            assert (raw.decode() if isinstance(raw, bytes) else raw).isdigit()
            return "<time>"
        return raw

    if isinstance(headers, list):  # (malformed entries pass through as they are)
        return [(item[0], value(*item)) if type(item) is tuple and len(item) == 2 else item
                for item in headers]
    return {k: value(k, v) for k, v in headers.items()}


@pytest.fixture(params=["w3c", "b3"])
def textmap(request: pytest.FixtureRequest) -> Iterator[str]:
    """The propagator in force: the W3C set (render's own writer) or B3 (render goes
    through it)."""
    saved = propagate.get_global_textmap()
    if request.param == "b3":
        propagate.set_global_textmap(B3MultiFormat())
    try:
        yield request.param
    finally:
        propagate.set_global_textmap(saved)


@pytest.mark.usefixtures("textmap")
def test_send_headers_matches_the_general_calls(
    headers_only_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = 0
    for (label, values), headers, timestamp_given, span, seed in itertools.product(
        contexts(), HEADERS, (False, True), SPANS, (1, 2)
    ):
        token = attach(Context(values))
        try:
            random.seed(seed)
            fast = _kafka.send_headers(copy_of(headers), timestamp_given, span)
            with monkeypatch.context() as patch:
                _randbytes_getrandbits(patch)
                random.seed(seed)
                slow = reference(copy_of(headers), timestamp_given, span)
        finally:
            detach(token)
        assert type(fast) is type(slow), (label, headers)
        assert untimed(fast) == untimed(slow), (headers_only_mode, label, headers, timestamp_given, span)
        if headers is None:
            assert all(type(k) is str and type(v) is bytes for k, v in fast)
        cases += 1
    assert cases == len(contexts()) * len(HEADERS) * 4 * len(SPANS)


@pytest.mark.usefixtures("no_sdk")
@pytest.mark.parametrize("in_transaction", [False, True])
def test_minted_ids_are_random_randbytes_draw(in_transaction: bool) -> None:
    """Outside a trace, without an SDK, the IDs are one random.randbytes draw, as before."""
    values = {TRANSACTION_KEY: "d" * 32} if in_transaction else {}
    token = attach(Context(values))
    try:
        for seed in range(20):
            random.seed(seed)
            headers = dict(_kafka.send_headers({}, False))
            random.seed(seed)
            raw = random.randbytes(24 if in_transaction else 40)
            assert headers["traceparent"] == f"00-{raw[:16].hex()}-{raw[16:24].hex()}-00"
            tx = "d" * 32 if in_transaction else raw[24:].hex()
            assert headers["baggage"] == "transaction.id=" + tx
    finally:
        detach(token)
