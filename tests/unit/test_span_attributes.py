"""What a hop's spans carry, and no more: each attribute is there for a reason (docs/performance.md).

The transaction ID is on the spans a trace is found by (a transaction's root, every process
span, an HTTP server span, a send with no such parent), not on sends under one of those; Kafka
spans carry no made-up message ID; RabbitMQ destinations follow the conventions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import hoptrace
from hoptrace import _amqp, _kafka
from hoptrace.cli.spanfile import group_traces, read_spans
from hoptrace.core import semconv
from hoptrace.export import JsonLinesSpanExporter

TX = semconv.TRANSACTION_ID


@pytest.fixture(params=[True, False], ids=["shortcuts", "no_shortcuts"])
def exported(request: Any, tmp_path: Path) -> Any:
    """Spans to a JSONL file, as ``hoptrace view`` reads them, with ``fast_spans`` on or off."""
    hoptrace.configure(fast_spans=request.param)
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield path
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


def by_name(path: Path) -> dict[str, Any]:
    return {span.name: span for span in read_spans(path)}


def test_sends_under_a_span_that_records_the_id_leave_it_out_yet_each_trace_is_found(
    exported: Path,
) -> None:
    with hoptrace.transaction("checkout") as tx, \
            hoptrace.produce_scope({}, "orders", "kafka") as send:
        headers = send.carrier
    hoptrace.configure(link_mode="link")  # the handler's trace: a new one, found by its own span
    with hoptrace.consume_scope(headers, "orders", "kafka"), \
            hoptrace.produce_scope({}, "invoices", "kafka"):
        pass
    spans = by_name(exported)
    root, sent = spans["checkout"], spans["send orders"]
    process, onward = spans["process orders"], spans["send invoices"]
    assert root.attributes[TX] == process.attributes[TX] == tx.transaction_id
    assert TX not in sent.attributes and TX not in onward.attributes
    assert sent.parent_span_id == root.span_id and onward.parent_span_id == process.span_id
    assert process.trace_id != root.trace_id  # two traces, each found by the ID
    traces = group_traces(read_spans(exported))
    assert len(traces) == 2
    assert {t.transaction_id for t in traces.values()} == {tx.transaction_id}


def test_a_send_records_the_id_when_no_span_above_it_does(exported: Path) -> None:
    with hoptrace.produce_scope({}, "orders", "kafka") as alone:
        pass
    tracer = trace.get_tracer("app")
    with hoptrace.transaction("checkout") as tx, tracer.start_as_current_span("pricing"), \
            hoptrace.produce_scope({}, "prices", "kafka"):
        pass  # under the user's own span: the send records it (its parent might not be kept)
    spans = by_name(exported)
    assert spans["send orders"].attributes[TX] == alone.transaction_id
    assert spans["send prices"].attributes[TX] == tx.transaction_id
    assert TX not in spans["pricing"].attributes


def test_a_send_under_a_span_of_another_transaction_records_its_own(exported: Path) -> None:
    with hoptrace.transaction("batch") as outer:
        # A context that keeps the batch's span but holds another transaction (as a handler
        # does when it adopts the ID a message carries without its trace).
        adopted = hoptrace.extract({"baggage": "transaction.id=item-7"}, context.get_current())
        token = context.attach(adopted)
        try:
            with hoptrace.produce_scope({}, "items", "kafka"):
                pass
        finally:
            context.detach(token)
        with hoptrace.produce_scope({}, "done", "kafka"):
            pass
    spans = by_name(exported)
    assert spans["batch"].attributes[TX] == outer.transaction_id
    assert spans["send items"].attributes[TX] == "item-7"
    assert TX not in spans["send done"].attributes
    assert {t.transaction_id for t in group_traces(read_spans(exported)).values()} == {
        outer.transaction_id}


def test_kafka_spans_have_no_made_up_message_id_and_no_precision_mark(exported: Path) -> None:
    with hoptrace.transaction("checkout"):
        send = _kafka.send_scope("orders", None, b"k")
        headers = send.carrier
        send.close()
    with _kafka.record_scope("orders", 2, 7, b"k", headers, 1, "billing"):
        hop = hoptrace.current_hop()
    assert hop is not None and hop.message_id == "orders-2@7"  # logs still get it
    spans = by_name(exported)
    process = spans["process orders"]
    assert sorted(process.attributes) == sorted([
        semconv.MESSAGING_SYSTEM, semconv.MESSAGING_OPERATION_NAME,
        semconv.MESSAGING_OPERATION_TYPE, semconv.MESSAGING_DESTINATION_NAME,
        semconv.MESSAGING_CONSUMER_GROUP_NAME, semconv.KAFKA_PARTITION, semconv.KAFKA_OFFSET,
        semconv.KAFKA_MESSAGE_KEY, semconv.QUEUE_WAIT_MS, TX,
    ])
    assert sorted(spans["send orders"].attributes) == sorted([
        semconv.MESSAGING_SYSTEM, semconv.MESSAGING_OPERATION_NAME,
        semconv.MESSAGING_OPERATION_TYPE, semconv.MESSAGING_DESTINATION_NAME,
        semconv.KAFKA_MESSAGE_KEY,
    ])


def test_a_rabbitmq_hop_through_the_default_exchange_is_named_by_its_queue(
    exported: Path,
) -> None:
    sent: list[Any] = []
    _amqp.publish(sent.append, None, "rabbitmq", exchange="", routing_key="orders")
    scope = _amqp.open_delivery(
        sent[0], "rabbitmq", exchange="", routing_key="orders", queue="orders",
        message_id=None, delivery_tag=3, correlation_id=None, timestamp=None,
        redelivered=False,
    )
    assert scope is not None
    scope.close()
    spans = by_name(exported)
    send, process = spans["send orders"], spans["process orders"]
    assert send.attributes[semconv.MESSAGING_DESTINATION_NAME] == "orders"
    assert process.attributes[semconv.MESSAGING_DESTINATION_NAME] == "orders"
    assert sorted(process.attributes) == sorted([
        semconv.MESSAGING_SYSTEM, semconv.MESSAGING_OPERATION_NAME,
        semconv.MESSAGING_OPERATION_TYPE, semconv.MESSAGING_DESTINATION_NAME,
        semconv.RABBITMQ_ROUTING_KEY, semconv.RABBITMQ_DELIVERY_TAG, semconv.QUEUE_WAIT_MS, TX,
    ])


@pytest.mark.parametrize(("exchange", "routing_key", "queue", "name"), [
    (None, "orders", None, "orders"),  # the default exchange is left out
    (None, "orders", "orders", "orders"),  # a queue named as its routing key: written once
    ("shop", "orders", None, "shop:orders"),
    ("shop", "orders", "orders", "shop:orders"),
    ("shop", "orders", "billing", "shop:orders:billing"),
    ("fanout", "", None, "fanout"),  # an empty routing key is left out
    ("fanout", "", "billing", "fanout:billing"),
    (None, "", None, "amq.default"),  # the default exchange, no routing key
    (None, "", "billing", "billing"),
])
def test_rabbitmq_destinations_follow_the_conventions(
    exchange: str | None, routing_key: str, queue: str | None, name: str
) -> None:
    assert semconv.rabbitmq_destination(exchange, routing_key, queue) == name
