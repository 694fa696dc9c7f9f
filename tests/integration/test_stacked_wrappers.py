"""hoptrace's patches stack with contrib's wrappers on a real Kafka broker.

contrib's aiokafka wrappers are applied with wrapt, as its instrumentor does, once before and
once after hoptrace's. hoptrace's ``uninstrument()`` must take out only its own wrapper and
leave contrib's tracing every send, and instrumenting again must trace each send once.
(Through the instrumentors themselves, hoptrace takes over from contrib instead: see
test_contrib_coexistence.py. These wrappers stand for any other tool's.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest
from opentelemetry import trace

import hoptrace
import hoptrace.aiokafka as hk

aiokafka = pytest.importorskip("aiokafka")
contrib = pytest.importorskip("opentelemetry.instrumentation.aiokafka.utils")
wrapt = pytest.importorskip("wrapt")
from opentelemetry.instrumentation.utils import unwrap  # noqa: E402

pytestmark = pytest.mark.integration

CREATED: list[str] = []
CONTRIB_SCOPE = "opentelemetry.instrumentation.aiokafka"


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


@pytest.fixture
def clean() -> Iterator[None]:
    yield
    hk.uninstrument()
    while isinstance(vars(aiokafka.AIOKafkaProducer)["send"], wrapt.FunctionWrapper):
        unwrap(aiokafka.AIOKafkaProducer, "send")


def wrap_contrib() -> None:
    tracer = trace.get_tracer(CONTRIB_SCOPE)
    wrapt.wrap_function_wrapper(aiokafka.AIOKafkaProducer, "send", contrib._wrap_send(tracer, None))


def send_one(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """Send one record inside a transaction; return the headers it was stored with."""

    async def run() -> list[tuple[str, bytes]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            with hoptrace.transaction("edge"):
                await producer.send_and_wait(topic, b"v", partition=0)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition(topic, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, end - 1)
            record = await asyncio.wait_for(original_getone(consumer), 20)
        finally:
            await consumer.stop()
        return list(record.headers)

    return asyncio.run(run())


async def original_getone(consumer: Any) -> Any:
    from hoptrace.core.patching import original_of

    return await original_of(type(consumer).getone)(consumer)


def counts(spans: Any, topic: str) -> tuple[int, int]:
    """(hoptrace send spans, contrib send spans) for ``topic``; then forget them."""
    ours = [s for s in spans.all() if s.name == f"send {topic}"]
    theirs = [s for s in spans.all() if s.instrumentation_scope.name == CONTRIB_SCOPE]
    spans.clear()
    return len(ours), len(theirs)


def hoptrace_headers(headers: list[tuple[str, bytes]]) -> bool:
    # Contrib writes traceparent and baggage too: the transaction header (set by the
    # ``header_marks_hoptrace`` fixture) tells hoptrace's writes apart.
    return any(k == "x-hoptrace-sent-ns" or k == "x-transaction-id" for k, _ in headers)


@pytest.fixture(autouse=True)
def header_marks_hoptrace() -> None:
    hoptrace.configure(transaction_header="x-transaction-id")


@pytest.mark.parametrize("contrib_first", [True, False], ids=["contrib-first", "hoptrace-first"])
def test_uninstrument_keeps_contrib_wrapper_and_reinstrument_wraps_once(
    kafka_bootstrap: str, spans: Any, clean: None, contrib_first: bool
) -> None:
    topic = f"hoptrace-stack-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    if contrib_first:
        wrap_contrib()
        hk.instrument()
    else:
        hk.instrument()
        wrap_contrib()
    headers = send_one(kafka_bootstrap, topic)
    assert counts(spans, topic) == (1, 1) and hoptrace_headers(headers)

    for _ in range(2):
        hk.uninstrument()
        headers = send_one(kafka_bootstrap, topic)
        assert counts(spans, topic) == (0, 1), "contrib's wrapper must keep tracing"
        assert not hoptrace_headers(headers)
        assert [k for k, _ in headers].count("traceparent") == 1

        hk.instrument()
        headers = send_one(kafka_bootstrap, topic)
        assert counts(spans, topic) == (1, 1), "one hoptrace wrapper, not two"
        assert hoptrace_headers(headers)
