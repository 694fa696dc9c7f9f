"""hoptrace.kombu on kombu's in-memory transport (no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import hoptrace
import hoptrace.kombu

kombu = pytest.importorskip("kombu")


@pytest.fixture
def instrumented() -> Iterator[None]:
    hoptrace.kombu.instrument()
    try:
        yield
    finally:
        hoptrace.kombu.uninstrument()


def make_queue() -> Any:
    return kombu.Queue("orders", kombu.Exchange("shop", type="direct"), routing_key="created")


def test_positional_publish_arguments_are_kept(instrumented: None, spans: Any) -> None:
    queue = make_queue()
    caller_headers = {"kept": "yes"}
    got: list[tuple[Any, dict[str, Any], str | None]] = []
    with kombu.Connection("memory://") as conn:
        with hoptrace.transaction() as tx:
            # body, routing_key, delivery_mode, mandatory, immediate, priority, content_type,
            # content_encoding, serializer, headers
            conn.Producer().publish({"n": 1}, "created", None, False, False, 3, None, None,
                                    "json", caller_headers, exchange=queue.exchange,
                                    declare=[queue])

        def handle(body: Any, message: Any) -> None:
            got.append((body, dict(message.headers), hoptrace.current_transaction_id()))
            message.ack()

        with conn.Consumer(queue, callbacks=[handle]):
            conn.drain_events(timeout=5)
    assert caller_headers == {"kept": "yes"}
    assert got[0][0] == {"n": 1} and got[0][1]["kept"] == "yes"
    assert got[0][2] == tx.transaction_id
    send = spans.one("send shop:created")
    process = spans.one("process shop:created:orders")
    assert send.attributes["messaging.system"] == "memory"
    assert process.parent is not None and process.parent.span_id == send.context.span_id


def test_handler_error_propagates_and_marks_the_span(instrumented: None, spans: Any) -> None:
    queue = make_queue()

    def handle(body: Any, message: Any) -> None:
        raise KeyError("missing sku")

    with kombu.Connection("memory://") as conn:
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="created",
                                declare=[queue])
        with conn.Consumer(queue, callbacks=[handle]):
            with pytest.raises(KeyError, match="missing sku"):
                conn.drain_events(timeout=5)
    process = spans.one("process shop:created:orders")
    assert not process.status.is_ok
    assert hoptrace.current_transaction_id() is None


def test_celery_task_messages_get_no_kombu_span(instrumented: None, spans: Any) -> None:
    celery = pytest.importorskip("celery")
    app = celery.Celery("shop", broker="memory://")
    try:
        with app.connection_for_write() as conn:
            app.send_task("shop.add", args=(1, 2), connection=conn)
            queue = kombu.Queue("celery", kombu.Exchange("celery", type="direct"),
                                routing_key="celery")
            received: list[Any] = []
            with conn.Consumer(queue, callbacks=[lambda body, message: (
                    received.append((message.headers.get("task"), hoptrace.current_hop())),
                    message.ack())]):
                conn.drain_events(timeout=5)
    finally:
        app.close()
    assert received == [("shop.add", None)]
    assert not [s for s in spans.all() if s.name.startswith(("send", "process"))]
