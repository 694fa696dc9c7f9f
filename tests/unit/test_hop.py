"""produce_scope / consume_scope / receive_scope: span names, kinds, parents, links, waits."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, StatusCode

import hoptrace
from hoptrace.core import semconv


def publish(destination: str = "orders", carrier: Any = None) -> dict[str, Any]:
    with hoptrace.produce_scope(carrier, destination, "rabbitmq", message_id="m-1") as send:
        pass
    return send.carrier  # type: ignore[no-any-return]


def test_consumer_span_is_a_child_of_the_producer_span(spans: Any) -> None:
    with hoptrace.transaction("checkout") as tx:
        headers = publish()
    with hoptrace.consume_scope(headers, "orders", "rabbitmq", message_id="m-1"):
        inside_tx = hoptrace.current_transaction_id()
        inside_trace = hoptrace.current_trace_id()
    send, process, root = spans.one("send orders"), spans.one("process orders"), spans.one("checkout")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.parent.span_id == root.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id == root.context.trace_id
    assert inside_trace == f"{root.context.trace_id:032x}"
    assert inside_tx == tx.transaction_id
    assert process.attributes[semconv.TRANSACTION_ID] == tx.transaction_id
    assert process.attributes[semconv.MESSAGING_OPERATION_TYPE] == "process"
    assert process.attributes[semconv.MESSAGING_MESSAGE_ID] == "m-1"
    assert send.attributes[semconv.MESSAGING_OPERATION_NAME] == "send"
    assert send.attributes[semconv.MESSAGING_DESTINATION_NAME] == "orders"


def test_the_producer_span_is_current_while_sending(spans: Any) -> None:
    with hoptrace.produce_scope({}, "orders", "kafka") as send:
        current = trace.get_current_span().get_span_context().span_id
    assert current == spans.one("send orders").context.span_id
    assert send.carrier["traceparent"].split("-")[2] == f"{current:016x}"


def test_link_mode_starts_a_new_trace_that_links_and_keeps_ids(spans: Any) -> None:
    hoptrace.configure(link_mode="link")
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with hoptrace.transaction() as tx:
            headers = publish()
    finally:
        context.detach(token)
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        inside_tx = hoptrace.current_transaction_id()
        tenant = baggage.get_baggage("tenant")
    send, process = spans.one("send orders"), spans.one("process orders")
    assert process.parent is None
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert inside_tx == tx.transaction_id
    assert tenant == "acme"


def test_untrusted_incoming_links_and_drops_baggage(spans: Any) -> None:
    hoptrace.configure(trust_incoming=False)
    headers = {
        "traceparent": f"00-{'a' * 32}-{'b' * 16}-01",
        "baggage": "role=admin",
        "x-transaction-id": "client-7",
    }
    with hoptrace.consume_scope(headers, "api", "http"):
        role = baggage.get_baggage("role")
        tx = hoptrace.current_transaction_id()
    process = spans.one("process api")
    assert process.parent is None and process.context.trace_id != int("a" * 32, 16)
    assert process.links[0].context.trace_id == int("a" * 32, 16)
    assert process.links[0].attributes[semconv.LINK_REASON] == "untrusted"
    assert role is None
    # An untrusted sender never chooses the transaction its messages join.
    assert tx is not None and tx != "client-7"
    assert process.attributes[semconv.TRANSACTION_ID] == tx
    assert process.attributes[semconv.TRANSACTION_UPSTREAM_ID] == "client-7"


def test_untrusted_message_without_traceparent_keeps_no_baggage(spans: Any) -> None:
    hoptrace.configure(trust_incoming=False)
    with hoptrace.consume_scope({"baggage": "role=admin,transaction.id=client-8"}, "api", "http"):
        role = baggage.get_baggage("role")
        tx = hoptrace.current_transaction_id()
    assert role is None and tx != "client-8"


def test_ambient_span_stays_parent_and_producer_becomes_a_link(spans: Any) -> None:
    headers = publish()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("ambient") as ambient:
        with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
            pass
    process, send = spans.one("process orders"), spans.one("send orders")
    assert process.parent.span_id == ambient.get_span_context().span_id
    assert process.links[0].context.span_id == send.context.span_id


def test_missing_context_gets_a_fresh_trace_and_transaction(spans: Any) -> None:
    with hoptrace.consume_scope({}, "orders", "rabbitmq"):
        tx = hoptrace.current_transaction_id()
        trace_id = hoptrace.current_trace_id()
    process = spans.one("process orders")
    assert process.parent is None
    assert trace_id == f"{process.context.trace_id:032x}"
    assert tx and re.fullmatch(r"[0-9a-f]{32}", tx)


def test_handler_exception_propagates_unchanged_and_marks_the_span(spans: Any) -> None:
    class Boom(Exception):
        pass

    error = Boom("payment declined")
    with pytest.raises(Boom) as raised, hoptrace.consume_scope(publish(), "orders", "rabbitmq"):
        raise error
    assert raised.value is error
    process = spans.one("process orders")
    assert process.status.status_code is StatusCode.ERROR
    assert process.events[0].name == "exception"
    assert hoptrace.current_transaction_id() is None  # context detached


def test_context_is_restored_after_the_scope(spans: Any) -> None:
    before = context.get_current()
    with hoptrace.consume_scope(publish(), "orders", "rabbitmq"):
        assert hoptrace.current_hop() == hoptrace.HopInfo("rabbitmq", "orders", None)
    assert context.get_current() is before
    assert hoptrace.current_hop() is None


def test_queue_wait_is_recorded(spans: Any) -> None:
    headers = publish()
    with hoptrace.consume_scope(headers, "orders", "rabbitmq") as scope:
        pass
    wait = spans.one("process orders").attributes[semconv.QUEUE_WAIT_MS]
    assert wait == scope.queue_wait_ms
    assert wait >= 0
    assert semconv.CLOCK_SKEW not in spans.one("process orders").attributes


def test_negative_queue_wait_is_clamped_and_flagged(spans: Any) -> None:
    import time

    headers = {"x-hoptrace-sent-ns": str(time.time_ns() + 60 * 10**9)}  # a minute ahead
    with hoptrace.consume_scope(headers, "orders", "rabbitmq") as scope:
        pass
    attrs = spans.one("process orders").attributes
    assert scope.queue_wait_ms == 0.0 and attrs[semconv.QUEUE_WAIT_MS] == 0.0
    assert attrs[semconv.CLOCK_SKEW] is True
    assert hoptrace.diagnostics()["clock_skew"] == 1


def test_broker_timestamp_is_used_when_no_send_time_header(spans: Any) -> None:
    import time

    sent = time.time_ns() - 250 * 10**6
    with hoptrace.consume_scope({}, "t", "kafka", sent_ns=sent) as scope:
        pass
    assert scope.queue_wait_ms is not None and scope.queue_wait_ms >= 250


def test_explicit_links_to_an_earlier_attempt(spans: Any) -> None:
    headers = publish()
    with hoptrace.consume_scope(headers, "orders", "rabbitmq") as first:
        pass
    assert first.span_context is not None
    with hoptrace.consume_scope(headers, "orders", "rabbitmq", links=[first.span_context]):
        pass
    attempts = spans.named("process orders")
    assert attempts[1].links[0].context.span_id == attempts[0].context.span_id
    assert attempts[1].parent.span_id == attempts[0].parent.span_id  # siblings, no nesting


def test_receive_scope_links_each_message(spans: Any) -> None:
    batch = [(publish("t"), f"id-{i}") for i in range(3)] + [({}, "no-context")]
    with hoptrace.receive_scope(batch, "t", "kafka"):
        pass
    receive = spans.one("receive t")
    sends = spans.named("send t")
    assert receive.kind is SpanKind.CLIENT
    assert receive.attributes[semconv.MESSAGING_BATCH_MESSAGE_COUNT] == 4
    assert [link.context.span_id for link in receive.links] == [s.context.span_id for s in sends]
    assert [link.attributes[semconv.MESSAGING_MESSAGE_ID] for link in receive.links] == [
        "id-0", "id-1", "id-2"
    ]


def test_propagation_only_creates_no_spans_but_propagates(spans: Any) -> None:
    hoptrace.configure(propagation_only=True)
    with hoptrace.transaction("edge") as tx:
        trace_id = hoptrace.current_trace_id()
        headers = publish()
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        assert hoptrace.current_trace_id() == trace_id
        assert hoptrace.current_transaction_id() == tx.transaction_id
    with hoptrace.receive_scope([(headers, "1")], "orders", "rabbitmq"):
        pass
    assert spans.all() == []


def test_without_sdk_ids_still_flow_across_hops(no_sdk: None) -> None:
    with hoptrace.transaction("edge") as tx:
        trace_id = hoptrace.current_trace_id()
        first = publish()
    with hoptrace.consume_scope(first, "a", "rabbitmq"):
        assert hoptrace.current_trace_id() == trace_id
        second = publish("b")
    with hoptrace.consume_scope(second, "b", "kafka"):
        assert hoptrace.current_trace_id() == trace_id
        assert hoptrace.current_transaction_id() == tx.transaction_id
    assert trace_id is not None


def test_internal_error_never_reaches_the_handler(spans: Any, monkeypatch: Any) -> None:
    from hoptrace.core import hop

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(hop, "start_span", broken)
    ran = []
    with hoptrace.transaction() as tx, hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
        ran.append(True)
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq"):
        ran.append(hoptrace.current_transaction_id())
    assert ran == [True, tx.transaction_id]
    assert "traceparent" in send.carrier
    counts = hoptrace.diagnostics()
    assert counts["internal_error.consume_scope.span"] == 1
    assert counts["internal_error.produce_scope.span"] == 1


def test_scope_works_with_async_with(spans: Any) -> None:
    async def main() -> str | None:
        async with hoptrace.consume_scope(publish(), "orders", "rabbitmq"):
            await asyncio.sleep(0)
            return hoptrace.current_transaction_id()

    assert asyncio.run(main()) is not None
    assert spans.one("process orders")


def test_open_close_api_for_iterators(spans: Any) -> None:
    scope = hoptrace.consume_scope(publish(), "orders", "rabbitmq").open()
    assert hoptrace.current_hop() is not None
    scope.close()
    scope.close()  # idempotent
    assert hoptrace.current_hop() is None
    assert len(spans.named("process orders")) == 1


def test_bad_carrier_to_produce_scope_is_a_clear_error(spans: Any) -> None:
    with pytest.raises(TypeError, match="unsupported carrier"), hoptrace.produce_scope(
        object(), "orders", "rabbitmq"  # type: ignore[arg-type]
    ):
        pass
    assert hoptrace.current_trace_id() is None


def test_without_sdk_the_send_block_and_the_message_share_a_trace(no_sdk: None) -> None:
    with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
        in_block = hoptrace.current_trace_id(), hoptrace.current_transaction_id()
    assert in_block[0] == send.carrier["traceparent"][3:35]
    assert send.carrier["baggage"] == f"transaction.id={send.transaction_id}" != "transaction.id="
    assert in_block[1] == send.transaction_id and "x-transaction-id" not in send.carrier
    assert hoptrace.current_trace_id() is None


def test_detach_now_end_later_for_acknowledged_sends(spans: Any) -> None:
    import threading

    scope = hoptrace.produce_scope([], "t", "kafka").open()
    scope.release_context()
    assert hoptrace.current_trace_id() is None  # context gone, span still open
    assert spans.named("send t") == []
    ack = threading.Thread(target=lambda: (scope.set_attribute("messaging.kafka.offset", 7), scope.close()))
    ack.start()
    ack.join()
    send = spans.one("send t")
    assert send.attributes["messaging.kafka.offset"] == 7


def test_late_close_does_not_bring_back_a_stale_context(spans: Any) -> None:
    """poll()-style scopes close at the next call, after the caller's own scopes changed."""
    tracer = trace.get_tracer("test")
    headers = publish()
    pending = None
    parents = []
    for i in range(3):
        with tracer.start_as_current_span(f"iteration-{i}") as iteration:
            if pending is not None:
                pending.close()
            pending = hoptrace.consume_scope(headers, "orders", "kafka").open()
            parents.append((iteration, hoptrace.current_trace_id()))
    pending.close()
    assert trace.get_current_span() is trace.INVALID_SPAN
    processes = spans.named("process orders")
    assert [p.parent.span_id for p in processes] == [
        it.get_span_context().span_id for it, _ in parents
    ]


def test_closing_a_generator_is_not_an_error(spans: Any) -> None:
    headers = publish()

    def records() -> Any:
        with hoptrace.consume_scope(headers, "orders", "kafka"):
            yield 1
            yield 2

    for _ in records():
        break
    assert spans.one("process orders").status.status_code is StatusCode.UNSET


def test_a_scope_opened_inside_another_message_scope_keeps_its_own_trace(spans: Any) -> None:
    first, second = publish("a"), publish("b")
    with hoptrace.consume_scope(first, "a", "kafka"):
        with hoptrace.consume_scope(second, "b", "kafka"):
            pass
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("user work"), hoptrace.consume_scope(second, "b", "kafka"):
            pass
    inner, under_user = spans.named("process b")
    assert inner.parent.span_id == spans.one("send b").context.span_id and not inner.links
    assert under_user.parent.span_id == spans.one("user work").context.span_id
    assert under_user.links[0].context.span_id == spans.one("send b").context.span_id


@pytest.mark.parametrize("mode", ["spans", "propagation_only", "no_sdk"])
def test_attribute_callables_run_only_when_a_span_records(
    mode: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("no_sdk" if mode == "no_sdk" else "spans")
    if mode == "propagation_only":
        hoptrace.configure(propagation_only=True)
    calls: list[str] = []

    def attrs() -> dict[str, str]:
        calls.append("built")
        return {"messaging.rabbitmq.destination.routing_key": "orders"}

    with hoptrace.produce_scope({}, "orders", "rabbitmq", attributes=attrs) as send:
        pass
    with hoptrace.consume_scope(send.carrier, "orders", "rabbitmq", attributes=attrs):
        pass
    assert calls == (["built", "built"] if mode == "spans" else [])
    assert hoptrace.spans_active() is False or mode == "spans"


@pytest.mark.parametrize("fast_spans", [True, False])
def test_sampler_sees_the_messages_baggage_when_the_process_span_starts(
    fast_spans: bool,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    seen: list[object] = []

    class Recording(Sampler):
        def should_sample(self, parent_context: Any, *args: Any, **kwargs: Any) -> SamplingResult:
            seen.append(baggage.get_baggage("tenant", parent_context))
            return SamplingResult(Decision.RECORD_AND_SAMPLE)

        def get_description(self) -> str:
            return "recording"

    hoptrace.configure(fast_spans=fast_spans)
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = TracerProvider(sampler=Recording())  # type: ignore[attr-defined]
    try:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            headers = hoptrace.inject({})
        finally:
            context.detach(token)
        seen.clear()
        with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
            pass
    finally:
        trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]
    assert seen == ["acme"]
