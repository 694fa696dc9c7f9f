"""Spans of a real hoptrace hop go to a real Jaeger over OTLP; ``hoptrace view/stats --jaeger``
read them back.

Two OS processes, each with its own ``service.name`` and an OTLP/HTTP exporter: the
producer publishes three messages through RabbitMQ with ``hoptrace.pika``, each under its own
root span; the consumer handles them in ``basic_consume`` callbacks and prints the trace and
span it ran in. Jaeger is then the only source: the CLI must find the same trace IDs, the
process span under the send span under the root, and one edge producer → consumer per message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import backends
import brokers
import pytest

from hoptrace.cli.backends import JaegerReader, TimeWindow, fetch_window

pytest.importorskip("pika")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")

MESSAGES = 3

APP = textwrap.dedent(
    """
    import json, sys
    import pika
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import hoptrace.pika

    role, service, queue, amqp_url, otlp, count = sys.argv[1:7]
    count = int(count)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=otlp + "/v1/traces", timeout=10)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    hoptrace.pika.instrument()

    def ids():
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    if role == "produce":
        channel.queue_declare(queue)
        tracer = trace.get_tracer("test-jaeger-cli")
        for number in range(count):
            with tracer.start_as_current_span(f"order {number}", kind=trace.SpanKind.SERVER):
                channel.basic_publish("", queue, str(number).encode())
                trace_id, span_id = ids()
                print(json.dumps({"trace_id": trace_id, "root": span_id}), flush=True)
    else:
        seen = []

        def on_message(ch, method, properties, body):
            trace_id, span_id = ids()
            print(json.dumps({"trace_id": trace_id, "process": span_id}), flush=True)
            ch.basic_ack(method.delivery_tag)
            seen.append(body)
            if len(seen) == count:
                ch.stop_consuming()

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
        channel.queue_delete(queue)
    connection.close()
    provider.shutdown()
    """
)


def _run_app(role: str, service: str, queue: str, amqp_url: str, otlp: str) -> list[dict[str, str]]:
    out = subprocess.run(
        [sys.executable, "-c", APP, role, service, queue, amqp_url, otlp, str(MESSAGES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _hoptrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hoptrace.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def jaeger_url() -> str:
    return backends.jaeger_query_url()


def test_view_and_stats_read_a_real_hop_back_from_jaeger(jaeger_url: str, amqp_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    producer, consumer = f"hoptrace-cli-{run}-producer", f"hoptrace-cli-{run}-consumer"
    queue = f"hoptrace-cli-{run}"
    otlp = backends.jaeger_otlp_url(jaeger_url)
    amqp = brokers.pika_url(amqp_url)
    started = time.time()

    sent = _run_app("produce", producer, queue, amqp, otlp)
    handled = _run_app("consume", consumer, queue, amqp, otlp)
    roots = {line["trace_id"]: line["root"] for line in sent}
    processes = {line["trace_id"]: line["process"] for line in handled}
    assert len(roots) == MESSAGES
    assert set(processes) == set(roots)  # each message carried its producer's trace
    for trace_id in roots:  # root + send (producer) + process (consumer)
        backends.wait_for_trace(jaeger_url, trace_id, 3)

    window = ["--start", str(started - 5), "--end", str(time.time() + 5)]
    view = _hoptrace("view", "--jaeger", jaeger_url, "--service", producer, *window)
    assert view.returncode == 0, view.stdout + view.stderr
    shown = {line.split()[1] for line in view.stdout.splitlines() if line.startswith("trace ")}
    assert shown == set(roots)

    # One trace, fetched by ID: the tree is root → send → process, across both services.
    trace_id = next(iter(roots))
    one = _hoptrace("view", "--jaeger", jaeger_url, "--trace", trace_id)
    assert one.returncode == 0, one.stdout + one.stderr
    names = [line.split(" [")[0] for line in one.stdout.splitlines() if " [" in line]
    assert [name.split()[0] for name in names] == ["order", "send", "process"]
    assert [len(name) - len(name.lstrip()) for name in names] == [0, 2, 4]

    stats = _hoptrace("stats", "--jaeger", jaeger_url, "--service", consumer, *window, "--json")
    assert stats.returncode == 0, stats.stdout + stats.stderr
    report: dict[str, Any] = json.loads(stats.stdout)
    assert report["traces"] == MESSAGES and report["spans"] == 3 * MESSAGES
    edges = [(e["producer_service"], e["consumer_service"], e["count"]) for e in report["edges"]]
    assert edges == [(producer, consumer, MESSAGES)]
    assert {t["trace_id"] for t in report["slowest_traces"]} <= set(roots)

    # The same read, through the reader itself: every parent link survived the round trip.
    read = fetch_window(
        JaegerReader(jaeger_url), [producer],
        TimeWindow(int((started - 5) * 1e9), int((time.time() + 5) * 1e9)),
    )
    assert set(read.traces) == set(roots)
    for trace_id, spans in read.traces.items():
        by_id = {span.span_id: span for span in spans}
        process = by_id[processes[trace_id]]
        assert process.kind == "CONSUMER" and process.service == consumer
        send = by_id[process.parent_span_id or ""]
        assert send.kind == "PRODUCER" and send.service == producer
        assert send.parent_span_id == roots[trace_id]
        assert by_id[roots[trace_id]].parent_span_id is None


# ------------------------------------------------------------ scripts/brokers jaeger ---

SCRIPT = brokers.BROKERS_SCRIPT


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _script_env(tmp_path: Any, **extra: str) -> dict[str, str]:
    query, grpc, otlp_grpc, otlp_http = _free_ports(4)
    env = {
        **os.environ,
        "HOPTRACE_BROKERS_DIR": str(tmp_path / "state"),
        "TMPDIR": str(tmp_path),  # its own registry and lock: never waits on the shared one
        "HOPTRACE_JAEGER_QUERY_PORT": str(query),
        "HOPTRACE_JAEGER_QUERY_GRPC_PORT": str(grpc),
        "HOPTRACE_JAEGER_OTLP_GRPC_PORT": str(otlp_grpc),
        "HOPTRACE_JAEGER_OTLP_HTTP_PORT": str(otlp_http),
        **extra,
    }
    env.pop("HOPTRACE_JAEGER_URL", None)
    return env


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=180, env=env, check=False
    )


def test_scripts_brokers_runs_its_own_jaeger_and_stops_it(tmp_path: Any) -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    binary = Path(
        os.environ.get("HOPTRACE_JAEGER_CACHE") or cache / "hoptrace" / "jaeger-v1.76.0"
    ) / "jaeger"
    extra = {}
    if os.environ.get("HOPTRACE_JAEGER_BIN"):
        extra["HOPTRACE_JAEGER_BIN"] = os.environ["HOPTRACE_JAEGER_BIN"]
    elif not binary.exists():  # `scripts/brokers up` builds it; don't build it again here
        reason = f"no Jaeger binary at {binary} (run scripts/brokers up jaeger)"
        if os.environ.get(backends.JAEGER_URL_ENV):
            pytest.skip(f"{reason}; the tests use an external Jaeger")
        backends._skip_or_fail(reason)
    env = _script_env(tmp_path, **extra)
    port = env["HOPTRACE_JAEGER_QUERY_PORT"]
    url = f"http://127.0.0.1:{port}"
    try:
        up = _script(env, "up", "jaeger")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"jaeger: starting on 127.0.0.1:{port}" in up.stdout
        assert backends.jaeger_answers(url)
        status = _script(env, "status", "jaeger")
        assert status.returncode == 0 and "jaeger    up" in status.stdout and "pid " in status.stdout
        again = _script(env, "up", "jaeger")
        assert again.returncode == 0 and "jaeger: already running" in again.stdout
        # It takes OTLP on the port it was given: a span sent there is read back.
        assert JaegerReader(url).services() == []
        otlp = f"http://127.0.0.1:{env['HOPTRACE_JAEGER_OTLP_HTTP_PORT']}"
        sent = subprocess.run(
            [sys.executable, "-c", SEND_ONE, otlp], capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        trace_id = sent.stdout.strip()
        backends.wait_for_trace(url, trace_id, 1)
    finally:
        down = _script(env, "down", "jaeger")
    assert down.returncode == 0 and "jaeger: stopped" in down.stdout, down.stdout + down.stderr
    assert not backends.jaeger_answers(url)


def test_scripts_brokers_shows_the_log_of_a_jaeger_that_dies(tmp_path: Any) -> None:
    fake = tmp_path / "jaeger"
    fake.write_text("#!/bin/sh\necho 'Error: cannot start: bind: address already in use'\nexit 1\n")
    fake.chmod(0o755)
    env = _script_env(tmp_path, HOPTRACE_JAEGER_BIN=str(fake))
    up = _script(env, "up", "jaeger")
    assert up.returncode == 1
    assert "Error: cannot start: bind: address already in use" in up.stderr
    assert "jaeger exited during startup" in up.stderr


SEND_ONE = textwrap.dedent(
    """
    import sys
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "scripts-brokers"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(sys.argv[1] + "/v1/traces")))
    with provider.get_tracer("t").start_as_current_span("one") as span:
        print(format(span.get_span_context().trace_id, "032x"))
    provider.shutdown()
    """
)
