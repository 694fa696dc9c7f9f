"""hoptrace.pika against a real RabbitMQ: publish, every consume path, redelivery, DLX."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import brokers
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

import hoptrace
import hoptrace.pika
from hoptrace import _amqp
from hoptrace.core.propagator import baggage_entry
from hoptrace.logs import TransactionFilter

pika = pytest.importorskip("pika")

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(amqp_url: str) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url)))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture
def instrumented() -> Iterator[None]:
    hoptrace.pika.instrument()
    _amqp.memory.forget_all()
    try:
        yield
    finally:
        hoptrace.pika.uninstrument()


@pytest.fixture(autouse=True)
def no_context_left_behind() -> Iterator[None]:
    yield
    assert hoptrace.current_transaction_id() is None, "a consume scope stayed attached"


def new_queue(channel: Any, auto_delete: bool = True, **arguments: Any) -> str:
    """Declare a uniquely named queue; one that outlives its consumers expires in 30 s."""
    name = f"hoptrace-pika-{uuid.uuid4().hex[:10]}"
    if not auto_delete:
        arguments["x-expires"] = 30_000
    channel.queue_declare(name, auto_delete=auto_delete, arguments=arguments or None)
    return name


class Seen:
    """What a handler saw of the context it ran in."""

    def __init__(self) -> None:
        self.tx = hoptrace.current_transaction_id()
        self.trace = hoptrace.current_trace_id()
        self.span = hoptrace.current_span_id()
        self.tenant = baggage.get_baggage("tenant")


def publish_in_transaction(channel: Any, queue: str, body: bytes = b"x",
                           properties: Any = None) -> str:
    """Publish under a transaction with baggage tenant=acme; return the transaction ID."""
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction("publish") as tx:
            channel.basic_publish("", queue, body, properties)
    finally:
        otel_context.detach(token)
    assert tx.transaction_id
    return tx.transaction_id


def drain(connection: Any, until: Callable[[], bool], limit: float = 10.0) -> None:
    """Process I/O until ``until()`` holds (or ``limit`` seconds pass)."""
    import time

    deadline = time.monotonic() + limit
    while not until() and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)


def assert_child_of_send(spans: Any, process: Any, queue: str) -> None:
    send = spans.one(f"send {queue}")
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id


def test_publish_copies_properties_and_injects(instrumented: None, connection: Any,
                                               spans: Any) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    caller_headers = {"kept": "yes"}
    props = pika.BasicProperties(headers=caller_headers, message_id="m-1",
                                 correlation_id="c-1")
    tx = publish_in_transaction(channel, queue, properties=props)
    assert caller_headers == {"kept": "yes"}
    assert props.headers is caller_headers
    method, received, _ = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    channel.close()
    assert received.headers["kept"] == "yes"
    assert baggage_entry(received.headers["baggage"], "transaction.id") == tx
    assert "x-transaction-id" not in received.headers
    send = spans.one(f"send {queue}")
    assert received.headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"
    assert send.attributes["messaging.message.id"] == "m-1"
    assert send.attributes["messaging.message.conversation_id"] == "c-1"
    assert send.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert send.attributes["messaging.destination.name"] == queue


def test_basic_consume_several_consumers_on_one_channel(
    instrumented: None, connection: Any, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(TransactionFilter())
    caplog.set_level(logging.INFO, logger="test")
    channel = connection.channel()
    queues = [new_queue(channel), new_queue(channel)]
    seen: dict[str, Seen] = {}

    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen[body.decode()] = Seen()
        logging.getLogger("test").info("handled %s", body)
        ch.basic_ack(method.delivery_tag)

    for queue in queues:
        channel.basic_consume(queue, handler)
    txs = {queue: publish_in_transaction(channel, queue, queue.encode()) for queue in queues}
    drain(connection, lambda: len(seen) == 2)
    channel.stop_consuming()
    for queue in queues:
        process = spans.one(f"process {queue}")
        assert_child_of_send(spans, process, queue)
        assert seen[queue].tx == txs[queue]
        assert seen[queue].tenant == "acme"
        assert seen[queue].span == f"{process.context.span_id:016x}"
        assert process.attributes["messaging.rabbitmq.message.delivery_tag"] >= 1
    logged = {r.getMessage(): r for r in caplog.records if r.name == "test"}
    for queue in queues:
        record = logged[f"handled {queue.encode()!r}"]
        assert record.transaction_id == txs[queue]  # type: ignore[attr-defined]
        assert record.messaging_destination == queue  # type: ignore[attr-defined]
    assert hoptrace.current_transaction_id() is None


def test_consume_generator_keeps_scope_for_the_loop_body(instrumented: None, connection: Any,
                                                         spans: Any) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    txs = [publish_in_transaction(channel, queue, str(i).encode()) for i in range(3)]
    seen_before_ack: list[Seen] = []
    seen_after_ack: list[Seen] = []
    for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
        assert method is not None
        seen_before_ack.append(Seen())
        channel.basic_ack(method.delivery_tag)
        seen_after_ack.append(Seen())
        if len(seen_before_ack) == 3:
            break
    channel.cancel()
    assert hoptrace.current_transaction_id() is None
    assert [s.tx for s in seen_before_ack] == txs
    assert [s.tx for s in seen_after_ack] == txs
    assert all(s.tenant == "acme" for s in seen_after_ack)
    processes = spans.named(f"process {queue}")
    assert len(processes) == 3
    sends = spans.named(f"send {queue}")
    assert {p.parent.span_id for p in processes} == {s.context.span_id for s in sends}
    assert {f"{p.context.span_id:016x}" for p in processes} == {s.span for s in seen_after_ack}


def test_consume_generator_inactivity_and_cancel_close_the_scope(
    instrumented: None, connection: Any, spans: Any
) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    tx = publish_in_transaction(channel, queue)
    got: list[str | None] = []
    for method, _props, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.2):
        got.append(hoptrace.current_transaction_id())
        if method is None:
            break
    assert got == [tx, None]
    channel.cancel()
    assert hoptrace.current_transaction_id() is None
    assert len(spans.named(f"process {queue}")) == 1


def test_consume_generator_error_in_loop_body_detaches_the_scope(
    instrumented: None, connection: Any, spans: Any
) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    tx = publish_in_transaction(channel, queue)
    seen: list[str | None] = []
    with pytest.raises(RuntimeError, match="handler failed"):
        for _method, _props, _body in channel.consume(queue, auto_ack=True,
                                                      inactivity_timeout=5):
            seen.append(hoptrace.current_transaction_id())
            raise RuntimeError("handler failed")
    assert seen == [tx]
    assert hoptrace.current_transaction_id() is None
    channel.cancel()
    assert len(spans.named(f"process {queue}")) == 1


def test_basic_get_scope_lasts_until_ack(instrumented: None, connection: Any,
                                         spans: Any) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    tx = publish_in_transaction(channel, queue)
    method, _props, _body = None, None, None
    for _ in range(100):
        method, _props, _body = channel.basic_get(queue)
        if method is not None:
            break
        connection.sleep(0.05)
    assert method is not None
    seen = Seen()
    channel.basic_ack(method.delivery_tag)
    assert seen.tx == tx and seen.tenant == "acme"
    assert hoptrace.current_transaction_id() is None
    process = spans.one(f"process {queue}")
    assert_child_of_send(spans, process, queue)
    assert channel.basic_get(queue) == (None, None, None)


def test_select_connection_callbacks(amqp_url: str, instrumented: None, spans: Any) -> None:
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as setup:
        queue = new_queue(setup.channel())
        tx = publish_in_transaction(setup.channel(), queue)
        seen: list[Seen] = []

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen.append(Seen())
            ch.basic_ack(method.delivery_tag)
            ch.connection.close()

        def on_channel(ch: Any) -> None:
            ch.basic_consume(queue, on_message)

        conn = pika.SelectConnection(
            pika.URLParameters(brokers.pika_url(amqp_url)),
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_close_callback=lambda c, reason: c.ioloop.stop(),
        )
        timer = conn.ioloop.call_later(10, conn.ioloop.stop)
        conn.ioloop.start()
        conn.ioloop.remove_timeout(timer)
    assert len(seen) == 1 and seen[0].tx == tx and seen[0].tenant == "acme"
    process = spans.one(f"process {queue}")
    assert_child_of_send(spans, process, queue)


def test_nack_requeue_links_redelivery_to_first_attempt(instrumented: None, connection: Any,
                                                        spans: Any) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    tx = publish_in_transaction(channel, queue)
    attempts: list[tuple[bool, Seen]] = []

    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        attempts.append((method.redelivered, Seen()))
        if len(attempts) == 1:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, handler)
    drain(connection, lambda: len(attempts) == 2)
    assert [redelivered for redelivered, _ in attempts] == [False, True]
    assert [seen.tx for _, seen in attempts] == [tx, tx]
    first, second = sorted(spans.named(f"process {queue}"),
                           key=lambda s: s.start_time)
    assert second.links and second.links[0].context.span_id == first.context.span_id
    assert second.links[0].attributes["hoptrace.link.reason"] == "redelivery"
    assert not first.links
    assert second.parent.span_id == first.parent.span_id


def test_consumer_dying_before_ack_links_redelivery(amqp_url: str, instrumented: None,
                                                    spans: Any) -> None:
    url = pika.URLParameters(brokers.pika_url(amqp_url))
    with pika.BlockingConnection(url) as owner:
        channel = owner.channel()
        queue = new_queue(channel, auto_delete=False)
        tx = publish_in_transaction(channel, queue)
        with pika.BlockingConnection(url) as doomed:
            for method, _props, _body in doomed.channel().consume(queue, inactivity_timeout=5):
                assert method is not None and not method.redelivered
                break
        # The connection closed without an ack: the broker requeues the message.
        again: list[Seen] = []
        for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
            assert method is not None and method.redelivered
            again.append(Seen())
            channel.basic_ack(method.delivery_tag)
            break
        channel.cancel()
        channel.queue_delete(queue)
    first, second = sorted(spans.named(f"process {queue}"),
                           key=lambda s: s.start_time)
    assert again[0].tx == tx
    assert [link.context.span_id for link in second.links] == [first.context.span_id]


def test_dead_letter_round_trip(instrumented: None, connection: Any, spans: Any) -> None:
    channel = connection.channel()
    dead = new_queue(channel)
    work = new_queue(channel, **{"x-dead-letter-exchange": "",
                                 "x-dead-letter-routing-key": dead})
    tx = publish_in_transaction(channel, work)
    seen: dict[str, Seen] = {}

    def reject(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen["work"] = Seen()
        ch.basic_reject(method.delivery_tag, requeue=False)

    def settle(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen["dead"] = Seen()
        seen["x-death"] = props.headers["x-death"][0]["queue"]  # type: ignore[assignment]
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(work, reject)
    channel.basic_consume(dead, settle)
    drain(connection, lambda: "dead" in seen)
    assert seen["work"].tx == tx and seen["dead"].tx == tx
    assert seen["dead"].tenant == "acme"
    assert seen["x-death"] == work
    first = spans.one(f"process {work}")
    second = spans.one(f"process {dead}")
    assert second.context.trace_id == first.context.trace_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert second.links[0].attributes["hoptrace.link.reason"] == "dead_letter"


def test_instrument_channel_and_traced_publish_without_global_patch(
    connection: Any, spans: Any
) -> None:
    assert not hoptrace.pika.is_instrumented()
    channel = hoptrace.pika.instrument_channel(connection.channel())
    assert hoptrace.pika.instrument_channel(channel) is channel
    queue = new_queue(channel)
    tx = publish_in_transaction(channel, queue)

    plain = connection.channel()
    publish = hoptrace.pika.traced_publish(plain.basic_publish)
    with hoptrace.transaction("decorated") as decorated:
        publish("", queue, b"y", pika.BasicProperties(message_id="m-2"))
    seen: list[Seen] = []

    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen.append(Seen())
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, handler)
    drain(connection, lambda: len(seen) == 2)
    assert [s.tx for s in seen] == [tx, decorated.transaction_id]
    assert len(spans.named(f"send {queue}")) == 2
    assert len(spans.named(f"process {queue}")) == 2


def test_publish_inside_own_produce_scope_is_not_traced_twice(
    instrumented: None, connection: Any, spans: Any
) -> None:
    channel = connection.channel()
    queue = new_queue(channel)
    with hoptrace.produce_scope({}, "manual", "rabbitmq") as send:
        channel.basic_publish("", queue, b"x", pika.BasicProperties(headers=send.carrier))
    assert not spans.named(f"send {queue}")
    method, _props, _ = channel.basic_get(queue)
    assert method is not None
    channel.basic_ack(method.delivery_tag)
    manual = spans.one("send manual")
    process = spans.one(f"process {queue}")
    assert process.parent is not None and process.parent.span_id == manual.context.span_id


def test_instrument_twice_gives_one_span_and_uninstrument_restores(
    connection: Any, spans: Any
) -> None:
    original = pika.channel.Channel.basic_publish
    hoptrace.pika.instrument()
    hoptrace.pika.instrument()
    try:
        channel = hoptrace.pika.instrument_channel(connection.channel())
        queue = new_queue(channel)
        publish_in_transaction(channel, queue)
        assert len(spans.named(f"send {queue}")) == 1
    finally:
        hoptrace.pika.uninstrument()
        hoptrace.pika.uninstrument()
    assert pika.channel.Channel.basic_publish is original
    spans.clear()
    other = connection.channel()
    other.basic_publish("", queue, b"z")
    assert not spans.named(f"send {queue}")


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


def test_example_runs(amqp_url: str) -> None:
    out = run_example("rabbitmq_pika", {"HOPTRACE_AMQP_URL": amqp_url})
    # Through the default exchange, both spans are named by the queue alone.
    assert re.search(r"process (orders-\w+)  <- send \1\n", out), out
