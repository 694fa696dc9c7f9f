"""hoptrace.kombu on the amqp (RabbitMQ) and redis transports."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

import hoptrace
import hoptrace.kombu
from hoptrace import _amqp

kombu = pytest.importorskip("kombu")
from kombu.mixins import ConsumerMixin  # noqa: E402

pytestmark = pytest.mark.integration

CRLF_TX = "tx\r\nFAKE log line"


@pytest.fixture(params=["amqp", "redis"])
def broker(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kombu URL, expected messaging.system) for each transport."""
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url"), "rabbitmq"
    return request.getfixturevalue("redis_url"), "redis"


@pytest.fixture
def instrumented() -> Iterator[None]:
    hoptrace.kombu.instrument()
    _amqp.memory.forget_all()
    try:
        yield
    finally:
        hoptrace.kombu.uninstrument()


@pytest.fixture(autouse=True)
def no_context_left_behind() -> Iterator[None]:
    yield
    assert hoptrace.current_transaction_id() is None, "a consume scope stayed attached"


@pytest.fixture
def queue(broker: tuple[str, str]) -> Iterator[Any]:
    name = f"hoptrace-kombu-{uuid.uuid4().hex[:10]}"
    q = kombu.Queue(name, kombu.Exchange(name, type="direct", auto_delete=True),
                    routing_key="orders.created", auto_delete=True)
    yield q
    with kombu.Connection(broker[0]) as conn:
        try:
            q(conn.channel()).delete()
        except Exception:
            pass


def publish_in_transaction(conn: Any, queue: Any, body: Any, **kwargs: Any) -> str:
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction("publish") as tx:
            conn.Producer().publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                                    declare=[queue], **kwargs)
    finally:
        otel_context.detach(token)
    assert tx.transaction_id
    return tx.transaction_id


def seen_now() -> dict[str, Any]:
    return {"tx": hoptrace.current_transaction_id(), "trace": hoptrace.current_trace_id(),
            "tenant": baggage.get_baggage("tenant"), "span": hoptrace.current_span_id()}


def test_handler_run_inside_another_publish_keeps_its_own_trace(
    broker: tuple[str, str], instrumented: None, queue: Any, spans: Any
) -> None:
    """py-amqp drains incoming deliveries while it publishes, so with one connection a
    consumer's handler can run inside an unrelated ``publish``: its message's own trace wins.
    """
    url, _system = broker
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    with kombu.Connection(url) as conn:

        def handle(body: Any, message: Any) -> None:
            seen.append({**seen_now(), "n": body["n"]})
            message.ack()

        with conn.Consumer(queue, callbacks=[handle]):
            for n in range(6):
                with hoptrace.transaction("publish") as tx:
                    conn.Producer().publish({"n": n}, exchange=queue.exchange,
                                            routing_key=queue.routing_key, declare=[queue])
                    sent.append({"n": n, "tx": tx.transaction_id,
                                 "trace": hoptrace.current_trace_id()})
            while len(seen) < len(sent):
                conn.drain_events(timeout=10)
    assert sorted((s["n"], s["tx"], s["trace"]) for s in seen) == [
        (s["n"], s["tx"], s["trace"]) for s in sent
    ]
    for process in spans.named(f"process {queue.name}:orders.created:{queue.name}"):
        assert not process.links, [dict(link.attributes) for link in process.links]


def test_publish_and_consumer_callbacks(broker: tuple[str, str], instrumented: None, queue: Any,
                                        spans: Any) -> None:
    url, system = broker
    caller_headers = {"kept": "yes"}
    seen: list[dict[str, Any]] = []
    with kombu.Connection(url) as conn:
        tx = publish_in_transaction(conn, queue, {"n": 1}, headers=caller_headers,
                                    message_id="m-1", correlation_id="c-1")

        def handle(body: Any, message: Any) -> None:
            seen.append({**seen_now(), "headers": dict(message.headers)})
            message.ack()

        with conn.Consumer(queue, callbacks=[handle]):
            conn.drain_events(timeout=10)
    assert caller_headers == {"kept": "yes"}
    assert len(seen) == 1 and seen[0]["tx"] == tx and seen[0]["tenant"] == "acme"
    assert seen[0]["headers"]["kept"] == "yes"
    name = queue.name
    send = spans.one(f"send {name}:orders.created")
    process = spans.one(f"process {name}:orders.created:{name}")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert seen[0]["span"] == f"{process.context.span_id:016x}"
    assert send.attributes["messaging.system"] == system
    assert process.attributes["messaging.system"] == system
    assert send.attributes["messaging.message.id"] == "m-1"
    assert process.attributes["messaging.message.id"] == "m-1"
    assert process.attributes["messaging.message.conversation_id"] == "c-1"
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == "orders.created"


def test_consumer_mixin_and_on_message(broker: tuple[str, str], instrumented: None, queue: Any,
                                       spans: Any) -> None:
    url, _ = broker
    seen: list[dict[str, Any]] = []

    class Worker(ConsumerMixin):  # type: ignore[misc]
        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
            return [consumer_cls(queues=[queue], callbacks=[self.on_task])]

        def on_task(self, body: Any, message: Any) -> None:
            seen.append(seen_now())
            message.ack()
            self.should_stop = True

    with kombu.Connection(url) as conn:
        tx = publish_in_transaction(conn, queue, {"n": 1})
        Worker(conn).run()
        tx2 = publish_in_transaction(conn, queue, {"n": 2})

        def on_message(message: Any) -> None:
            seen.append(seen_now())
            message.ack()

        with conn.Consumer(queue, on_message=on_message):
            conn.drain_events(timeout=10)
    assert [s["tx"] for s in seen] == [tx, tx2]
    assert all(s["tenant"] == "acme" for s in seen)
    processes = spans.named(f"process {queue.name}:orders.created:{queue.name}")
    sends = spans.named(f"send {queue.name}:orders.created")
    assert sorted(p.parent.span_id for p in processes) == sorted(s.context.span_id for s in sends)


def test_celery_task_messages_are_left_to_hoptrace_celery(
    broker: tuple[str, str], instrumented: None, queue: Any, spans: Any
) -> None:
    url, _ = broker
    received: list[Any] = []
    with kombu.Connection(url) as conn:
        conn.Producer().publish({"args": []}, exchange=queue.exchange,
                                routing_key=queue.routing_key, declare=[queue],
                                headers={"task": "app.add", "id": "t-1"})
        with conn.Consumer(queue, callbacks=[lambda b, m: (received.append(
                hoptrace.current_hop()), m.ack())]):
            conn.drain_events(timeout=10)
    assert received == [None]
    assert not [s for s in spans.all() if s.name.startswith(("send", "process"))]


def test_publish_already_traced_by_produce_scope_gets_one_span(
    broker: tuple[str, str], instrumented: None, queue: Any, spans: Any
) -> None:
    url, system = broker
    with kombu.Connection(url) as conn:
        with hoptrace.produce_scope({}, "outer", system) as send:
            conn.Producer().publish({"n": 1}, exchange=queue.exchange,
                                    routing_key=queue.routing_key, declare=[queue],
                                    headers=send.carrier)
        parents: list[str | None] = []
        with conn.Consumer(queue, callbacks=[lambda b, m: (parents.append(
                hoptrace.current_span_id()), m.ack())]):
            conn.drain_events(timeout=10)
    outer = spans.one("send outer")
    assert not spans.named(f"send {queue.name}:orders.created")
    process = spans.one(f"process {queue.name}:orders.created:{queue.name}")
    assert process.parent is not None and process.parent.span_id == outer.context.span_id
    assert parents == [f"{process.context.span_id:016x}"]


def test_requeue_links_redelivery_to_first_attempt(amqp_url: str, instrumented: None,
                                                   spans: Any) -> None:
    name = f"hoptrace-kombu-{uuid.uuid4().hex[:10]}"
    queue = kombu.Queue(name, kombu.Exchange("", type="direct"), routing_key=name,
                        auto_delete=True)
    attempts: list[tuple[bool, str | None]] = []
    with kombu.Connection(amqp_url) as conn:
        tx = publish_in_transaction(conn, queue, {"n": 1})

        def handle(body: Any, message: Any) -> None:
            attempts.append((message.delivery_info["redelivered"],
                             hoptrace.current_transaction_id()))
            if len(attempts) == 1:
                message.requeue()
            else:
                message.ack()

        with conn.Consumer(queue, callbacks=[handle]):
            while len(attempts) < 2:
                conn.drain_events(timeout=10)
    assert attempts == [(False, tx), (True, tx)]
    first, second = sorted(spans.named(f"process {name}"),
                           key=lambda s: s.start_time)
    assert [link.context.span_id for link in second.links] == [first.context.span_id]


def test_bad_headers_run_callback_once_in_fresh_trace(
    broker: tuple[str, str], queue: Any, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = broker
    bad: list[dict[str, Any]] = [
        {"traceparent": 12345, "x-transaction-id": CRLF_TX},
        {"traceparent": None, "baggage": {"nested": {"table": 1}}, "x-transaction-id": None},
        {"traceparent": "00-zz", "baggage": "k=" + "v" * 20_000, "x-transaction-id": 7},
    ]
    if url.startswith("amqp"):
        bad.append({"traceparent": b"\xff\xfe00-not-utf8", "x-transaction-id": b"\xff"})
    seen: list[tuple[int, str | None]] = []
    with kombu.Connection(url) as conn:
        for index, headers in enumerate(bad):
            conn.Producer().publish({"n": index}, exchange=queue.exchange,
                                    routing_key=queue.routing_key, declare=[queue],
                                    headers=headers)
        hoptrace.kombu.instrument()
        try:
            with caplog.at_level(logging.WARNING, logger="hoptrace"):
                with conn.Consumer(queue, callbacks=[lambda b, m: (seen.append(
                        (b["n"], hoptrace.current_transaction_id())), m.ack())]):
                    while len(seen) < len(bad):
                        conn.drain_events(timeout=10)
        finally:
            hoptrace.kombu.uninstrument()
    assert sorted(n for n, _ in seen) == list(range(len(bad)))
    assert all(tx and "\r" not in tx and tx != "7" for _, tx in seen)
    processes = [s for s in spans.all() if s.name.startswith("process")]
    assert len(processes) == len(bad) and all(p.parent is None for p in processes)
    assert hoptrace.rejections() >= len(bad)
    assert any(r.name == "hoptrace" for r in caplog.records)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_uninstrument_restores_kombu(broker: tuple[str, str], queue: Any, spans: Any) -> None:
    from kombu.messaging import Producer

    original = Producer.publish
    hoptrace.kombu.instrument()
    hoptrace.kombu.instrument()
    assert Producer.publish is not original
    hoptrace.kombu.uninstrument()
    hoptrace.kombu.uninstrument()
    assert Producer.publish is original
    done = threading.Event()
    with kombu.Connection(broker[0]) as conn:
        conn.Producer().publish({"n": 1}, exchange=queue.exchange,
                                routing_key=queue.routing_key, declare=[queue])
        with conn.Consumer(queue, callbacks=[lambda b, m: (done.set(), m.ack())]):
            conn.drain_events(timeout=10)
    assert done.is_set()
    assert spans.all() == []


def run_example(name: str, env: dict[str, str], *args: str) -> str:
    """Run examples/NAME.py; check every log line of the hop carries one transaction ID."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    txs = re.findall(r"^orders\s+tx=(\S+) trace=(\S+)", proc.stdout, re.M)
    assert len(txs) == 2 and txs[0] == txs[1] and txs[0][0] != "None", proc.stdout
    assert f"one transaction ID across the hop: {txs[0][0]} (ok)" in proc.stdout
    return proc.stdout


def test_example_runs(broker: tuple[str, str]) -> None:
    url, system = broker
    if system == "redis":  # `python examples/rabbitmq_kombu.py redis`: HOPTRACE_REDIS_URL
        run_example("rabbitmq_kombu", {"HOPTRACE_REDIS_URL": url}, "redis")
    else:
        run_example("rabbitmq_kombu", {"HOPTRACE_AMQP_URL": url})
