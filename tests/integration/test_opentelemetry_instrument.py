"""hoptrace under ``opentelemetry-instrument``: a real run of an app in a subprocess.

``opentelemetry-instrument`` loads every instrumentor from the entry points: hoptrace's seven
and OpenTelemetry contrib's for the same clients. The app (``otel_apps/two_brokers.py``)
publishes and consumes one message per client through RabbitMQ and Kafka and prints what the
caller and the handler saw; the console exporter prints the spans on stdout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brokers
import pytest

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parent / "otel_apps" / "two_brokers.py"
BIN = Path(sys.executable).parent
INSTRUMENT = BIN / "opentelemetry-instrument"
APP_PREFIX = "hoptrace-app "
# A hang guard, not a speed check (the app waits 10 s at most per hop; a loaded machine is slow).
RUN_TIMEOUT = 120.0

HOPTRACE_CLIENTS = ("celery", "kombu", "pika", "aio-pika", "aiokafka", "confluent-kafka",
                     "kafka-python")
HOPS = ("pika", "aio-pika", "confluent-kafka", "aiokafka", "kafka-python")
# client -> the OTEL_PYTHON_DISABLED_INSTRUMENTATIONS name of contrib's instrumentation of it
CONTRIB_ENTRY_POINTS = {
    "celery": "celery",
    "pika": "pika",
    "aio-pika": "aio-pika",
    "aiokafka": "aiokafka",
    "confluent-kafka": "confluent_kafka",
    "kafka-python": "kafka",
}
TAKE_OVER = re.compile(
    r"hoptrace: OpenTelemetry's (\S+) instrumentation \(.*?\).*?"
    r"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=(\S+) to stop it loading"
)

for module in ("pika", "aio_pika", "aiokafka", "confluent_kafka", "kafka", "celery", "kombu"):
    pytest.importorskip(module)
if not INSTRUMENT.exists():
    pytest.skip(f"{INSTRUMENT} not installed (opentelemetry-instrumentation)",
                allow_module_level=True)


@dataclass
class Run:
    """One ``opentelemetry-instrument`` run: the app's records, the spans, stderr."""

    returncode: int
    records: list[dict[str, Any]]
    spans: list[dict[str, Any]]
    stderr: str
    stdout: str
    seconds: float

    def record(self, key: str) -> dict[str, Any]:
        (found,) = [r[key] for r in self.records if key in r]
        return found  # type: ignore[no-any-return]

    def hops(self) -> dict[str, dict[str, Any]]:
        return {r["hop"]: r for r in self.records if "hop" in r}

    def take_overs(self) -> list[tuple[str, str]]:
        return TAKE_OVER.findall(self.stderr)

    def explain(self) -> str:
        return f"--- stdout (tail) ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-4000:]}"


def parse_spans(text: str) -> list[dict[str, Any]]:
    """The console exporter's spans: one indented JSON object each, starting at a line "{"."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = 0
    starts = re.compile(r"^\{", re.MULTILINE)
    while True:
        match = starts.search(text, position)
        if match is None:
            return found
        try:
            obj, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            position = match.end()
            continue
        if isinstance(obj, dict) and "context" in obj and "kind" in obj:
            found.append(obj)
        position = end


@pytest.fixture(scope="module")
def created_topics(kafka_bootstrap: str) -> Iterator[list[str]]:
    topics: list[str] = []
    yield topics
    brokers.delete_kafka_topics(kafka_bootstrap, topics)


def run_app(amqp_url: str, kafka_bootstrap: str, topics: list[str], **extra_env: str) -> Run:
    prefix = f"hoptrace-otel-{uuid.uuid4().hex[:10]}"
    topics.extend(f"{prefix}-{suffix}" for suffix in ("confluent", "aiokafka", "kafka-python"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOPTRACE_"))}
    env.update({
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "hoptrace-otel-instrument-test",
        "OTEL_PROPAGATORS": "tracecontext,baggage,hoptrace",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "APP_AMQP_URL": brokers.pika_url(amqp_url),
        "APP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "APP_QUEUE_PREFIX": prefix,
        "APP_TOPIC_PREFIX": prefix,
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    })
    started = time.monotonic()
    proc = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(APP)],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    seconds = time.monotonic() - started
    app_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(APP_PREFIX)]
    other = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(APP_PREFIX))
    return Run(
        returncode=proc.returncode,
        records=[json.loads(ln[len(APP_PREFIX):]) for ln in app_lines],
        spans=parse_spans(other),
        stderr=proc.stderr,
        stdout=proc.stdout,
        seconds=seconds,
    )


def span_id(value: str | None) -> str | None:
    return None if value is None else value.removeprefix("0x")


def check_hops(run: Run) -> None:
    """Per hop: one hoptrace PRODUCER and one CONSUMER span, parent and child; same tx."""
    hops = run.hops()
    assert sorted(hops) == sorted(HOPS), run.explain()
    kinds = Counter(s["kind"] for s in run.spans)
    # No second instrumentation anywhere: one send and one process span per hop, in all.
    assert kinds["SpanKind.PRODUCER"] == len(HOPS), (kinds, run.explain())
    assert kinds["SpanKind.CONSUMER"] == len(HOPS), (kinds, run.explain())
    for name, hop in hops.items():
        assert "error" not in hop, f"{name}: {hop['error']}\n{run.explain()}"
        destination = hop["destination"]
        producers = [s for s in run.spans if s["kind"] == "SpanKind.PRODUCER"
                     and s["attributes"].get("messaging.destination.name") == destination]
        consumers = [s for s in run.spans if s["kind"] == "SpanKind.CONSUMER"
                     and s["attributes"].get("messaging.destination.name")
                     == hop["consumer_destination"]]
        assert len(producers) == 1, (name, [s["name"] for s in run.spans])
        assert len(consumers) == 1, (name, [s["name"] for s in run.spans])
        (send,), (process,) = producers, consumers
        assert send["name"] == f"send {destination}"
        assert process["name"] == f"process {hop['consumer_destination']}"
        # hoptrace's spans: the process span carries the transaction ID; the send leaves it
        # to its parent, the caller's transaction root.
        (root,) = [s for s in run.spans if span_id(s["context"]["span_id"])
                   == span_id(send["parent_id"])]
        assert "hoptrace.transaction.id" not in send["attributes"]
        assert root["attributes"].get("hoptrace.transaction.id") == hop["caller_tx"]
        assert process["attributes"].get("hoptrace.transaction.id") == hop["caller_tx"]
        # The consumer span is the producer span's child, in the caller's trace.
        assert span_id(process["parent_id"]) == span_id(send["context"]["span_id"]), name
        trace_id = span_id(send["context"]["trace_id"])
        assert span_id(process["context"]["trace_id"]) == trace_id
        assert hop["caller_trace_id"] == trace_id, name
        # The handler ran inside that consumer span, in the caller's transaction.
        assert hop["handler_trace_id"] == trace_id, name
        assert hop["handler_span_id"] == span_id(process["context"]["span_id"]), name
        assert hop["caller_tx"] and hop["handler_tx"] == hop["caller_tx"], name


def check_clean_start(run: Run) -> None:
    assert run.returncode == 0, run.explain()
    for marker in ("Traceback", "Failed to auto initialize", "Instrumenting of",
                   "Importing of", "internal error"):
        assert marker not in run.stderr, run.explain()
    assert run.spans, run.explain()
    for state in (run.record("instrumentation"), run.record("instrumentation_after")):
        assert state["hoptrace"] == dict.fromkeys(HOPTRACE_CLIENTS, True), run.explain()


def test_opentelemetry_instrument_with_contrib_loaded(
    amqp_url: str, kafka_bootstrap: str, created_topics: list[str]
) -> None:
    run = run_app(amqp_url, kafka_bootstrap, created_topics)
    check_clean_start(run)
    check_hops(run)
    # Each contrib instrumentation that loaded beside hoptrace's is named once, with the
    # value that keeps it from loading.
    found = run.take_overs()
    per_client = Counter(client for client, _ in found)
    assert all(count == 1 for count in per_client.values()), (found, run.stderr)
    assert dict(found) == CONTRIB_ENTRY_POINTS, run.stderr


def test_opentelemetry_instrument_with_contrib_disabled(
    amqp_url: str, kafka_bootstrap: str, created_topics: list[str]
) -> None:
    disabled = ",".join(["pika", "celery", "aio-pika", "aiokafka", "confluent_kafka", "kafka"])
    assert sorted(disabled.split(",")) == sorted(CONTRIB_ENTRY_POINTS.values())
    run = run_app(amqp_url, kafka_bootstrap, created_topics,
                  OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
    check_clean_start(run)
    check_hops(run)
    assert run.take_overs() == [], run.stderr
    assert "hoptrace: OpenTelemetry's" not in run.stderr
    for state in (run.record("instrumentation"), run.record("instrumentation_after")):
        assert not any(state["contrib"].values()), state


@pytest.mark.parametrize(("propagators", "metrics_exporter"), [
    ("tracecontext,baggage,hoptrace", "none"), ("b3multi,baggage,hoptrace", "console")])
def test_opentelemetry_instrument_with_every_span_dropped(
    amqp_url: str, kafka_bootstrap: str, created_topics: list[str], propagators: str,
    metrics_exporter: str,
) -> None:
    """A sampler that drops every root (``parentbased_always_off``), contrib loaded, under
    W3C and B3 propagation: every send and process span is a dropped child. No span is
    exported, and each handler still runs in its caller's trace and transaction.

    ``opentelemetry-instrument`` installs an SDK meter provider whatever the metrics
    exporter. With none, that provider has no reader, and hoptrace's metrics count as off:
    the sends and opens take their metrics-off shortcuts (compared with the scope in the
    unit tests). With one (B3's run), they are on and every message goes through its
    scopes."""
    run = run_app(amqp_url, kafka_bootstrap, created_topics,
                  OTEL_TRACES_SAMPLER="parentbased_always_off", OTEL_PROPAGATORS=propagators,
                  OTEL_METRICS_EXPORTER=metrics_exporter)
    assert run.returncode == 0, run.explain()
    assert run.record("metrics") == {
        "meter_provider": "MeterProvider", "hoptrace_metrics": metrics_exporter != "none"}
    for marker in ("Traceback", "Failed to auto initialize", "internal error"):
        assert marker not in run.stderr, run.explain()
    assert run.spans == [], run.explain()
    hops = run.hops()
    assert sorted(hops) == sorted(HOPS), run.explain()
    for name, hop in hops.items():
        assert "error" not in hop, f"{name}: {hop['error']}\n{run.explain()}"
        assert hop["caller_trace_id"] and hop["handler_trace_id"] == hop["caller_trace_id"], (
            name, run.explain())
        assert hop["caller_tx"] and hop["handler_tx"] == hop["caller_tx"], name
        # The handler runs in its own (dropped) span, not in the caller's root.
        assert hop["handler_span_id"], name


def test_parse_spans_splits_concatenated_objects() -> None:
    one = json.dumps({"name": "a", "context": {}, "kind": "SpanKind.PRODUCER"}, indent=4)
    two = json.dumps({"name": "b {", "context": {}, "kind": "SpanKind.CONSUMER"}, indent=4)
    text = f"noise\n{one}\n{{ not json\n{two}\n"
    assert [s["name"] for s in parse_spans(text)] == ["a", "b {"]
