"""hoptrace.pika and the shared AMQP helpers without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.trace import SpanContext, TraceFlags

import hoptrace
import hoptrace.pika
from hoptrace import _amqp
from hoptrace.core.propagator import baggage_entry

pika = pytest.importorskip("pika")


def test_traced_publish_passes_a_copy_positionally_and_by_keyword(spans: Any) -> None:
    calls: list[tuple[Any, ...]] = []

    @hoptrace.pika.traced_publish
    def publish(exchange: str, routing_key: str, body: bytes, properties: Any = None,
                mandatory: bool = False) -> str:
        calls.append((exchange, routing_key, body, properties, mandatory))
        return "sent"

    props = pika.BasicProperties(headers={"a": "1"}, message_id="m")
    with hoptrace.transaction() as tx:
        assert publish("ex", "rk", b"1", props, True) == "sent"
        assert publish(exchange="", routing_key="q", body=b"2") == "sent"
    assert props.headers == {"a": "1"}
    first, second = calls
    assert first[3] is not props and first[3].message_id == "m" and first[4] is True
    assert first[3].headers["a"] == "1"
    assert baggage_entry(first[3].headers["baggage"], "transaction.id") == tx.transaction_id
    assert baggage_entry(second[3].headers["baggage"], "transaction.id") == tx.transaction_id
    assert [s.name for s in spans.all() if s.name.startswith("send")] == [
        "send ex:rk", "send q"]


def test_traced_publish_errors_propagate_unchanged_and_mark_the_span(spans: Any) -> None:
    @hoptrace.pika.traced_publish
    def publish(exchange: str, routing_key: str, body: bytes, properties: Any = None) -> None:
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError, match="broker gone"):
        publish("", "q", b"x")
    span = spans.one("send q")
    assert not span.status.is_ok


def test_non_dict_headers_publish_untouched_and_count_an_internal_error() -> None:
    sent: list[Any] = []
    publish = hoptrace.pika.traced_publish(lambda e, r, b, p=None: sent.append(p))
    props = pika.BasicProperties(headers="not a table")
    publish("", "q", b"x", props)
    assert sent == [props]
    assert any(k.startswith("internal_error.pika") for k in hoptrace.diagnostics())


@pytest.mark.parametrize("mode", ["propagation_only", "no_sdk"])
def test_basic_publish_without_spans_writes_the_headers_into_a_copy(
    mode: str, request: pytest.FixtureRequest
) -> None:
    """With no span to make, basic_publish only writes the headers (no context attached)."""
    if mode == "propagation_only":
        request.getfixturevalue("spans")
        hoptrace.configure(propagation_only=True)
    sent: list[Any] = []
    seen: list[Any] = []

    def original(channel: Any, exchange: str, routing_key: str, body: bytes, properties: Any,
                 mandatory: bool) -> None:
        sent.append(properties)
        seen.append(hoptrace.current_transaction_id())

    publish = hoptrace.pika._wrap_basic_publish(original)
    props = pika.BasicProperties(headers={"a": "1"}, message_id="m")
    with hoptrace.transaction() as tx:
        trace_id = hoptrace.current_trace_id()
        publish(None, "", "q", b"1", props)
    publish(None, "", "q", b"2", None)
    publish(None, "", "q", b"3", props)
    assert props.headers == {"a": "1"}
    first, second, third = sent
    assert first is not props and first.message_id == "m" and first.headers["a"] == "1"
    assert baggage_entry(first.headers["baggage"], "transaction.id") == tx.transaction_id
    assert seen[0] == tx.transaction_id
    # Outside a transaction each publish starts its own, and its own trace.
    ids = [baggage_entry(h.headers["baggage"], "transaction.id") for h in (first, second, third)]
    assert len(set(ids)) == 3
    assert first.headers["traceparent"][3:35] == trace_id
    if mode == "no_sdk":  # with no SDK, each publish outside a trace mints its own
        assert len({h.headers["traceparent"][3:35] for h in (first, second, third)}) == 3
    else:  # with one, propagation-only sends a trace only from an active span
        assert "traceparent" not in second.headers and "traceparent" not in third.headers
    assert all(h.headers["baggage"] == f"transaction.id={i}" and "x-transaction-id" not in h.headers
               for h, i in zip((first, second, third), ids, strict=True))
    assert hoptrace.current_transaction_id() is None


def test_basic_publish_inside_a_traced_publish_gets_no_second_injection(spans: Any) -> None:
    hoptrace.configure(propagation_only=True)
    sent: list[Any] = []
    handed: list[Any] = []
    inner = hoptrace.pika._wrap_basic_publish(
        lambda channel, exchange, routing_key, body, properties, mandatory: sent.append(
            properties)
    )

    @hoptrace.pika.traced_publish
    def outer(exchange: str, routing_key: str, body: bytes, properties: Any = None) -> None:
        handed.append(properties)
        inner(None, exchange, routing_key, body, properties)

    with hoptrace.transaction() as tx:
        outer("", "q", b"x", pika.BasicProperties(headers={}))
    assert sent[0] is handed[0]  # passed through, not copied and injected again
    assert baggage_entry(sent[0].headers["baggage"], "transaction.id") == tx.transaction_id


def test_callback_wrapper_closes_the_scope_when_the_handler_raises(spans: Any) -> None:
    def handler(ch: Any, method: Any, props: Any, body: bytes) -> None:
        raise ValueError("bad order")

    wrapped = hoptrace.pika._wrap_callback("q", handler)
    assert hoptrace.pika._wrap_callback("q", wrapped) is wrapped
    method = pika.spec.Basic.Deliver(delivery_tag=3, exchange="", routing_key="q")
    with pytest.raises(ValueError, match="bad order"):
        wrapped(None, method, pika.BasicProperties(headers=None), b"")
    span = spans.one("process q")
    assert span.attributes["messaging.rabbitmq.message.delivery_tag"] == 3
    assert not span.status.is_ok
    assert hoptrace.current_transaction_id() is None


def test_delivery_memory_is_bounded_and_links_by_message_identity() -> None:
    memory = _amqp.DeliveryMemory(size=2)
    contexts = [SpanContext(1, i + 1, False, TraceFlags(1)) for i in range(3)]
    keys = [_amqp.message_key({"traceparent": f"tp{i}"}, None) for i in range(3)]
    for key, ctx in zip(keys, contexts, strict=True):
        memory.remember(key, ctx)
    assert len(memory) == 2
    assert memory.links(keys[0], {}) is None
    assert memory.links(keys[2], {}, redelivered=False) is None
    links = memory.links(keys[2], {"x-death": [{"queue": "q"}]})
    assert links is not None and links[0].context == contexts[2]
    assert links[0].attributes == {"hoptrace.link.reason": "dead_letter"}
    assert _amqp.message_key({"traceparent": b"raw"}, None) is None
    assert _amqp.message_key(None, "id-1") == _amqp.message_key(None, "id-1")
    assert _amqp.message_key(None, "id-1") != _amqp.message_key(None, "id-2")


def test_processing_gives_a_delivery_exact_boundaries_and_records_errors(spans: Any) -> None:
    with hoptrace.transaction("edge") as tx:
        headers = hoptrace.inject({})
    method = pika.spec.Basic.Deliver(delivery_tag=3, exchange="", routing_key="q")
    properties = pika.BasicProperties(headers=headers)
    with hoptrace.pika.processing(method, properties, "q"):
        assert hoptrace.current_transaction_id() == tx.transaction_id
    assert hoptrace.current_transaction_id() is None
    with pytest.raises(ValueError), hoptrace.pika.processing(method, properties, "q"):
        raise ValueError("handler failed")
    first, second = spans.named("process q")
    assert first.status.is_ok and not second.status.is_ok
    assert first.attributes["messaging.rabbitmq.message.delivery_tag"] == 3
