"""A Kafka send that makes no span still ends its scope, so metrics count it.

Without a span (``propagation_only=True``, or no SDK) nothing awaits the broker's ack; the
send scope used to stay open for good and ``messaging.client.sent.messages`` never counted
the send. No broker: the clients' send calls are stand-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hoptrace
from hoptrace import _kafka
from hoptrace import aiokafka as hop_aiokafka
from hoptrace import confluent_kafka as hop_confluent
from hoptrace import kafka_python as hop_kafka_python
from hoptrace.core import metrics
from hoptrace.core.propagator import baggage_entry


@pytest.fixture
def reader(spans: Any) -> Iterator[InMemoryMetricReader]:
    hoptrace.configure(propagation_only=True)
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    metrics.use_meter_provider(provider)
    try:
        assert not _kafka.headers_only()  # metrics on: the send keeps its scope
        yield metric_reader
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def sent_counts(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    return {
        p.attributes["messaging.destination.name"]: p.value
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics for m in s.metrics if m.name == metrics.SENT_MESSAGES
        for p in m.data.data_points
    }


class Future:
    """kafka-python's and aiokafka's send futures, as far as hoptrace uses them."""

    def add_callback(self, *args: Any) -> None:
        raise AssertionError("no span: nothing should wait for the ack")

    add_errback = add_done_callback = add_callback


def sent_id(headers: Any) -> str | None:
    """The transaction ID a sent record carries: its baggage entry (no header by default)."""
    values = dict(headers)
    assert "x-transaction-id" not in values
    return baggage_entry(values["baggage"].decode(), "transaction.id")


def test_kafka_python_send(reader: InMemoryMetricReader) -> None:
    got: list[Any] = []

    def send(producer: Any, topic: str, value: Any, key: Any, headers: Any, partition: Any,
             timestamp_ms: Any) -> Future:
        got.append(headers)
        return Future()

    with hoptrace.transaction() as tx:
        for _ in range(2):
            hop_kafka_python._send(send, None, "orders", b"v", None, None, None, None)
    assert sent_counts(reader) == {"orders": 2}
    assert sent_id(got[0]) == tx.transaction_id


def test_aiokafka_send(reader: InMemoryMetricReader) -> None:
    got: list[Any] = []

    async def send(producer: Any, topic: str, value: Any, key: Any, partition: Any,
                   timestamp_ms: Any, headers: Any) -> Future:
        got.append(headers)
        return Future()

    async def main() -> str:
        with hoptrace.transaction() as tx:
            for _ in range(3):
                await hop_aiokafka._send(send, None, "orders", b"v", None, None, None, None)
        return tx.transaction_id

    tx_id = asyncio.run(main())
    assert sent_counts(reader) == {"orders": 3}
    assert sent_id(got[0]) == tx_id


def test_confluent_kafka_produce(reader: InMemoryMetricReader) -> None:
    got: list[Any] = []
    with hoptrace.transaction() as tx:
        for _ in range(2):
            hop_confluent._produce(lambda topic, *a, **kw: got.append(kw["headers"]), None,
                                   "orders", (b"v",), {})
    assert sent_counts(reader) == {"orders": 2}
    assert sent_id(got[0]) == tx.transaction_id
    assert hoptrace.current_transaction_id() is None
