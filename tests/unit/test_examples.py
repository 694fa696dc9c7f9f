"""The brokerless examples run and print what the README says they print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quickstart_logs_one_transaction_id_on_both_sides() -> None:
    stdout = run("quickstart.py")
    ids = re.findall(r"tx=([0-9a-f]{32}) trace=([0-9a-f]{32})", stdout)
    assert len(ids) == 3  # one producer line, two consumer lines
    assert len(set(ids)) == 1
    assert f"one transaction ID across the hop: {ids[0][0]} (ok)" in stdout


def test_json_logging_example_emits_ids_on_every_line() -> None:
    records = [json.loads(line) for line in run("json_logging.py").splitlines()]
    assert len(records) == 3
    assert {r["transaction_id"] for r in records} == {"order-1001"}
    assert len({r["trace_id"] for r in records}) == 1
    assert records[1]["messaging_destination"] == "payments"
    assert records[2]["messaging_message_id"] == "msg-7"


def test_existing_otel_setup_example_keeps_the_transaction_everywhere() -> None:
    stdout = run("existing_otel_setup.py")
    assert "the handler's transaction ID: " in stdout and "(ok)" in stdout
    assert "LOST" not in stdout
    assert "x-b3-traceid" in stdout and "the consumer's trace and transaction: ok" in stdout
    assert "x-transaction-id: True" in stdout
    assert "as OTel's extract restored it: order-1001" in stdout


def _broker_urls():
    import importlib.util

    spec = importlib.util.spec_from_file_location("broker_urls", EXAMPLES / "broker_urls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amqp_url_is_given_in_the_spelling_every_client_reads_as_the_default_vhost(
    monkeypatch,
) -> None:
    import pika
    from kombu import Connection

    urls = _broker_urls()
    # kombu's and Celery's spelling of vhost "/" becomes pika's; the others are kept.
    cases = {
        "amqp://guest:guest@127.0.0.1:5672//": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "amqp://guest:guest@127.0.0.1:5672/%2F": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "amqps://u:p@rabbit.example:5671/orders": "amqps://u:p@rabbit.example:5671/orders",
        "amqp://u:p@h:5672/": "amqp://u:p@h:5672/",
    }
    for given, expected in cases.items():
        monkeypatch.setenv("HOPTRACE_AMQP_URL", given)
        assert urls.amqp_url() == expected
    monkeypatch.delenv("HOPTRACE_AMQP_URL")
    assert urls.amqp_url() == "amqp://guest:guest@127.0.0.1:5672/%2F"
    # Each client reads the result as the vhost the user meant.
    for given in ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:guest@127.0.0.1:5672/%2F"):
        monkeypatch.setenv("HOPTRACE_AMQP_URL", given)
        assert pika.URLParameters(urls.amqp_url()).virtual_host == "/"
        assert Connection(urls.amqp_url()).virtual_host == "/"
    monkeypatch.setenv("HOPTRACE_AMQP_URL", "amqp://u:p@h:5672/orders")
    assert pika.URLParameters(urls.amqp_url()).virtual_host == "orders"
    assert Connection(urls.amqp_url()).virtual_host == "orders"


def test_kafka_and_redis_come_from_their_variables_or_the_local_defaults(monkeypatch) -> None:
    urls = _broker_urls()
    monkeypatch.delenv("HOPTRACE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("HOPTRACE_REDIS_URL", raising=False)
    assert (urls.kafka_bootstrap(), urls.redis_url()) == ("127.0.0.1:9092", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("HOPTRACE_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("HOPTRACE_REDIS_URL", "redis://cache:6380/2")
    assert (urls.kafka_bootstrap(), urls.redis_url()) == ("k1:9092,k2:9092", "redis://cache:6380/2")


def test_metrics_prometheus_example_exports_one_queue_wait_series_per_edge() -> None:
    stdout = run("metrics_prometheus.py")
    assert "handled 8 of 8 messages" in stdout
    counts = dict(re.findall(r"hoptrace_queue_wait_seconds_count\s+(\S+)\s+(\S+)", stdout))
    assert counts == {"shop:orders": "5.0", "shop:refunds": "3.0"}
    sent = dict(re.findall(r"messaging_client_sent_messages_total\s+(\S+)\s+(\S+)", stdout))
    assert sent == {"shop:orders": "5.0", "shop:refunds": "3.0"}
    # The opt-in pathway, enabled by the example: the origin went with every message.
    pathway = dict(re.findall(r"hoptrace_pathway_duration_seconds_count\s+(\S+)\s+(\S+)",
                              stdout))
    assert pathway == {"shop:orders": "5.0", "shop:refunds": "3.0"}
