"""``hoptrace demo --brokers local``: HTTP → Celery on RabbitMQ → Kafka → RabbitMQ (pika)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict

from hoptrace.cli.spanfile import group_traces, read_spans
from hoptrace.core import semconv

REQUESTS = 5


def test_demo_on_real_brokers_keeps_one_transaction_over_four_hops(tmp_path, amqp_url, kafka_bootstrap):
    out = subprocess.run(
        [
            sys.executable, "-m", "hoptrace.cli", "demo", "--brokers", "local",
            "--requests", str(REQUESTS), "--out", str(tmp_path),
            "--amqp-url", amqp_url, "--kafka", kafka_bootstrap,
        ],
        capture_output=True,
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
        capture_output=True, text=True, timeout=60, check=True,
    )
    edges = {(e["producer_service"], e["consumer_service"]): e for e in json.loads(stats.stdout)["edges"]}
    assert set(edges) == {("web", "worker"), ("worker", "relay"), ("relay", "shipping")}
    assert all(edge["count"] == REQUESTS for edge in edges.values())
    assert all(edge["queue_wait_ms"]["p50"] is not None for edge in edges.values())


def test_auto_mode_finds_the_local_brokers(amqp_url: str, kafka_bootstrap: str) -> None:
    from hoptrace.cli.demo_brokers import missing_brokers

    assert missing_brokers(amqp_url, kafka_bootstrap) == []
    assert missing_brokers("amqp://guest:guest@127.0.0.1:1//", "127.0.0.1:1") == [
        "RabbitMQ at 127.0.0.1:1", "Kafka at 127.0.0.1:1"
    ]
