"""aiokafka's per-message wrappers against the general path they shortcut.

``send()`` skips the ``_traced_already`` call for empty headers and ``getone()`` reads the
claim and the group inline and calls the client without ``*partitions`` when there are none:
each must give what the general path gives (the same headers, the same context while the
client's send runs, the same result or exception, the same held scope) on many inputs,
hostile ones included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import attach, detach, get_current
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_kafka_send_wrappers import run  # (a coroutine that never suspends, loop-less)

import hoptrace
import hoptrace.aiokafka as hk
from hoptrace import _client, _kafka
from hoptrace.core import held, semconv

PARENT = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))


def general_send(original: Callable[..., Any]) -> Callable[..., Any]:
    """The send wrapper as it was: ``_traced_already`` asked for every send."""

    async def send(producer: Any, topic: str, value: Any = None, key: Any = None,
                   partition: Any = None, timestamp_ms: Any = None,
                   headers: Any = None) -> Any:
        token = hk._in_send.set(True)
        try:
            if hk._traced_already(headers):
                return await original(producer, topic, value, key, partition, timestamp_ms,
                                      headers)
            attached = _kafka.attached_send(headers, key, timestamp_ms is not None)
            if attached is not None:
                carrier, context = attached
                try:
                    return await original(producer, topic, value, key, partition,
                                          timestamp_ms, carrier)
                finally:
                    if context is not None:
                        context.close()
            scope = _kafka.open_send(topic, headers, key, timestamp_ms is not None, "t")
            if scope is None:
                return await original(producer, topic, value, key, partition, timestamp_ms,
                                      headers)
            try:
                future = await original(producer, topic, value, key, partition,
                                        timestamp_ms, scope.carrier)
            except BaseException as exc:
                scope.close(exc)
                raise
            return _kafka.await_ack(scope, future, hk._on_done, "t")
        finally:
            hk._in_send.reset(token)

    return send


class Falsy:
    """Headers of no type aiokafka takes, false when tested."""

    def __bool__(self) -> bool:
        return False


class Untestable:
    """Headers whose truth test raises."""

    def __bool__(self) -> bool:
        raise ValueError("no truth value")


class Pairs(list):  # type: ignore[type-arg]
    """A list subclass of header pairs."""


def header_inputs() -> list[Any]:
    """The headers a caller may pass, as a fresh object per call."""
    with hoptrace.produce_scope([], "orders", "kafka") as scope:
        own = list(scope.carrier)  # names a span that is not current at the send: traced
    return [
        None, [], (), {}, "", b"", 0, False, Falsy(), Untestable(), Pairs(),
        [("a", b"1")], (("a", b"1"),), Pairs([("a", b"1")]), "abc", 7, {"a": b"1"},
        [("traceparent", b"junk")], [("traceparent", 5)], [None], [()], own,
        [(semconv.TRACEPARENT, own[0][1])],
    ]


#: Header values read from the clock or minted at random (a placeholder is compared).
MINTED = (semconv.TRACEPARENT, "baggage", "x-hoptrace-sent-ns")


def normalised(headers: Any) -> Any:
    """Headers with the values read from the clock or minted at random as placeholders."""
    if isinstance(headers, dict):
        return {k: "<value>" if k in MINTED else v for k, v in headers.items()}
    if isinstance(headers, (Falsy, Untestable)):
        return type(headers)  # (objects of the test's, compared by type)
    if not isinstance(headers, list):
        return headers
    return [(item[0], "<value>") if isinstance(item, tuple) and len(item) == 2
            and item[0] in MINTED and isinstance(item[1], (bytes, str)) else item
            for item in headers]


def run_send(wrap: Callable[[Callable[..., Any]], Callable[..., Any]], headers: Any,
             ambient: bool, fails: bool) -> tuple[Any, ...]:
    """One send through ``wrap``: what the client's send saw, and the outcome."""
    seen: list[Any] = []
    future = object()  # a delivery future stand-in

    async def original(producer: Any, topic: str, value: Any, key: Any, partition: Any,
                       timestamp_ms: Any, sent: Any) -> Any:
        span = trace.get_current_span().get_span_context()
        tp = next((v for k, v in sent if k == semconv.TRACEPARENT), None) if isinstance(
            sent, list) and all(isinstance(i, tuple) and len(i) == 2 for i in sent) else None
        seen.append((
            normalised(sent), sent is headers, hk._in_send.get(),
            hoptrace.current_transaction_id() is not None,
            span.trace_id == PARENT.trace_id, span.span_id == PARENT.span_id,
            tp is not None and f"{span.span_id:016x}".encode() in tp,
        ))
        if fails:
            raise KeyError("broker gone")
        return future

    token = attach(trace.set_span_in_context(NonRecordingSpan(PARENT))) if ambient else None
    before = get_current()
    try:
        outcome: Any = ("result", run(wrap(original)(None, "orders", b"x",
                                                       headers=headers)) is future)
    except Exception as exc:
        outcome = ("raised", type(exc), str(exc))
    after = get_current()
    if token is not None:
        detach(token)
    return (tuple(seen), outcome, after is before, hk._in_send.get())


@pytest.mark.parametrize("ambient", [False, True])
@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("mode", ["propagation_only", "spans"])
def test_send_is_what_the_general_path_makes(
    ambient: bool, fails: bool, mode: str, request: pytest.FixtureRequest
) -> None:
    if mode == "propagation_only":
        hoptrace.configure(propagation_only=True)
    else:
        request.getfixturevalue("spans")
    for index in range(len(header_inputs())):
        fast = run_send(hk._wrap_send, header_inputs()[index], ambient, fails)
        general = run_send(general_send, header_inputs()[index], ambient, fails)
        assert fast == general, (index, header_inputs()[index])
        assert fast[2] and not fast[3]  # no context leaked, the flag reset


def test_the_send_comparison_sees_the_headers_and_the_flag() -> None:
    hoptrace.configure(propagation_only=True)
    seen, outcome, restored, _ = run_send(hk._wrap_send, None, True, False)
    headers, passed_on, in_send, has_tx, same_trace, _, names_current = seen[0]
    assert [k for k, _ in headers][:1] == [semconv.TRACEPARENT] and not passed_on
    assert in_send and has_tx and same_trace and names_current
    assert outcome == ("result", True) and restored


# ---------------------------------------------------------------- getone ---


class Consumer:
    """An AIOKafkaConsumer stand-in whose ``_group_id`` is whatever a test sets."""


class RaisingGroup:
    @property
    def _group_id(self) -> str:
        raise RuntimeError("group lookup failed")


class StrGroup(str):
    """A group name of a str subclass."""


def consumers() -> list[Any]:
    """Consumers with every kind of group, claimed ones, and one whose group raises."""
    out: list[Any] = []
    for group in ("grp", StrGroup("sub"), 5, None, b"g", "missing"):
        consumer = Consumer()
        if group != "missing":
            consumer._group_id = group  # type: ignore[attr-defined]
        out.append(consumer)
    claimed = Consumer()
    claimed._group_id = "grp"  # type: ignore[attr-defined]
    setattr(claimed, _client.CLAIM_ATTRIBUTE, "faststream")
    out += [claimed, RaisingGroup()]
    return out


def general_getone(original: Callable[..., Any]) -> Callable[..., Any]:
    """The getone wrapper as it was: the shared helpers, ``*partitions`` always."""

    async def getone(consumer: Any, *partitions: Any) -> Any:
        held.release(consumer)
        record = await original(consumer, *partitions)
        if _client.claimed(consumer):
            return record
        return _kafka.hold_record(consumer, record, _kafka.consumer_record_scope,
                                  hk._group(consumer))

    return getone


def a_record(tx: str) -> Any:
    from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

    with hoptrace.transaction(transaction_id=tx):
        headers = hoptrace.inject([])
    return ConsumerRecord("orders", 1, 7, 1_700_000_000_000, 0, None, b"v", None, 0, 0,
                          tuple(headers))


def run_getone(wrap: Callable[[Callable[..., Any]], Callable[..., Any]], consumer: Any,
               partitions: tuple[Any, ...], spans: Any) -> tuple[Any, ...]:
    """Two getone calls through ``wrap`` and a release: what each saw and left current."""
    pytest.importorskip("aiokafka")
    calls: list[Any] = []
    records = [a_record("a" * 32), a_record("b" * 32)]

    async def original(*args: Any) -> Any:
        calls.append(args[1:])
        return records[len(calls) - 1]

    getone = wrap(original)

    async def go() -> list[Any]:
        out: list[Any] = []
        for _ in range(2):
            try:
                got = await getone(consumer, *partitions)
                out.append(("record", got is records[len(calls) - 1]))
            except Exception as exc:
                out.append(("raised", type(exc), str(exc)))
            out.append(hoptrace.current_transaction_id())
        held.release(consumer)
        out.append(hoptrace.current_transaction_id())
        return out

    before = len(spans.all())
    seen = asyncio.run(go())
    processes = [(s.name, {k: v for k, v in (s.attributes or {}).items()
                           if k != "hoptrace.queue_wait_ms"},  # (read from the clock)
                  s.end_time is not None, s.parent is not None and any(
                      f"{s.parent.span_id:016x}".encode() in value
                      for r in records for key, value in r.headers if key == "traceparent"))
                 for s in spans.all()[before:]]
    return (calls, seen, processes)


def test_getone_is_what_the_general_path_makes(spans: Any) -> None:
    for partitions in ((), ("tp0",), ("tp0", "tp1")):
        for index in range(len(consumers())):
            fast = run_getone(hk._wrap_getone, consumers()[index], partitions, spans)
            general = run_getone(general_getone, consumers()[index], partitions, spans)
            assert fast == general, (partitions, index)


def test_the_getone_comparison_sees_the_group_and_the_held_scope(spans: Any) -> None:
    consumer = consumers()[1]  # a str subclass group
    calls, seen, processes = run_getone(hk._wrap_getone, consumer, ("tp0",), spans)
    assert calls == [("tp0",), ("tp0",)]
    assert seen == [("record", True), "a" * 32, ("record", True), "b" * 32, None]
    assert [p[1].get("messaging.consumer.group.name") for p in processes] == ["sub", "sub"]
    assert all(p[2] for p in processes)


def test_the_getone_comparison_sees_a_claim_and_a_failing_group(spans: Any) -> None:
    claimed, failing = consumers()[-2:]
    assert run_getone(hk._wrap_getone, claimed, (), spans)[1] == [
        ("record", True), None, ("record", True), None, None]
    seen = run_getone(hk._wrap_getone, failing, (), spans)[1]
    assert seen[0] == ("raised", RuntimeError, "group lookup failed")
