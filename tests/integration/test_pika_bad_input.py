"""Malformed headers on every pika consume path: the handler runs once, in a fresh trace."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import brokers
import pytest

import hoptrace
import hoptrace.pika

pika = pytest.importorskip("pika")

pytestmark = pytest.mark.integration

CRLF_TX = "tx\r\nFAKE log line"
BAD_HEADERS: list[dict[str, Any]] = [
    {"traceparent": b"\xff\xfe00-not-utf8", "x-transaction-id": 5},
    {"traceparent": None, "baggage": {"nested": {"table": 1}}, "x-transaction-id": None},
    {"traceparent": 12345, "x-transaction-id": CRLF_TX},
    {"traceparent": "00-zz", "baggage": "k=" + "v" * 20_000},
    {"traceparent": {"v": [1, 2]}, "x-hoptrace-sent-ns": b"\x00\x01", "tracestate": 7},
]
TX_SHAPE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@pytest.fixture
def raw_queue(amqp_url: str) -> Iterator[tuple[Any, str]]:
    """A queue holding one raw (uninstrumented) message per entry of BAD_HEADERS."""
    conn = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url)))
    channel = conn.channel()
    queue = f"hoptrace-pika-bad-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(queue, arguments={"x-expires": 30_000})
    for index, headers in enumerate(BAD_HEADERS):
        channel.basic_publish("", queue, str(index).encode(), pika.BasicProperties(headers=headers))
    hoptrace.pika.instrument()
    try:
        yield conn, queue
    finally:
        hoptrace.pika.uninstrument()
        if conn.is_open:
            conn.channel().queue_delete(queue)
            conn.close()


def via_basic_consume(conn: Any, queue: str, handle: Callable[[bytes], None]) -> None:
    channel = conn.channel()

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        handle(body)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    while len(seen_bodies(handle)) < len(BAD_HEADERS):
        conn.process_data_events(time_limit=0.1)
    channel.close()


def via_consume_generator(conn: Any, queue: str, handle: Callable[[bytes], None]) -> None:
    channel = conn.channel()
    for method, _props, body in channel.consume(queue, inactivity_timeout=5):
        assert method is not None
        handle(body)
        channel.basic_ack(method.delivery_tag)
        if len(seen_bodies(handle)) == len(BAD_HEADERS):
            break
    channel.cancel()


def via_basic_get(conn: Any, queue: str, handle: Callable[[bytes], None]) -> None:
    channel = conn.channel()
    while len(seen_bodies(handle)) < len(BAD_HEADERS):
        method, _props, body = channel.basic_get(queue)
        if method is None:
            conn.sleep(0.05)
            continue
        handle(body)
        channel.basic_ack(method.delivery_tag)


def via_select_connection(conn: Any, queue: str, handle: Callable[[bytes], None]) -> None:
    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        handle(body)
        ch.basic_ack(method.delivery_tag)
        if len(seen_bodies(handle)) == len(BAD_HEADERS):
            ch.connection.close()

    select = pika.SelectConnection(
        conn._impl.params,
        on_open_callback=lambda c: c.channel(
            on_open_callback=lambda ch: ch.basic_consume(queue, on_message)),
        on_close_callback=lambda c, reason: c.ioloop.stop(),
    )
    timer = select.ioloop.call_later(10, select.ioloop.stop)
    select.ioloop.start()
    select.ioloop.remove_timeout(timer)


def seen_bodies(handle: Callable[[bytes], None]) -> list[tuple[bytes, str | None, str | None]]:
    return handle.seen  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(
    "consume",
    [via_basic_consume, via_consume_generator, via_basic_get, via_select_connection],
    ids=["basic_consume", "consume_generator", "basic_get", "select_connection"],
)
def test_bad_headers_run_handler_once_in_fresh_trace(
    raw_queue: tuple[Any, str], consume: Callable[..., None], spans: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn, queue = raw_queue
    seen: list[tuple[bytes, str | None, str | None]] = []

    def handle(body: bytes) -> None:
        seen.append((body, hoptrace.current_transaction_id(), hoptrace.current_trace_id()))

    handle.seen = seen  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        consume(conn, queue, handle)
    assert sorted(body for body, _, _ in seen) == [str(i).encode() for i in range(len(BAD_HEADERS))]
    for _body, tx, trace_id in seen:
        assert tx is not None and TX_SHAPE.fullmatch(tx) and tx != CRLF_TX
        assert trace_id is not None
    processes = spans.named(f"process {queue}")
    assert len(processes) == len(BAD_HEADERS)
    assert all(p.parent is None for p in processes)
    assert len({p.context.trace_id for p in processes}) == len(BAD_HEADERS)
    assert {f"{p.context.trace_id:032x}" for p in processes} == {t for _, _, t in seen}
    assert hoptrace.rejections() >= len(BAD_HEADERS)
    assert any(r.name == "hoptrace" and r.levelno == logging.WARNING for r in caplog.records)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert hoptrace.current_transaction_id() is None
