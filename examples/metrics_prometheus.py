"""Per-edge metrics for Prometheus: queue wait, counts and durations for every hop.

Needs no broker by default (kombu's in-memory transport); ``python examples/metrics_prometheus.py
rabbitmq`` runs the same flow on RabbitMQ (``HOPTRACE_AMQP_URL``, default the local one that
``scripts/brokers up`` starts). Needs ``opentelemetry-sdk`` and
``opentelemetry-exporter-prometheus`` (both in hoptrace's ``dev`` extra).

It serves the OpenTelemetry Prometheus exporter on 127.0.0.1:9464 (the target
scripts/prometheus.yml scrapes; another free port if that one is taken), sends orders and
refunds through two queues, handles them, and prints the per-edge lines of its own /metrics
page. ``--serve 60`` keeps serving for a minute, for a Prometheus to scrape.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
import uuid
from typing import Any

from broker_urls import amqp_url
from kombu import Connection, Exchange, Queue
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

import hoptrace
import hoptrace.kombu

SENT = {"orders": 5, "refunds": 3}


def serve(port: int) -> tuple[Any, int]:
    """Start the exporter's HTTP server on ``port``, or on a free one if it is taken."""
    try:
        server, _ = start_http_server(port, addr="127.0.0.1")
    except OSError:
        server, _ = start_http_server(0, addr="127.0.0.1")
    return server, server.server_address[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("broker", nargs="?", choices=["memory", "rabbitmq"], default="memory")
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--serve", type=float, default=0, help="seconds to keep serving")
    args = parser.parse_args()

    # 1. The application's own metrics setup: a MeterProvider with the Prometheus reader.
    #    hoptrace records into whatever global MeterProvider is set; none set = no cost.
    reader = PrometheusMetricReader()
    metrics.set_meter_provider(MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "shop"})))
    server, port = serve(args.port)
    # The pathway (time since the transaction began, per edge) is opt-in: it carries the
    # transaction's start in every message's baggage.
    hoptrace.configure(enabled_metrics={"hoptrace.pathway.duration"})
    hoptrace.kombu.instrument()

    url = "memory://" if args.broker == "memory" else amqp_url()
    # In memory, fixed names; on a shared broker, names of this run's own.
    run = "" if args.broker == "memory" else "-" + uuid.uuid4().hex[:6]
    exchange = Exchange(f"shop{run}", type="direct", auto_delete=True)
    queues = {name: Queue(f"{name}{run}", exchange, routing_key=name, auto_delete=True)
              for name in SENT}
    handled: list[str] = []
    with Connection(url) as connection:
        producer = connection.Producer()
        for name, count in SENT.items():
            for number in range(count):
                with hoptrace.transaction("checkout"):
                    producer.publish({"n": number}, exchange=exchange, routing_key=name,
                                     declare=[queues[name]])

        def handle(body: Any, message: Any) -> None:
            handled.append(message.delivery_info["routing_key"])
            message.ack()

        with connection.Consumer(list(queues.values()), callbacks=[handle]):
            deadline = time.monotonic() + 10
            while len(handled) < sum(SENT.values()) and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    pass

    # 2. What Prometheus scrapes: the per-edge series of this process.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    wanted = ("hoptrace_queue_wait_seconds_count", "hoptrace_pathway_duration_seconds_count",
              "messaging_client_sent_messages_total", "messaging_client_consumed_messages_total")
    print(f"handled {len(handled)} of {sum(SENT.values())} messages; /metrics on port {port}:")
    for line in sorted(text.splitlines()):
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            labels = dict(part.split("=", 1) for part in
                          name[name.index("{") + 1:-1].split(",") if "=" in part)
            print(f"  {name[:name.index('{')]:<42} "
                  f"{labels['messaging_destination_name'].strip(chr(34)):<36} {value}")
    print("p95 queue wait per edge (PromQL): histogram_quantile(0.95, sum by (le, "
          "messaging_destination_name) (rate(hoptrace_queue_wait_seconds_bucket[5m])))")
    if args.serve:
        print(f"serving for {args.serve:g}s on http://127.0.0.1:{port}/metrics")
        time.sleep(args.serve)
    server.shutdown()
    return 0 if len(handled) == sum(SENT.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
