"""The held-scope rule on a real broker (confluent-kafka): what a batch produced between two
polls joins.

Held (the default), a record produced after ``poll()`` returned a message is a child of that
message's ``process`` span. After the message's settle point (``commit()``), or with
``hold_consume_scope=False``, it is not: it starts its own trace (or joins the surrounding one).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace

confluent_kafka = pytest.importorskip("confluent_kafka")
import hoptrace.confluent_kafka as hc  # noqa: E402

pytestmark = pytest.mark.integration

CREATED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _delete_topics(kafka_bootstrap: str) -> Iterator[None]:
    yield
    brokers.delete_kafka_topics(kafka_bootstrap, CREATED)


def new_topic() -> str:
    topic = f"hoptrace-held-{uuid.uuid4().hex[:10]}"
    CREATED.append(topic)
    return topic


def consume_one_then_produce(bootstrap: str, settle: str | None) -> tuple[str, str]:
    """Consume one record, produce a batch of three to another topic, poll again.

    ``settle``: ``"commit"`` or ``"store_offsets"`` between handling and producing, or None.
    Returns the source and target topics.
    """
    source, target = new_topic(), new_topic()
    producer = hc.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    with hoptrace.transaction("upstream"):
        producer.produce(source, b"in")
    assert producer.flush(15) == 0
    consumer = hc.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": settle != "store_offsets",
        "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(source, 0, confluent_kafka.OFFSET_BEGINNING)])
    try:
        message = None
        for _ in range(30):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        if settle == "commit":
            consumer.commit(message=message, asynchronous=False)
        elif settle == "store_offsets":
            consumer.store_offsets(message=message)
        for i in range(3):  # unrelated work of the same loop
            producer.produce(target, f"out-{i}".encode())
        assert producer.flush(15) == 0
        consumer.poll(0.1)
    finally:
        consumer.close()
    return source, target


def process_and_batch(spans: Any, source: str, target: str) -> tuple[Any, list[Any]]:
    """Return the consumed record's ``process`` span and the batch's three ``send`` spans."""
    batch = spans.named(f"send {target}")
    assert len(batch) == 3
    return spans.one(f"process {source}"), batch


def test_held_a_batch_produced_between_polls_joins_the_last_consumed_trace(
    kafka_bootstrap: str, spans: Any
) -> None:
    process, batch = process_and_batch(spans, *consume_one_then_produce(kafka_bootstrap, None))
    assert all(s.context.trace_id == process.context.trace_id for s in batch)
    assert all(s.parent is not None and s.parent.span_id == process.context.span_id
               for s in batch)


@pytest.mark.parametrize("settle", ["commit", "store_offsets"])
def test_after_the_settle_point_a_batch_starts_its_own_traces(
    kafka_bootstrap: str, spans: Any, settle: str
) -> None:
    process, batch = process_and_batch(spans, *consume_one_then_produce(kafka_bootstrap, settle))
    assert all(s.context.trace_id != process.context.trace_id for s in batch)
    assert all(s.parent is None for s in batch)


def test_with_holding_off_a_batch_starts_its_own_traces(
    kafka_bootstrap: str, spans: Any
) -> None:
    hoptrace.configure(hold_consume_scope=False)
    source, target = consume_one_then_produce(kafka_bootstrap, None)
    assert not spans.named(f"process {source}")
    (upstream,) = spans.named(f"send {source}")
    batch = spans.named(f"send {target}")
    assert len(batch) == 3 and all(s.parent is None for s in batch)
    assert upstream.context.trace_id not in {s.context.trace_id for s in batch}
