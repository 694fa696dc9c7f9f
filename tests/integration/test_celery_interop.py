"""Interop with OpenTelemetry's contrib Celery instrumentation, both directions, through real
prefork workers on RabbitMQ: hoptrace producer -> OTel worker, OTel producer -> hoptrace worker.
Either way the hop stays in one trace, the consumer span a child of the producer span."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery")
otel_celery = pytest.importorskip("opentelemetry.instrumentation.celery")

from celery import Celery  # noqa: E402
from celery_apps.harness import Worker, running_worker  # noqa: E402
from celery_apps.traced_app import build_app  # noqa: E402
from opentelemetry import trace  # noqa: E402

import hoptrace  # noqa: E402
import hoptrace.celery  # noqa: E402

pytestmark = pytest.mark.integration


def start(mode: str, amqp_url: str, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Celery, Any]:
    queue = f"hoptrace-celery-{mode}-{uuid.uuid4().hex[:8]}"
    app = build_app(amqp_url, redis_url, queue, name=f"interop-{mode}")
    out = tmp_path_factory.mktemp(f"celery-{mode}")
    return app, running_worker(amqp_url, redis_url, out, app, queue=queue, mode=mode,
                               concurrency=1)


@pytest.fixture(scope="module")
def otel_worker(amqp_url: str, redis_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Celery, Worker]]:
    app, running = start("otel", amqp_url, redis_url, tmp_path_factory)
    with running as worker:
        yield app, worker


@pytest.fixture(scope="module")
def hoptrace_worker(amqp_url: str, redis_url: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Celery, Worker]]:
    app, running = start("hoptrace", amqp_url, redis_url, tmp_path_factory)
    with running as worker:
        yield app, worker


def test_hoptrace_producer_to_otel_worker(otel_worker: tuple[Celery, Worker], spans: Any) -> None:
    app, worker = otel_worker
    hoptrace.celery.instrument(app)
    try:
        with hoptrace.transaction("edge"):
            result = app.tasks["traced.echo"].delay("to otel")
    finally:
        hoptrace.celery.uninstrument()
    seen = result.get(timeout=30)
    send = spans.one("send traced.echo")
    runs = worker.records.wait_for(
        lambda found: any(s["name"] == "run/traced.echo" for s in found)
    )
    (run,) = [s for s in runs if s["name"] == "run/traced.echo"]
    assert run["parent_id"] == f"{send.context.span_id:016x}"
    assert run["trace_id"] == f"{send.context.trace_id:032x}" == seen["trace_id"]
    assert run["kind"] == "CONSUMER"


def test_otel_producer_to_hoptrace_worker(
    hoptrace_worker: tuple[Celery, Worker], spans: Any
) -> None:
    app, worker = hoptrace_worker
    instrumentor = otel_celery.CeleryInstrumentor()
    instrumentor.instrument()
    try:
        with trace.get_tracer("interop-test").start_as_current_span("otel edge"):
            result = app.tasks["traced.echo"].delay("from otel")
    finally:
        instrumentor.uninstrument()
    seen = result.get(timeout=30)
    publish = spans.one("apply_async/traced.echo")
    edge = spans.one("otel edge")
    assert publish.parent is not None and publish.parent.span_id == edge.context.span_id
    (process,) = worker.records.process_spans(result.id)
    assert process["parent_id"] == f"{publish.context.span_id:016x}"
    assert process["trace_id"] == f"{publish.context.trace_id:032x}" == seen["trace_id"]
    assert seen["span_id"] == process["span_id"]
    # OTel sends no transaction ID: the worker starts one, and it is on the span and the task.
    assert seen["transaction_id"] == process["attributes"]["hoptrace.transaction.id"]
