"""When the process scope of ``async for`` / ``getone()`` closes: next request, loop end,
break, an exception in the handler, an iterator dropped in another task, inherited scopes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import hoptrace
import hoptrace.aiokafka as hk

aiokafka = pytest.importorskip("aiokafka")
from aiokafka.errors import ConsumerStoppedError  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402


def record(offset: int, tx: str) -> Any:
    with hoptrace.transaction(transaction_id=tx):
        headers = hoptrace.inject([])
    return ConsumerRecord("orders", 0, offset, 0, 0, None, tx.encode(), None, 0, 0,
                          tuple(headers))


class FakeConsumer:
    """Just enough of AIOKafkaConsumer: getone() and iteration over canned records."""

    def __init__(self, n: int) -> None:
        self.records = [record(i, f"tx-{i}") for i in range(n)]
        self._group_id = "grp"

    async def getone(self, *partitions: Any) -> Any:
        await asyncio.sleep(0)
        if not self.records:
            raise ConsumerStoppedError()
        return self.records.pop(0)

    def __aiter__(self) -> Any:
        return self

    async def stop(self) -> None:
        pass


@pytest.fixture
def otel_errors() -> Iterator[list[logging.LogRecord]]:
    """Errors OTel logs, such as 'Failed to detach context'."""
    found: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            found.append(rec)

    handler = Keep(logging.ERROR)
    logger = logging.getLogger("opentelemetry")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def test_loop_to_the_end_closes_every_scope(spans: Any, otel_errors: list[Any]) -> None:
    async def run() -> list[tuple[bytes, str | None]]:
        seen = []
        async for msg in hk.TracedConsumer(FakeConsumer(3)):
            seen.append((msg.value, hoptrace.current_transaction_id()))
        assert hoptrace.current_transaction_id() is None
        return seen

    seen = asyncio.run(run())
    assert seen == [(f"tx-{i}".encode(), f"tx-{i}") for i in range(3)]
    processes = spans.named("process orders")
    assert len(processes) == 3 and all(p.end_time for p in processes)
    assert processes[0].attributes["messaging.consumer.group.name"] == "grp"
    assert otel_errors == []


@pytest.mark.parametrize("how", ["break", "raise", "return"])
def test_leaving_the_loop_closes_the_scope_in_the_same_task(
    spans: Any, otel_errors: list[Any], how: str
) -> None:
    async def handle(consumer: Any) -> str | None:
        async for _msg in consumer:
            tx = hoptrace.current_transaction_id()
            if how == "break":
                break
            if how == "raise":
                raise ValueError(tx)
            return tx
        return None

    async def run() -> tuple[str | None, str | None]:
        consumer = hk.TracedConsumer(FakeConsumer(3))
        try:
            inside = await handle(consumer)
        except ValueError as exc:
            inside = str(exc)
        return inside, hoptrace.current_transaction_id()

    inside, after = asyncio.run(run())
    assert (inside, after) == (None if how == "break" else "tx-0", None)
    assert len(spans.named("process orders")) == 1
    assert otel_errors == []
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())


def test_getone_scope_closes_at_next_request_and_close_scope(spans: Any) -> None:
    async def run() -> list[str | None]:
        consumer = hk.TracedConsumer(FakeConsumer(2))
        out = []
        await consumer.getone()
        out.append(hoptrace.current_transaction_id())
        await consumer.getone()
        out.append(hoptrace.current_transaction_id())
        out.append(str(len(spans.named("process orders"))))
        await consumer.stop()
        out.append(hoptrace.current_transaction_id())
        return out

    assert asyncio.run(run()) == ["tx-0", "tx-1", "1", None]
    assert len(spans.named("process orders")) == 2


def test_iterator_dropped_in_another_task_ends_span_without_detach_error(
    spans: Any, otel_errors: list[Any]
) -> None:
    async def run() -> tuple[str | None, str | None]:
        consumer = hk.TracedConsumer(FakeConsumer(3))
        holder: list[Any] = [consumer.__aiter__()]
        await holder[0].__anext__()
        inside = hoptrace.current_transaction_id()

        async def drop() -> None:
            holder.clear()  # the last reference goes away in this other task
            gc.collect()

        await asyncio.create_task(drop())
        still = hoptrace.current_transaction_id()  # the owner's context stays until it moves on
        hk.close_scope()
        return inside, still

    inside, still = asyncio.run(run())
    assert inside == "tx-0" and still == "tx-0"
    assert len(spans.named("process orders")) == 1  # ended once, not twice
    assert otel_errors == []
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())


def test_child_task_never_closes_an_inherited_scope(spans: Any, otel_errors: list[Any]) -> None:
    async def run() -> tuple[str | None, str | None, str | None]:
        consumer = hk.TracedConsumer(FakeConsumer(3))
        await consumer.getone()

        async def child() -> str | None:
            seen = hoptrace.current_transaction_id()
            hk.close_scope()  # inherited from the parent: forgotten here, not detached
            return seen

        in_child = await asyncio.create_task(child())
        in_parent = hoptrace.current_transaction_id()
        await consumer.getone()
        return in_child, in_parent, hoptrace.current_transaction_id()

    assert asyncio.run(run()) == ("tx-0", "tx-0", "tx-1")
    assert len(spans.named("process orders")) == 1
    assert otel_errors == []
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())


def test_no_sdk_still_propagates_transaction(no_sdk: None) -> None:
    async def run() -> list[str | None]:
        return [hoptrace.current_transaction_id() async for _ in hk.TracedConsumer(FakeConsumer(2))]

    assert asyncio.run(run()) == ["tx-0", "tx-1"]




def test_getone_in_a_child_task_is_ended_at_the_next_request(spans: Any) -> None:
    """asyncio.wait_for(getone()) runs getone in a child task on Python < 3.12."""

    async def run() -> None:
        consumer = hk.TracedConsumer(FakeConsumer(2))
        await asyncio.create_task(consumer.getone())  # its scope lives in the child task
        assert spans.named("process orders") == []
        await consumer.getone()
        assert len(spans.named("process orders")) == 1  # the orphaned scope was ended
        await consumer.stop()

    asyncio.run(run())
    assert len(spans.named("process orders")) == 2


def test_two_consumers_in_one_task_never_nest(spans: Any) -> None:
    async def run() -> None:
        a, b = hk.TracedConsumer(FakeConsumer(2)), hk.TracedConsumer(FakeConsumer(2))
        for _ in range(2):
            await a.getone()
            await b.getone()
        await a.stop()
        await b.stop()

    asyncio.run(run())
    processes = spans.named("process orders")
    assert len(processes) == 4
    process_ids = {p.context.span_id for p in processes}
    assert not any(p.parent is not None and p.parent.span_id in process_ids for p in processes)
    assert not any(p.links for p in processes)


def test_stop_from_another_task_ends_the_polling_task_s_held_span(
    spans: Any, otel_errors: list[Any]
) -> None:
    """A framework stops the consumer from its own task at shutdown, while the polling task
    still holds its last record's scope: that span ends then, not never."""
    async def run() -> tuple[str | None, int]:
        consumer = hk.TracedConsumer(FakeConsumer(2))
        polled = asyncio.Event()
        finish = asyncio.Event()

        async def poll() -> str | None:
            await consumer.getone()
            polled.set()
            await finish.wait()  # cancelled here at shutdown, before its next request
            return hoptrace.current_transaction_id()

        task = asyncio.create_task(poll())
        await polled.wait()
        await consumer.stop()  # from this task, not the polling one
        ended = len(spans.named("process orders"))
        finish.set()
        return await task, ended

    still, ended = asyncio.run(run())
    assert ended == 1  # ended by stop(), in the other task
    assert still == "tx-0"  # the polling task's own context is left to it
    assert len(spans.named("process orders")) == 1  # once, not twice
    assert otel_errors == []
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())
