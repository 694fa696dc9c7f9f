"""RabbitMQ restarted mid-stream: hoptrace loses no message and every one keeps its transaction.

5,000 persistent messages are published with publisher confirms while the broker restarts;
the publisher reconnects and goes on, then a consumer drains the queue. The run is done
without hoptrace and with it, and both deliver the same number of distinct messages.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import brokers
import pytest

import hoptrace
import hoptrace.pika
from hoptrace.core.propagator import baggage_entry

pika = pytest.importorskip("pika")

pytestmark = [pytest.mark.integration, pytest.mark.long]

COUNT = 5_000
RESTART_AFTER = 500
RECONNECT_LIMIT_S = 120.0


def connect(url: str) -> Any:
    """Connect, retrying while the broker is down (up to RECONNECT_LIMIT_S)."""
    deadline = time.monotonic() + RECONNECT_LIMIT_S
    while True:
        try:
            return pika.BlockingConnection(pika.URLParameters(url))
        except (pika.exceptions.AMQPError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def open_channel(url: str, queue: str) -> tuple[Any, Any]:
    conn = connect(url)
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-expires": 300_000})
    return conn, channel


def publish_through_restart(url: str, queue: str) -> int:
    """Publish COUNT confirmed persistent messages, restarting RabbitMQ after RESTART_AFTER.

    Returns how many times the publisher had to reconnect.
    """
    failures: list[BaseException] = []

    def restart() -> None:
        try:
            brokers.restart("amqp")
        except BaseException as exc:  # pytest.fail/skip raise BaseException subclasses
            failures.append(exc)

    restarter = threading.Thread(target=restart, daemon=True)
    conn, channel = open_channel(url, queue)
    reconnects = 0
    seq = 0
    while seq < COUNT:
        try:
            if channel is None:
                conn, channel = open_channel(url, queue)
            with hoptrace.transaction("publish") as tx:
                channel.basic_publish(
                    "", queue, f"{seq}:{tx.transaction_id}".encode(),
                    pika.BasicProperties(delivery_mode=2), mandatory=True,
                )
            seq += 1
            if seq == RESTART_AFTER:
                restarter.start()
            elif seq > RESTART_AFTER and reconnects == 0 and restarter.is_alive():
                time.sleep(0.002)  # keep publishing, slowly, until the broker goes down
        except (pika.exceptions.AMQPError, OSError):
            reconnects += 1
            channel = None
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass
    restarter.join(RECONNECT_LIMIT_S)
    if failures:
        raise failures[0]
    conn.close()
    return reconnects


def consume_all(url: str, queue: str, instrumented: bool) -> tuple[set[int], list[str]]:
    """Drain the queue; return the distinct sequence numbers and any transaction mismatch."""
    delivered: set[int] = set()
    problems: list[str] = []
    conn = connect(url)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=500)
    for method, props, body in channel.consume(queue, inactivity_timeout=3):
        if method is None:
            break
        seq, tx = body.decode().split(":")
        delivered.add(int(seq))
        if instrumented:
            bag = (props.headers or {}).get("baggage")
            header = baggage_entry(bag, "transaction.id") if isinstance(bag, str) else None
            if header != tx or hoptrace.current_transaction_id() != tx:
                problems.append(f"{seq}: baggage entry={header} current="
                                f"{hoptrace.current_transaction_id()} body={tx}")
        channel.basic_ack(method.delivery_tag)
        if len(delivered) == COUNT:
            break
    channel.cancel()
    channel.queue_delete(queue)
    conn.close()
    return delivered, problems


def run(url: str, instrumented: bool) -> tuple[int, set[int], list[str]]:
    queue = f"hoptrace-pika-fault-{uuid.uuid4().hex[:10]}"
    reconnects = publish_through_restart(url, queue)
    delivered, problems = consume_all(url, queue, instrumented)
    return reconnects, delivered, problems


def test_broker_restart_mid_stream_loses_nothing_and_keeps_transactions(
    amqp_url: str, spans: Any
) -> None:
    url = brokers.pika_url(amqp_url)
    plain_reconnects, plain_delivered, _ = run(url, instrumented=False)
    hoptrace.pika.instrument()
    try:
        reconnects, delivered, problems = run(url, instrumented=True)
    finally:
        hoptrace.pika.uninstrument()
    assert plain_reconnects >= 1 and reconnects >= 1, "the broker restart was not seen"
    assert len(delivered) == len(plain_delivered) == COUNT
    assert problems == []
    assert len(spans.named(f"send {queue_name(spans)}")) >= COUNT


def queue_name(spans: Any) -> str:
    """The fault queue's name, read from the first send span."""
    for span in spans.all():
        if span.name.startswith("send hoptrace-pika-fault-"):
            return span.name.removeprefix("send ")
    raise AssertionError("no send span")
