"""The one-call C open of a propagation-only consume scope opens what the Python steps open.

``consume_scope._open_unrecorded`` hands its common case (a trusted sender's full context,
parent mode, metrics off, no current span) to ``_speedups.open_unrecorded``, which reads the
carrier, makes the span, the hop and the handler's Context, attaches it and gives back the
scope's fields. These tests open
the same scopes with it (``hop._open_c``) and without it (None: the Python steps) and compare
everything the open leaves: the Context's keys and values (span type and span context, hop,
transaction ID, baggage), the scope's fields, the warnings, the token's restore; on the
carriers of test_consume_fast_path.py, fuzzed hostile ones, under every ambient context and
setting; then held, nested and cross-thread releases, and a 400,000-call leak check.
"""

from __future__ import annotations

import gc
import itertools
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span
from test_consume_fast_path import (
    AMBIENTS,
    CARRIERS,
    NOW_NS,
    SETTINGS,
    TP_SAMPLED,
    TX,
    _ambient,
    _fuzzed,
    _pairs,
    seeded_consume,
)

import hoptrace
from hoptrace.core import hop, propagation
from hoptrace.core.context import attach, detach, get_current
from hoptrace.core.settings import get_settings

C_OPEN = hop._open_c
needs_c = pytest.mark.skipif(C_OPEN is None, reason="the C module is not in use")

FULL = [
    _pairs(traceparent=TP_SAMPLED, x_transaction_id=TX, baggage=f"transaction.id={TX}"),
    _pairs(traceparent=TP_SAMPLED, x_transaction_id=TX, baggage=f"transaction.id={TX}",
           x_hoptrace_sent_ns=str(NOW_NS - 2_500_000)),
    _pairs(traceparent=TP_SAMPLED, x_transaction_id=TX, tracestate="k=v,a=b",
           baggage=f"transaction.id={TX},hoptrace.origin_ms=17"),
    {"traceparent": TP_SAMPLED, "x-transaction-id": TX, "baggage": f"transaction.id={TX}"},
    (("traceparent", TP_SAMPLED.encode()), ("baggage", f"transaction.id={TX}".encode())),
    _pairs(traceparent=TP_SAMPLED, baggage=f"transaction.id={TX}",
           x_hoptrace_sent_ns=str(NOW_NS)),
    _pairs(traceparent=TP_SAMPLED, baggage=f"transaction.id={TX}",
           x_hoptrace_sent_ns=str(NOW_NS + 1)),  # skew: Python's
]


def _near_full(count: int) -> Iterator[Any]:
    """Full carriers with one thing wrong, or nothing: a value cut, swapped, doubled, of
    another type or case; headers reordered."""
    rng = random.Random(4)
    odd: list[Any] = ["", "x", TX[:31], TX + "0", TX.upper(), "transaction.id=", 5, None,
                      b"\xff", f"transaction.id={'d' * 32}", TP_SAMPLED[:-1], "-1", "1e9",
                      str(NOW_NS - 1), f"transaction.id={TX},transaction.id={TX}"]
    for _ in range(count):
        pairs: list[Any] = list(rng.choice(FULL[:3]))
        rng.shuffle(pairs)
        roll = rng.random()
        if roll < 0.3:
            i = rng.randrange(len(pairs))
            pairs[i] = (pairs[i][0], rng.choice(odd))
        elif roll < 0.4:
            pairs.append(rng.choice(pairs))
        elif roll < 0.5:
            i = rng.randrange(len(pairs))
            pairs[i] = (pairs[i][0].upper(), pairs[i][1])
        elif roll < 0.6:
            pairs = [(k, v.decode()) for k, v in pairs]
        yield pairs if rng.random() < 0.7 else dict(pairs)


def _carriers() -> Iterator[Any]:
    yield from FULL
    yield from CARRIERS
    yield from _fuzzed(100)
    yield from _near_full(100)


def _norm(value: object) -> object:
    """A context value by type and contents (a span: its type, span context, attributes)."""
    if isinstance(value, Span):
        return ("span", type(value), value.get_span_context(), vars(value))
    if isinstance(value, tuple):
        return (type(value), tuple(value))
    if isinstance(value, dict):
        return (type(value), list(value.items()))
    return (type(value), value)


def _snapshot(make: Callable[[], hop.consume_scope], entry: Any, sent_ns: int | None,
              monkeypatch: pytest.MonkeyPatch, used: list[Any]) -> dict[str, Any]:
    counter = itertools.count(1)
    seeded_consume(counter, monkeypatch)

    def spy(*args: Any) -> Any:
        result = entry(*args)
        used.append(result is not None and len(result) == 6)
        return result

    monkeypatch.setattr(hop, "_open_c", spy if entry is not None else None)
    hoptrace.reset_diagnostics()
    before = get_current()
    scope = make()
    scope._sent_ns = sent_ns
    scope.open()
    ctx = get_current()
    token: Any = scope._token
    opened = {
        "context type": type(ctx),
        "context": [(key, _norm(value)) for key, value in ctx.items()],
        "hop span is the span": ctx.get(hop.HOP_SPAN_KEY) is ctx.get(hoptrace.core.context.SPAN_KEY),
        "attached": scope._attached is ctx,
        "token": (type(token), getattr(token, "var", None),
                  getattr(token, "old_value", None) is before) if token is not None else None,
        "incoming": vars(scope.incoming) if scope.incoming is not None else None,
        "transaction": scope.transaction_id,
        "queue wait": scope.queue_wait_ms,
        "span": scope.span,
        "active": scope.span_context,
        "metrics record": scope.metrics_record,
        "hop": (type(hoptrace.current_hop()), hoptrace.current_hop()),
        "diagnostics": hoptrace.diagnostics(),
    }
    scope.close()
    opened["restored"] = get_current() is before
    opened["after close"] = hoptrace.diagnostics()
    return opened


def _compare(make: Callable[[], hop.consume_scope], sent_ns: int | None,
             monkeypatch: pytest.MonkeyPatch, used: list[Any]) -> None:
    python = _snapshot(make, None, sent_ns, monkeypatch, [])
    c = _snapshot(make, C_OPEN, sent_ns, monkeypatch, used)
    assert c == python


@needs_c
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
@pytest.mark.parametrize("ambient", AMBIENTS)
def test_c_opens_what_python_opens(
    settings: dict[str, Any], ambient: str, no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=True, **settings)
    used: list[bool] = []
    for carrier in _carriers():
        for sent_ns in (None, NOW_NS - 7_000_000, NOW_NS + 3, -5, 2**70):
            with _ambient(ambient):
                _compare(lambda c=carrier: hop.consume_scope(  # type: ignore[misc]
                    c, "orders", "kafka", message_id="orders-0@1"), sent_ns, monkeypatch, used)
    # The C module opened the scopes it covers (and only under the settings it covers).
    covered = settings["trust_incoming"] and settings["link_mode"] == "parent" and (
        ambient in ("none", "baggage only"))
    assert (sum(used) > 100) if covered else not any(used), sum(used)


@needs_c
def test_a_kafka_record_scope_and_an_amqp_delivery_open_the_same(
    no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hoptrace._amqp import DeliveryScope
    from hoptrace._kafka import RecordScope

    hoptrace.configure(propagation_only=True)
    used: list[bool] = []
    for carrier in [*FULL, *CARRIERS]:
        _compare(lambda c=carrier: RecordScope(  # type: ignore[misc]
            "orders", 3, 17, b"key", c, 1_700_000_000_000, "group"), None, monkeypatch, used)
        _compare(lambda c=carrier: DeliveryScope(  # type: ignore[misc]
            c, "orders", "rabbitmq", "m-1", None, NOW_NS - 10, None, None),
            NOW_NS - 10, monkeypatch, used)
    assert sum(used) >= 2 * len(FULL) - 2


def _hop_id() -> str | None:
    found = hoptrace.current_hop()
    return found.message_id if found is not None else None


def _open_full(message_id: str = "m") -> hop.consume_scope:
    return hop.consume_scope(FULL[0], "orders", "kafka", message_id=message_id).open()


@needs_c
@pytest.mark.parametrize("entry", [C_OPEN, None], ids=["c", "python"])
def test_held_nested_and_foreign_thread_releases_behave_alike(
    entry: Any, no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=True)
    monkeypatch.setattr(hop, "_open_c", entry)
    base = get_current()
    # nested: the inner one restores the outer's context, the outer the base
    outer = _open_full("outer")
    inner = _open_full("inner")
    assert _hop_id() == "inner"
    inner.close()
    assert _hop_id() == "outer"
    outer.close()
    assert get_current() is base
    # held: a scope left open under a later one restores nothing stale
    hoptrace.reset_diagnostics()
    held = _open_full("held")
    held_ctx = held._attached
    token = attach(Context({"other": 1}))
    held.close()  # not current any more: counted, left
    assert hoptrace.diagnostics().get("scope.left_already") == 1
    detach(token)
    assert get_current() is held_ctx
    attach(base)
    # released from another thread: nothing restored there
    hoptrace.reset_diagnostics()
    scope = _open_full("threaded")
    errors: list[BaseException] = []

    def release() -> None:
        try:
            scope._release(nested=True)
        except BaseException as exc:  # pragma: no cover - the test fails below
            errors.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    thread.join()
    assert not errors
    assert hoptrace.diagnostics().get("scope.closed_elsewhere") == 1
    assert _hop_id() == "threaded"  # still current here
    scope.close()  # its token went: close restores nothing more
    attach(base)


@needs_c
def test_the_c_open_leaks_nothing(no_sdk: None, monkeypatch: pytest.MonkeyPatch) -> None:
    hoptrace.configure(propagation_only=True)
    carriers = [FULL[0], FULL[1], FULL[3], FULL[6], CARRIERS[9]]
    used: list[bool] = []

    def rounds(count: int) -> None:
        for _ in range(count):
            for carrier in carriers[:4]:
                hop.consume_scope(carrier, "orders", "kafka", message_id="m").open().close()

    def once() -> None:
        for carrier in carriers:
            result = C_OPEN(carrier, propagation._names.spec,
                            get_settings().baggage_key, NOW_NS, NOW_NS - 5, "kafka",
                            "orders", "m")
            opened = result is not None and len(result) == 6
            used.append(opened)
            if opened:
                detach(result[4])

    once()
    assert used[:3] == [True, True, True]
    watched = [*carriers, hop.HopInfo, NonRecordingSpan, Context, get_current()]
    rounds(1000)
    gc.collect()
    refs = [sys.getrefcount(x) for x in watched]
    blocks = sys.getallocatedblocks()
    rounds(100_000)  # 400,000 opens
    gc.collect()
    assert [sys.getrefcount(x) for x in watched] == refs
    assert sys.getallocatedblocks() - blocks < 200  # one block an open leaked: 400,000


@needs_c
def test_bad_arguments_raise_a_clear_error() -> None:
    with pytest.raises(TypeError, match="takes a carrier"):
        C_OPEN([], ())
    assert propagation._speedups is not None
    with pytest.raises(TypeError, match="configure_consume"):
        propagation._speedups.configure_consume(None, None, None, None, ())


def test_the_entry_is_c_unless_pure_python_is_asked() -> None:
    import os

    pure = os.environ.get("HOPTRACE_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on")
    if pure or propagation._speedups is None:
        assert hop._open_c is None
    else:
        assert hop._open_c is not None


def test_a_stale_c_module_without_the_entry_leaves_the_python_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Stale:  # a module built before open_unrecorded
        read_incoming = getattr(propagation._speedups, "read_incoming", None)

    monkeypatch.setattr(propagation, "_speedups", Stale())
    assert hop._consume_entry() is None
    monkeypatch.setattr(propagation, "_speedups", None)
    assert hop._consume_entry() is None
