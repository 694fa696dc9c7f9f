"""``hoptrace demo --brokers local``: HTTP → Celery on RabbitMQ → Kafka → RabbitMQ (pika)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict

from hoptrace.cli.spanfile import group_traces, read_spans
from hoptrace.core import semconv

# Captured output takes its width from COLUMNS (pytest may set it narrow): keep rows whole.
WIDE = {**os.environ, "COLUMNS": "200"}

REQUESTS = 5


def test_demo_on_real_brokers_keeps_one_transaction_over_four_hops(tmp_path, amqp_url, kafka_bootstrap):
    out = subprocess.run(
        [
            sys.executable, "-m", "hoptrace.cli", "demo", "--brokers", "local",
            "--requests", str(REQUESTS), "--out", str(tmp_path),
            "--amqp-url", amqp_url, "--kafka", kafka_bootstrap,
        ],
        capture_output=True, env=WIDE,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = re.findall(r"tx=(\S+) trace=(\S+)\s+(web|worker|relay|shipping)\s", out.stdout)
    by_tx: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tx, trace_id, hop in lines:
        by_tx[tx].append((hop, trace_id))
    assert len(by_tx) == REQUESTS
    for hops in by_tx.values():
        assert sorted(hop for hop, _ in hops) == ["relay", "shipping", "web", "worker"]
        assert len({trace_id for _, trace_id in hops}) == 1

    spans_path = tmp_path / "spans.jsonl"
    traces = group_traces(read_spans(spans_path))
    assert {t.transaction_id for t in traces.values()} == set(by_tx)
    for trace_obj in traces.values():
        walked = list(trace_obj.walk())
        assert [depth for _, depth in walked] == list(range(7))  # one parent chain, 7 spans
        assert [span.service for span, _ in walked] == [
            "web", "web", "worker", "worker", "relay", "relay", "shipping"
        ]
        systems = [span.attributes.get(semconv.MESSAGING_SYSTEM) for span, _ in walked[1:]]
        assert systems == ["celery", "celery", "kafka", "kafka", "rabbitmq", "rabbitmq"]
        assert {t for _, t in by_tx[trace_obj.transaction_id]} == {trace_obj.trace_id}

    stats = subprocess.run(
        [sys.executable, "-m", "hoptrace.cli", "stats", str(spans_path), "--json"],
        capture_output=True, env=WIDE, text=True, timeout=60, check=True,
    )
    edges = {(e["producer_service"], e["consumer_service"]): e for e in json.loads(stats.stdout)["edges"]}
    assert set(edges) == {("web", "worker"), ("worker", "relay"), ("relay", "shipping")}
    assert all(edge["count"] == REQUESTS for edge in edges.values())
    assert all(edge["queue_wait_ms"]["p50"] is not None for edge in edges.values())


def test_demo_exports_to_jaeger_and_reads_every_trace_back(
    tmp_path, amqp_url, kafka_bootstrap
):
    import backends

    jaeger_url = backends.jaeger_query_url()
    requests = 3
    out = subprocess.run(
        [
            sys.executable, "-m", "hoptrace.cli", "demo", "--brokers", "local",
            "--requests", str(requests), "--out", str(tmp_path),
            "--amqp-url", amqp_url, "--kafka", kafka_bootstrap,
            "--jaeger", jaeger_url, "--otlp", backends.jaeger_otlp_url(jaeger_url),
        ],
        capture_output=True, env=WIDE,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Jaeger answers at {jaeger_url}: the spans go there too, over OTLP." in out.stdout
    spans = sum(len(t.spans) for t in group_traces(read_spans(tmp_path / "spans.jsonl")).values())
    assert (
        f"Jaeger round trip: read back {requests} of {requests} traces ({spans} spans) from "
        f"{jaeger_url}; {requests} match the file span for span, parents included."
    ) in out.stdout
    (slowest,) = re.findall(r"as OTLP JSON: (\S+)", out.stdout)
    trace_id = slowest.rsplit("/", 1)[1]
    assert slowest == f"{jaeger_url}/api/v3/traces/{trace_id}"
    assert backends.count_spans(backends.wait_for_trace(jaeger_url, trace_id, 7)) == 7
    # The waterfall shown is the one read back from Jaeger, for the first request's trace.
    assert f"as read back from Jaeger ({jaeger_url})" in out.stdout
    first_tx = re.search(r"tx=(\S+) trace=(\S+)", out.stdout)
    assert first_tx is not None
    assert f"trace {first_tx.group(2)}  transaction {first_tx.group(1)}" in out.stdout


def test_auto_mode_finds_the_local_brokers(amqp_url: str, kafka_bootstrap: str) -> None:
    from hoptrace.cli.demo_brokers import missing_brokers

    assert missing_brokers(amqp_url, kafka_bootstrap) == []
    assert missing_brokers("amqp://guest:guest@127.0.0.1:1//", "127.0.0.1:1") == [
        "RabbitMQ at 127.0.0.1:1", "Kafka at 127.0.0.1:1"
    ]
