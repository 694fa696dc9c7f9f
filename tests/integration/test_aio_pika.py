"""hoptrace.aio_pika against a real RabbitMQ: publish, consume callbacks, iterator, get."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import brokers
import pytest
import pytest_asyncio
from opentelemetry import baggage
from opentelemetry import context as otel_context

import hoptrace
import hoptrace.aio_pika
from hoptrace import _amqp

aio_pika = pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

CRLF_TX = "tx\r\nFAKE log line"


@pytest.fixture
def instrumented() -> Iterator[None]:
    hoptrace.aio_pika.instrument()
    _amqp.memory.forget_all()
    try:
        yield
    finally:
        hoptrace.aio_pika.uninstrument()


@pytest_asyncio.fixture
async def channel(amqp_url: str) -> AsyncIterator[Any]:
    connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def new_queue(channel: Any, auto_delete: bool = True) -> Any:
    """Declare a uniquely named queue; one that outlives its consumers expires in 30 s."""
    return await channel.declare_queue(
        f"hoptrace-aio-pika-{uuid.uuid4().hex[:10]}", auto_delete=auto_delete,
        arguments=None if auto_delete else {"x-expires": 30_000})


async def publish_in_transaction(channel: Any, queue: Any, body: bytes = b"x",
                                 message: Any = None) -> str:
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction("publish") as tx:
            await channel.default_exchange.publish(message or aio_pika.Message(body),
                                                   routing_key=queue.name)
    finally:
        otel_context.detach(token)
    assert tx.transaction_id
    return tx.transaction_id


def seen_now() -> dict[str, Any]:
    return {"tx": hoptrace.current_transaction_id(), "tenant": baggage.get_baggage("tenant"),
            "span": hoptrace.current_span_id()}


def assert_children_of_sends(spans: Any, queue: Any, count: int) -> list[Any]:
    sends = spans.named(f"send {queue.name}")
    processes = spans.named(f"process {queue.name}")
    assert len(sends) == count and len(processes) == count
    assert sorted(p.parent.span_id for p in processes) == sorted(
        s.context.span_id for s in sends)
    return processes


async def test_publish_copies_message_and_consume_callback(instrumented: None, channel: Any,
                                                           spans: Any) -> None:
    queue = await new_queue(channel)
    caller_headers = {"kept": "yes"}
    message = aio_pika.Message(b"hi", headers=caller_headers, message_id="m-1",
                               correlation_id="c-1")
    tx = await publish_in_transaction(channel, queue, message=message)
    assert message.headers is caller_headers and caller_headers == {"kept": "yes"}
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_message(incoming: Any) -> None:
        async with incoming.process():
            done.set_result({**seen_now(), "headers": incoming.headers})

    tag = await queue.consume(on_message)
    seen = await asyncio.wait_for(done, 10)
    await queue.cancel(tag)
    assert seen["tx"] == tx and seen["tenant"] == "acme" and seen["headers"]["kept"] == "yes"
    (process,) = assert_children_of_sends(spans, queue, 1)
    assert seen["span"] == f"{process.context.span_id:016x}"
    assert process.attributes["messaging.message.id"] == "m-1"
    assert process.attributes["messaging.message.conversation_id"] == "c-1"
    assert process.attributes["messaging.rabbitmq.message.delivery_tag"] >= 1


async def test_queue_iterator_keeps_scope_for_the_loop_body(instrumented: None, channel: Any,
                                                            spans: Any) -> None:
    queue = await new_queue(channel)
    txs = [await publish_in_transaction(channel, queue, str(i).encode()) for i in range(3)]
    seen: list[dict[str, Any]] = []
    async with queue.iterator() as messages:
        async for incoming in messages:
            async with incoming.process():
                await asyncio.sleep(0)
                seen.append(seen_now())
            seen[-1]["after_ack"] = hoptrace.current_transaction_id()
            if len(seen) == 3:
                break
    assert hoptrace.current_transaction_id() is None
    assert [s["tx"] for s in seen] == txs == [s["after_ack"] for s in seen]
    assert all(s["tenant"] == "acme" for s in seen)
    processes = assert_children_of_sends(spans, queue, 3)
    assert {f"{p.context.span_id:016x}" for p in processes} == {s["span"] for s in seen}


async def test_break_without_async_with_closes_the_scope(instrumented: None, channel: Any,
                                                          spans: Any) -> None:
    queue = await new_queue(channel)
    tx = await publish_in_transaction(channel, queue)
    iterator = queue.iterator()
    async for incoming in iterator:
        await incoming.ack()
        assert hoptrace.current_transaction_id() == tx
        break
    assert hoptrace.current_transaction_id() is None
    assert len(spans.named(f"process {queue.name}")) == 1
    await iterator.close()


async def test_tasks_sharing_one_iterator_keep_their_own_scopes(
    instrumented: None, channel: Any, spans: Any
) -> None:
    queue = await new_queue(channel)
    txs = {await publish_in_transaction(channel, queue, str(i).encode()) for i in range(4)}
    seen: list[tuple[str | None, str | None]] = []
    async with queue.iterator() as messages:

        async def worker() -> None:
            for _ in range(2):
                incoming = await messages.__anext__()
                before = hoptrace.current_transaction_id()
                await asyncio.sleep(0.05)  # the other task fetches meanwhile
                seen.append((before, hoptrace.current_transaction_id()))
                await incoming.ack()

        await asyncio.gather(worker(), worker())
    assert {before for before, _ in seen} == txs
    assert all(before == after for before, after in seen)
    processes = assert_children_of_sends(spans, queue, 4)
    assert all((p.end_time - p.start_time) >= 40_000_000 for p in processes)
    assert hoptrace.diagnostics().get("internal_error.detach", 0) == 0


async def test_queue_get_scope_lasts_until_ack(instrumented: None, channel: Any,
                                               spans: Any) -> None:
    queue = await new_queue(channel)
    tx = await publish_in_transaction(channel, queue)
    incoming = None
    for _ in range(100):
        incoming = await queue.get(fail=False)
        if incoming is not None:
            break
        await asyncio.sleep(0.05)
    assert incoming is not None
    seen = seen_now()
    await incoming.ack()
    assert seen["tx"] == tx and seen["tenant"] == "acme"
    assert hoptrace.current_transaction_id() is None
    assert_children_of_sends(spans, queue, 1)


async def test_nack_requeue_links_redelivery(instrumented: None, channel: Any,
                                             spans: Any) -> None:
    queue = await new_queue(channel)
    tx = await publish_in_transaction(channel, queue)
    attempts: list[tuple[bool, str | None]] = []
    done = asyncio.Event()

    async def on_message(incoming: Any) -> None:
        attempts.append((incoming.redelivered, hoptrace.current_transaction_id()))
        if len(attempts) == 1:
            await incoming.nack(requeue=True)
        else:
            await incoming.ack()
            done.set()

    tag = await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 10)
    await queue.cancel(tag)
    assert attempts == [(False, tx), (True, tx)]
    first, second = sorted(spans.named(f"process {queue.name}"),
                           key=lambda s: s.start_time)
    assert [link.context.span_id for link in second.links] == [first.context.span_id]


async def test_bad_headers_every_path_runs_once_in_fresh_trace(
    channel: Any, amqp_url: str, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pika = pytest.importorskip("pika")
    bad: list[dict[str, Any]] = [
        {"traceparent": b"\xff\xfe00-not-utf8", "x-transaction-id": 5},
        {"traceparent": None, "baggage": {"nested": {"table": 1}}},
        {"traceparent": 12345, "x-transaction-id": CRLF_TX},
        {"traceparent": "00-zz", "baggage": "k=" + "v" * 20_000},
    ]
    queue = await new_queue(channel, auto_delete=False)
    total = 3 * len(bad)
    # pika writes bytes as an AMQP longstr, so the non-UTF-8 value reaches the wire as is.
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as raw:
        raw_channel = raw.channel()
        for index in range(total):
            raw_channel.basic_publish("", queue.name, str(index).encode(),
                                      pika.BasicProperties(headers=bad[index % len(bad)]))
    hoptrace.aio_pika.instrument()
    seen: list[tuple[bytes, str | None]] = []
    try:
        with caplog.at_level(logging.WARNING, logger="hoptrace"):
            for _ in range(len(bad)):  # Queue.get
                incoming = await queue.get(timeout=5)
                seen.append((incoming.body, hoptrace.current_transaction_id()))
                await incoming.ack()
            async with queue.iterator() as messages:  # async for
                async for incoming in messages:
                    seen.append((incoming.body, hoptrace.current_transaction_id()))
                    await incoming.ack()
                    if len(seen) == 2 * len(bad):
                        break
            done = asyncio.Event()

            async def on_message(incoming: Any) -> None:  # consume callback
                seen.append((incoming.body, hoptrace.current_transaction_id()))
                await incoming.ack()
                if len(seen) == total:
                    done.set()

            tag = await queue.consume(on_message)
            await asyncio.wait_for(done.wait(), 10)
            await queue.cancel(tag)
    finally:
        hoptrace.aio_pika.uninstrument()
        await queue.delete(if_unused=False, if_empty=False)
    assert sorted(int(body) for body, _ in seen) == list(range(total))
    assert all(tx and "\r" not in tx and tx != "5" for _, tx in seen)
    processes = spans.named(f"process {queue.name}")
    assert len(processes) == total and all(p.parent is None for p in processes)
    assert hoptrace.rejections() >= total
    assert any(r.name == "hoptrace" for r in caplog.records)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def run_example(name: str, env: dict[str, str]) -> str:
    """Run examples/NAME.py; check every log line of the hop carries one transaction ID."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    txs = re.findall(r"^orders\s+tx=(\S+) trace=(\S+)", proc.stdout, re.M)
    assert len(txs) == 2 and txs[0] == txs[1] and txs[0][0] != "None", proc.stdout
    assert f"one transaction ID across the hop: {txs[0][0]} (ok)" in proc.stdout
    return proc.stdout


@pytest.mark.asyncio
async def test_example_runs(amqp_url: str) -> None:
    run_example("rabbitmq_aio_pika", {"HOPTRACE_AMQP_URL": amqp_url})
