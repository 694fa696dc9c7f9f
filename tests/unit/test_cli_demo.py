"""``hoptrace demo``: HTTP → Celery (memory://, in-process worker) → kombu consumer."""

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


def test_demo_runs_three_hops_under_one_transaction_per_request(tmp_path):
    out = subprocess.run(
        [
            sys.executable, "-m", "hoptrace.cli", "demo", "--brokers", "memory",
            "--out", str(tmp_path), "--requests", "2", "--jaeger", "http://127.0.0.1:1",
        ],
        capture_output=True, env=WIDE,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # No Jaeger answering: one line says so, and the demo works from the file as before.
    (no_jaeger,) = [line for line in out.stdout.splitlines() if line.startswith("Jaeger")]
    assert no_jaeger.startswith("Jaeger: none answering (cannot reach Jaeger at http://127.0.0.1:1")
    assert "the spans go to the file only" in no_jaeger
    assert "round trip" not in out.stdout
    lines = re.findall(r"tx=(\S+) trace=(\S+)\s+(web|worker|shipping)\s", out.stdout)
    by_tx: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tx, trace_id, hop in lines:
        by_tx[tx].append((hop, trace_id))
    assert len(by_tx) == 2
    for hops in by_tx.values():
        assert sorted(hop for hop, _ in hops) == ["shipping", "web", "worker"]
        assert len({trace_id for _, trace_id in hops}) == 1

    spans_path = tmp_path / "spans.jsonl"
    assert f"spans (JSONL): {spans_path}" in out.stdout
    assert f"HTML report:   {tmp_path / 'report.html'}" in out.stdout
    traces = group_traces(read_spans(spans_path))
    assert {t.transaction_id for t in traces.values()} == set(by_tx)
    for trace_obj in traces.values():
        chain = [span.name for span, _ in trace_obj.walk()]
        assert chain == [
            "POST /checkout",
            "send demo.charge_card",
            "process demo.charge_card",
            "send shop:shipping",
            "process shop:shipping",
        ]
        services = [span.service for span, _ in trace_obj.walk()]
        assert services == ["web", "web", "worker", "worker", "shipping"]
        depths = [depth for _, depth in trace_obj.walk()]
        assert depths == [0, 1, 2, 3, 4]  # one parent chain through both queues
        consumers = [s for s in trace_obj.spans if s.kind == "CONSUMER"]
        assert all(s.attributes[semconv.QUEUE_WAIT_MS] >= 0 for s in consumers)
        # The log lines of this transaction carry this trace's ID.
        assert {t for _, t in by_tx[trace_obj.transaction_id]} == {trace_obj.trace_id}

    # The waterfall of the first request is printed.
    first_tx = lines[0][0]
    first = next(t for t in traces.values() if t.transaction_id == first_tx)
    assert f"trace {first.trace_id}  transaction {first_tx}" in out.stdout
    assert "process shop:shipping [process]" in out.stdout
    html = (tmp_path / "report.html").read_text()
    assert html.count('class="span-bar') == sum(len(t.spans) for t in traces.values()) == 10
    stats = subprocess.run(
        [sys.executable, "-m", "hoptrace.cli", "stats", str(spans_path), "--json"],
        capture_output=True, env=WIDE, text=True, timeout=60, check=True,
    )
    edges = {(e["producer_service"], e["consumer_service"]): e for e in json.loads(stats.stdout)["edges"]}
    assert set(edges) == {("web", "worker"), ("worker", "shipping")}
    assert all(edge["count"] == 2 and edge["error_rate"] == 0 for edge in edges.values())


def test_demo_without_brokers_on_the_given_ports_runs_in_memory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "hoptrace.cli", "demo", "--out", str(tmp_path),
         "--amqp-url", "amqp://guest:guest@127.0.0.1:1//", "--kafka", "127.0.0.1:1",
         "--jaeger", "off"],
        capture_output=True, env=WIDE, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "running in memory" in out.stdout
    assert "Jaeger: off (--jaeger off); the spans go to the file only." in out.stdout
    assert (tmp_path / "spans.jsonl").exists()
