"""transaction(): context manager, sync and async decorator; current_*() accessors."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from opentelemetry import trace

import hoptrace


def test_outside_everything_ids_are_none() -> None:
    assert hoptrace.current_transaction_id() is None
    assert hoptrace.current_trace_id() is None
    assert hoptrace.current_span_id() is None


def test_transaction_starts_a_root_span_and_an_id(spans: Any) -> None:
    with hoptrace.transaction("checkout") as tx:
        assert hoptrace.current_transaction_id() == tx.transaction_id
        trace_id = hoptrace.current_trace_id()
    root = spans.one("checkout")
    assert root.parent is None
    assert trace_id == f"{root.context.trace_id:032x}"
    assert re.fullmatch(r"[0-9a-f]{32}", tx.transaction_id or "")
    assert hoptrace.current_transaction_id() is None


def test_transaction_nests_under_an_active_span(spans: Any) -> None:
    with trace.get_tracer("t").start_as_current_span("http") as http, hoptrace.transaction("work"):
        pass
    assert spans.one("work").parent.span_id == http.get_span_context().span_id


def test_given_transaction_id_is_used_and_validated() -> None:
    with hoptrace.transaction(transaction_id="order-1"):
        assert hoptrace.current_transaction_id() == "order-1"
    with pytest.raises(ValueError, match="invalid"):
        hoptrace.transaction(transaction_id="bad\nid")
    with pytest.raises(ValueError, match="must be a str"):
        hoptrace.transaction(transaction_id=5)  # type: ignore[arg-type]


def test_without_sdk_a_valid_unsampled_trace_is_minted(no_sdk: None) -> None:
    with hoptrace.transaction():
        span_context = trace.get_current_span().get_span_context()
        assert span_context.is_valid and not span_context.trace_flags.sampled
        assert hoptrace.current_span_id() == f"{span_context.span_id:016x}"


def test_sync_decorator_gives_each_call_its_own_transaction(spans: Any) -> None:
    @hoptrace.transaction()
    def job(n: int) -> str | None:
        return hoptrace.current_transaction_id()

    first, second = job(1), job(2)
    assert first and second and first != second
    assert [s.name for s in spans.all()] == [job.__wrapped__.__qualname__] * 2  # type: ignore[attr-defined]


def test_async_decorator_and_async_with(spans: Any) -> None:
    @hoptrace.transaction("async-job")
    async def job() -> str | None:
        await asyncio.sleep(0)
        return hoptrace.current_transaction_id()

    async def main() -> tuple[Any, ...]:
        async with hoptrace.transaction("block") as tx:
            inner = hoptrace.current_transaction_id()
        return await job(), await job(), inner, tx.transaction_id

    a, b, inner, expected = asyncio.run(main())
    assert a != b and inner == expected
    assert len(spans.named("async-job")) == 2


def test_user_exception_propagates_and_marks_the_span(spans: Any) -> None:
    with pytest.raises(KeyError), hoptrace.transaction("fails"):
        raise KeyError("x")
    assert spans.one("fails").status.status_code.name == "ERROR"
    assert hoptrace.current_transaction_id() is None
