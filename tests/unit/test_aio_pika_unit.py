"""hoptrace.aio_pika's wrappers without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import hoptrace
import hoptrace.aio_pika
from hoptrace.core.propagator import baggage_entry

aio_pika = pytest.importorskip("aio_pika")


def incoming(headers: Any) -> Any:
    return SimpleNamespace(headers=headers, exchange="", routing_key="q", delivery_tag=9,
                           message_id="m-9", correlation_id=None, timestamp=None,
                           redelivered=False)


def test_consume_callback_runs_in_scope_and_errors_propagate(spans: Any) -> None:
    seen: list[str | None] = []

    async def handler(message: Any) -> None:
        seen.append(hoptrace.current_transaction_id())
        raise ValueError("bad order")

    wrapped = hoptrace.aio_pika._wrap_callback("q", handler)
    assert hoptrace.aio_pika._wrap_callback("q", wrapped) is wrapped
    headers = hoptrace.inject({})
    with pytest.raises(ValueError, match="bad order"):
        asyncio.run(wrapped(incoming(headers)))
    assert seen == [baggage_entry(headers["baggage"], "transaction.id")]
    process = spans.one("process q")
    assert process.attributes["messaging.message.id"] == "m-9"
    assert not process.status.is_ok


def test_aio_pika_own_callbacks_are_not_wrapped() -> None:
    from aio_pika.queue import QueueIterator

    iterator = object.__new__(QueueIterator)
    assert hoptrace.aio_pika._wrap_callback("q", iterator.on_message) == iterator.on_message


def test_publish_copies_the_message(spans: Any) -> None:
    sent: list[Any] = []

    async def publish(self: Any, message: Any, routing_key: str, **kwargs: Any) -> None:
        sent.append(message)

    wrapped = hoptrace.aio_pika._wrap_publish(publish)
    caller_headers = {"kept": "yes"}
    message = aio_pika.Message(b"x", headers=caller_headers)
    asyncio.run(wrapped(SimpleNamespace(name="shop"), message, "created"))
    assert message.headers is caller_headers and caller_headers == {"kept": "yes"}
    assert sent[0] is not message and sent[0].headers["kept"] == "yes"
    assert "traceparent" in sent[0].headers
    assert spans.one("send shop:created").attributes["messaging.destination.name"] == (
        "shop:created")


def test_processing_gives_a_message_exact_boundaries(spans: Any) -> None:
    with hoptrace.transaction("edge") as tx:
        headers = hoptrace.inject({})
    message = SimpleNamespace(headers=headers, exchange="", routing_key="q", delivery_tag=1,
                              message_id=None, correlation_id=None, timestamp=None,
                              redelivered=False)

    async def handle() -> str | None:
        async with hoptrace.aio_pika.processing(message, "q"):
            return hoptrace.current_transaction_id()

    assert asyncio.run(handle()) == tx.transaction_id
    assert hoptrace.current_transaction_id() is None
    assert len(spans.named("process q")) == 1
