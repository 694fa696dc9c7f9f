"""Scopes restore the context they found, whatever the handler did; spans always end.

A handler that attaches a context and never detaches it must not poison its thread: the next
message without headers would otherwise become a child of the previous message's trace.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import StatusCode

import hoptrace


def publish() -> dict[str, str]:
    with hoptrace.transaction("edge"):
        return hoptrace.inject({})


def leak_a_context() -> None:
    """What a careless handler does: attach a context built on the current one, never detach."""
    otel_context.attach(baggage.set_baggage("leaked", "yes"))


def leak_an_unrelated_context() -> None:
    otel_context.attach(otel_context.Context())


@pytest.mark.parametrize("leak", [leak_a_context, leak_an_unrelated_context])
def test_with_scope_restores_the_context_it_found(spans: Any, leak: Any) -> None:
    before = otel_context.get_current()
    with hoptrace.consume_scope(publish(), "orders", "rabbitmq"):
        leak()
    assert otel_context.get_current() is before
    assert hoptrace.current_transaction_id() is None
    # the next message without headers starts its own trace
    with hoptrace.consume_scope({}, "orders", "rabbitmq"):
        pass
    first, second = spans.named("process orders")
    assert second.parent is None and second.context.trace_id != first.context.trace_id


def test_closed_scope_restores_when_a_leak_sits_on_top_of_it(spans: Any) -> None:
    """An iterator client's scope, closed by a call: a leak built on its context goes too."""
    before = otel_context.get_current()
    scope = hoptrace.consume_scope(publish(), "orders", "kafka").open()
    leak_a_context()
    scope.close()
    assert otel_context.get_current() is before
    assert baggage.get_baggage("leaked") is None


def test_closed_scope_never_brings_back_a_context_already_left(spans: Any) -> None:
    """The loop's own span per iteration restored the context before the scope: keep it."""
    tracer = trace.get_tracer("test")
    pending = None
    for i in range(3):
        with tracer.start_as_current_span(f"iteration-{i}"):
            if pending is not None:
                pending.close()
            pending = hoptrace.consume_scope(publish(), "orders", "kafka").open()
    assert pending is not None
    pending.close()
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_async_with_scope_restores_in_its_task(spans: Any) -> None:
    async def main() -> list[Any]:
        seen = []
        for headers in (publish(), {}, publish(), {}):
            async with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
                leak_a_context()
            seen.append((hoptrace.current_transaction_id(), hoptrace.current_trace_id()))
        return seen

    assert asyncio.run(main()) == [(None, None)] * 4


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_span_ends_when_the_exception_cannot_be_printed(spans: Any) -> None:
    with pytest.raises(Unprintable), hoptrace.consume_scope(publish(), "orders", "rabbitmq"):
        raise Unprintable()
    process = spans.one("process orders")
    assert process.end_time is not None
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "Unprintable"


def test_transaction_span_ends_when_the_exception_cannot_be_printed(spans: Any) -> None:
    with pytest.raises(Unprintable), hoptrace.transaction("edge"):
        raise Unprintable()
    edge = spans.one("edge")
    assert edge.end_time is not None and edge.status.status_code is StatusCode.ERROR


def test_a_transaction_object_used_twice_is_two_transactions(spans: Any) -> None:
    tx = hoptrace.transaction("job")
    with tx:
        first = hoptrace.current_transaction_id()
    with tx:
        second = hoptrace.current_transaction_id()
    assert first and second and first != second
    assert tx.transaction_id == second
    assert hoptrace.current_transaction_id() is None
    a, b = spans.named("job")
    assert a.context.trace_id != b.context.trace_id


def test_a_transaction_with_a_fixed_id_keeps_it_on_every_entry() -> None:
    tx = hoptrace.transaction("job", "order-7")
    for _ in range(2):
        with tx:
            assert hoptrace.current_transaction_id() == "order-7"


def test_reentering_an_open_transaction_is_a_clear_error() -> None:
    before = otel_context.get_current()
    tx = hoptrace.transaction("job")
    with tx:
        inside = hoptrace.current_transaction_id()
        with pytest.raises(RuntimeError, match="already open"), tx:
            pass
        assert hoptrace.current_transaction_id() == inside  # the open one is untouched
    assert otel_context.get_current() is before
