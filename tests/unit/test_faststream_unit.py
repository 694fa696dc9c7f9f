"""hoptrace.faststream without a broker: FastStream's in-memory test brokers, fake records."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

import hoptrace
from hoptrace.core import semconv

pytest.importorskip("faststream")
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.opentelemetry.middleware import BaseTelemetryMiddleware

import hoptrace.faststream as hf
from hoptrace.faststream import HoptraceMiddleware


def test_handler_runs_in_the_publishers_transaction_and_errors_propagate(spans: Any) -> None:
    broker = KafkaBroker(middlewares=[HoptraceMiddleware()])
    seen: list[str | None] = []

    @broker.subscriber("orders")
    async def handle(body: str) -> None:
        seen.append(hoptrace.current_transaction_id())
        if body == "boom":
            raise ValueError("boom")

    async def run() -> str | None:
        async with TestKafkaBroker(broker) as test_broker:
            with hoptrace.transaction("checkout") as tx:
                await test_broker.publish("ok", "orders")
            with pytest.raises(ValueError, match="boom"):
                await test_broker.publish("boom", "orders")
        return tx.transaction_id

    tx = asyncio.run(run())
    assert seen[0] == tx
    processes = spans.named("process orders")
    assert len(processes) == 2
    failed = [p for p in processes if p.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].events[0].name == "exception"
    assert processes[0].attributes[semconv.TRANSACTION_ID] == tx


class _Telemetry(BaseTelemetryMiddleware):
    """Stands in for FastStream's telemetry middleware: only its type and order matter."""

    def __init__(self, calls: list[str]) -> None:  # no FastStream settings needed
        self.calls = calls

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        self.calls.append("telemetry")
        return await call_next(msg)


def test_reorder_puts_hoptrace_just_inside_the_telemetry_middleware() -> None:
    calls: list[str] = []

    async def handler(msg: str) -> str:
        calls.append("handler")
        return msg

    def step(name: str) -> Any:
        async def scope(call_next: Any, msg: str) -> Any:
            calls.append(name)
            return await call_next(msg)
        return scope

    telemetry = _Telemetry(calls)
    # Listed as [hoptrace, other, telemetry]: hoptrace's call_next, as FastStream nests them.
    call_next = functools.partial(step("other"),
                                  functools.partial(telemetry.consume_scope, handler))
    reordered = hf._inside_telemetry(call_next, step("hoptrace"))
    assert reordered is not None
    assert asyncio.run(reordered("m")) == "m"
    assert calls == ["other", "telemetry", "hoptrace", "handler"]
    # No telemetry middleware inside: nothing to reorder.
    assert hf._inside_telemetry(functools.partial(step("x"), handler), step("y")) is None


class _ConfluentRecord:
    """What confluent_kafka.Message offers (methods, not attributes)."""

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self._headers = headers

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 7

    def key(self) -> bytes:
        return b"customer-7"

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000) - 5)  # CreateTime, 5 ms ago


def test_record_scope_of_a_raw_record_restores_its_transaction(spans: Any) -> None:
    with hoptrace.transaction("checkout") as tx:
        headers = hoptrace.inject([])
    sent_header = hoptrace.get_settings().sent_time_header
    headers = [(k, v) for k, v in headers if k != sent_header]  # as a Kafka producer sends
    with hf.record_scope(_ConfluentRecord(headers)):
        assert hoptrace.current_transaction_id() == tx.transaction_id
        assert hoptrace.current_hop() == ("kafka", "orders", "orders-2@7")
    assert hoptrace.current_transaction_id() is None
    span = spans.one("process orders")
    assert span.attributes[semconv.KAFKA_MESSAGE_KEY] == "customer-7"
    # Kafka has no message ID: the hop's ``topic-p@offset`` only repeats partition and offset.
    assert semconv.MESSAGING_MESSAGE_ID not in span.attributes
    assert "hoptrace.queue_wait.precision_ms" not in span.attributes
    assert 4 <= span.attributes[semconv.QUEUE_WAIT_MS] < 1000


class _Unreadable:
    """A raw message every attribute of which raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)


def test_a_message_hoptrace_cannot_read_still_reaches_the_handler(spans: Any) -> None:
    middleware = HoptraceMiddleware()(None, context=_Context())

    class Message:
        raw_message = _Unreadable()
        headers: dict[str, str] = {}
        message_id = "m"

    handled: list[str] = []

    async def handler(msg: Any) -> str:
        handled.append("x")
        return "done"

    assert asyncio.run(middleware.consume_scope(handler, Message())) == "done"
    assert handled == ["x"]
    assert hoptrace.diagnostics().get("internal_error.faststream.consume") == 1


class _Context:
    def get_local(self, key: str, default: Any = None) -> Any:
        return default


def test_a_scope_the_client_integration_opened_for_the_message_is_reused(spans: Any) -> None:
    """A subscriber whose consumer hoptrace.aiokafka still traces (not claimed in time): the
    record's process scope is open in this task already, and the middleware adds none."""
    from aiokafka.structs import ConsumerRecord

    import hoptrace.aiokafka

    with hoptrace.transaction("checkout") as tx:
        headers = tuple(hoptrace.inject([]))
    record = ConsumerRecord(
        topic="orders", partition=0, offset=5, timestamp=int(time.time() * 1000),
        timestamp_type=0, key=None, value=b"x", checksum=None, serialized_key_size=0,
        serialized_value_size=1, headers=headers,
    )

    class Message:
        raw_message = record
        consumer = None
        message_id = "5-0"

    seen: list[str | None] = []

    async def handler(msg: Any) -> None:
        seen.append(hoptrace.current_transaction_id())

    middleware = HoptraceMiddleware()(record, context=_Context())
    with hoptrace.aiokafka.processing(record):  # what getone() left open in this task
        asyncio.run(middleware.consume_scope(handler, Message()))
    assert seen == [tx.transaction_id]
    assert len(spans.named("process orders")) == 1
