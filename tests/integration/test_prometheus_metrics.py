"""Per-edge metrics scraped by a real Prometheus and read back through its HTTP API.

The test process serves the OpenTelemetry Prometheus exporter on 127.0.0.1:9464, which the
Prometheus that ``scripts/brokers up prometheus`` runs scrapes every second
(scripts/prometheus.yml). Traffic goes through a Kafka edge (confluent-kafka) and a RabbitMQ
edge (pika); then ``histogram_quantile(0.95, …)`` over the queue-wait histogram must return
one series per edge, and the histogram's count per edge must equal the messages sent.

Without a Prometheus on 127.0.0.1:9090 (or ``HOPTRACE_PROMETHEUS_URL``) the test skips,
and fails under CI=true.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.core import metrics

pytestmark = pytest.mark.integration

exporter = pytest.importorskip("opentelemetry.exporter.prometheus")
prometheus_client = pytest.importorskip("prometheus_client")
confluent_kafka = pytest.importorskip("confluent_kafka")
pika = pytest.importorskip("pika")

import hoptrace.confluent_kafka as hc  # noqa: E402
import hoptrace.pika  # noqa: E402

PROMETHEUS_URL = os.environ.get("HOPTRACE_PROMETHEUS_URL", "http://127.0.0.1:9090").rstrip("/")
#: The port scripts/prometheus.yml scrapes.
EXPORTER_PORT = 9464
SENT = {"kafka": 7, "rabbitmq": 5}


def prometheus_query(query: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS_URL}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prometheus() -> str:
    try:
        with urllib.request.urlopen(f"{PROMETHEUS_URL}/-/ready", timeout=2) as response:
            ready = response.status == 200
    except OSError:
        ready = False
    if not ready:
        reason = f"no Prometheus at {PROMETHEUS_URL} (scripts/brokers up prometheus)"
        if brokers.is_ci():
            pytest.fail(f"{reason} [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(reason)
    return PROMETHEUS_URL


@pytest.fixture(scope="module")
def exported() -> Iterator[None]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader],
                             resource=Resource.create({"service.name": "hoptrace-prom-test"}))
    server, thread = prometheus_client.start_http_server(EXPORTER_PORT, addr="127.0.0.1")
    metrics.use_meter_provider(provider)
    hoptrace.pika.instrument()
    try:
        yield
    finally:
        hoptrace.pika.uninstrument()
        metrics.use_meter_provider(None)
        server.shutdown()
        server.server_close()
        thread.join(5)
        provider.shutdown()  # unregisters the reader's collector


def kafka_edge(bootstrap: str, topic: str, count: int) -> None:
    producer = hc.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for number in range(count):
        with hoptrace.transaction("prom-kafka"):
            producer.produce(topic, f"m{number}".encode())
    assert producer.flush(15) == 0
    consumer = hc.Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    seen = 0
    deadline = time.monotonic() + 30
    try:
        while seen < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen += 1
    finally:
        consumer.close()
    assert seen == count


def rabbitmq_edge(amqp_url: str, queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url)))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, auto_delete=True)
        for number in range(count):
            with hoptrace.transaction("prom-rabbitmq"):
                channel.basic_publish("", queue, f"m{number}".encode())
        handled: list[bytes] = []
        channel.basic_consume(queue, lambda ch, method, props, body: (
            handled.append(body), ch.basic_ack(method.delivery_tag)))
        deadline = time.monotonic() + 30
        while len(handled) < count and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        assert len(handled) == count
    finally:
        connection.close()


def wait_for(query: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll Prometheus until ``query`` returns ``want`` series whose values stop changing."""
    result: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = prometheus_query(query)
        if len(result) >= want:
            return result
        time.sleep(0.5)
    return result


def test_queue_wait_p95_and_counts_per_edge_read_back_from_prometheus(
    prometheus: str, exported: None, kafka_bootstrap: str, amqp_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, queue = f"hoptrace-prom-{run}", f"hoptrace-prom-{run}"
    kafka_edge(kafka_bootstrap, topic, SENT["kafka"])
    rabbitmq_edge(amqp_url, queue, SENT["rabbitmq"])
    destinations = {"kafka": topic, "rabbitmq": queue}
    selector = 'messaging_destination_name=~"{}"'.format("|".join(
        [topic, queue]))

    # Counts: wait until a scrape saw every message (the exporter is scraped every second).
    count_query = f"hoptrace_queue_wait_seconds_count{{{selector}}}"
    deadline = time.monotonic() + 30
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        counts = {r["metric"]["messaging_system"]: float(r["value"][1])
                  for r in prometheus_query(count_query)}
        if counts == {k: float(v) for k, v in SENT.items()}:
            break
        time.sleep(0.5)
    assert counts == {k: float(v) for k, v in SENT.items()}

    # Over the cumulative buckets (since the process started): a rate() window would need two
    # scrapes that differ, and the first scrape may already hold every message.
    p95 = wait_for(
        f"histogram_quantile(0.95, sum by (le, messaging_system, messaging_destination_name) "
        f"(hoptrace_queue_wait_seconds_bucket{{{selector}}}))", 2)
    by_edge = {r["metric"]["messaging_system"]: r for r in p95}
    assert set(by_edge) == {"kafka", "rabbitmq"}
    for system, series in by_edge.items():
        assert series["metric"]["messaging_destination_name"] == destinations[system]
        value = float(series["value"][1])
        assert 0 <= value <= 600, (system, value)  # a finite wait within the top bucket

    # The semantic-convention counters tell the same story per edge.
    consumed = {r["metric"]["messaging_system"]: float(r["value"][1]) for r in prometheus_query(
        f"messaging_client_consumed_messages_total{{{selector}}}")}
    assert consumed == {k: float(v) for k, v in SENT.items()}
