"""The WSGI edge middleware, in a real Flask app served in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, Response, jsonify
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind, StatusCode

import hoptrace
from hoptrace.core import semconv
from hoptrace.core.propagator import baggage_entry
from hoptrace.wsgi import TransactionMiddleware

UPSTREAM_TRACE = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"


def make_app(*, otel_outer: bool = False, trust_incoming: bool | None = None) -> Flask:
    app = Flask("hoptrace-test")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> Response:
        return jsonify(
            transaction_id=hoptrace.current_transaction_id(),
            trace_id=hoptrace.current_trace_id(),
            span_id=hoptrace.current_span_id(),
            outgoing=hoptrace.inject({}),
        )

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for _ in range(3):
                # Runs while the server iterates the body: the request's context is current.
                yield (hoptrace.current_transaction_id() or "none") + "\n"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/boom")
    def boom() -> Response:
        raise RuntimeError("handler failed")

    app.wsgi_app = TransactionMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, trust_incoming=trust_incoming
    )
    if otel_outer:
        app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_new_request_starts_a_transaction_and_a_server_span(spans):
    response = make_app().test_client().get("/orders/12", buffered=True)
    tx = response.headers["X-Transaction-ID"]
    body = response.get_json()
    assert body["transaction_id"] == tx
    span = spans.one("GET /orders/<int:order_id>")
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert span.attributes[semconv.TRANSACTION_ID] == tx
    assert span.attributes[semconv.HTTP_RESPONSE_STATUS_CODE] == 200
    assert body["span_id"] == f"{span.context.span_id:016x}"
    assert baggage_entry(body["outgoing"]["baggage"], "transaction.id") == tx


def test_incoming_traceparent_and_transaction_id_are_continued(spans):
    response = make_app().test_client().get(
        "/orders/1",
        headers={"traceparent": TRACEPARENT, "X-Transaction-ID": "order-77"},
        buffered=True,
    )
    assert response.headers["X-Transaction-ID"] == "order-77"
    span = spans.one("GET /orders/<int:order_id>")
    assert f"{span.context.trace_id:032x}" == UPSTREAM_TRACE
    assert f"{span.parent.span_id:016x}" == UPSTREAM_SPAN
    assert response.get_json()["trace_id"] == UPSTREAM_TRACE


def test_streamed_body_runs_in_the_request_context_and_the_span_ends_after_it(spans):
    client = make_app().test_client()
    response = client.get("/stream", headers={"x-transaction-id": "stream-1"}, buffered=False)
    assert spans.named("GET /stream") == []  # body not yet sent: span still open
    lines = response.get_data(as_text=True).splitlines()
    response.close()
    assert lines == ["stream-1"] * 3
    assert spans.one("GET /stream").attributes[semconv.TRANSACTION_ID] == "stream-1"
    assert hoptrace.current_transaction_id() is None  # nothing leaked into the caller


def test_handler_exception_marks_the_span_error(spans):
    response = make_app().test_client().get("/boom", buffered=True)
    assert response.status_code == 500
    span = spans.one("GET /boom")
    assert span.status.status_code is StatusCode.ERROR
    assert response.headers["X-Transaction-ID"] == span.attributes[semconv.TRANSACTION_ID]


def test_otel_wsgi_server_span_is_reused_not_duplicated(spans):
    response = make_app(otel_outer=True).test_client().get(
        "/orders/5",
        headers={"traceparent": TRACEPARENT, "x-transaction-id": "reuse-2"},
        buffered=True,
    )
    assert response.headers["X-Transaction-ID"] == "reuse-2"
    servers = [s for s in spans.all() if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans.all()]
    (server,) = servers
    assert server.instrumentation_scope.name.startswith("opentelemetry.instrumentation.wsgi")
    assert server.attributes[semconv.TRANSACTION_ID] == "reuse-2"
    body = response.get_json()
    assert body["span_id"] == f"{server.context.span_id:016x}"
    assert body["transaction_id"] == "reuse-2"


@pytest.mark.usefixtures("no_sdk")
def test_without_sdk_the_incoming_trace_and_transaction_are_kept():
    response = make_app().test_client().get(
        "/orders/1", headers={"traceparent": TRACEPARENT, "x-transaction-id": "nosdk-2"}
    )
    body = response.get_json()
    assert body["trace_id"] == UPSTREAM_TRACE
    assert body["transaction_id"] == "nosdk-2"
    assert response.headers["X-Transaction-ID"] == "nosdk-2"


def test_example_http_wsgi_runs_a_real_server_and_continues_the_upstream_trace():
    import re
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "http_wsgi.py"
    import os

    # Captured output takes its width from COLUMNS, which pytest sets to 80: keep lines whole.
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = re.findall(r"^inventory tx=(\S+) trace=(\S+)", out.stdout, re.M)
    assert len(lines) == 2
    (tx,) = {line[0] for line in lines}
    assert {line[1] for line in lines} == {UPSTREAM_TRACE}
    assert f"X-Transaction-ID: {tx}" in out.stdout
    assert f"trace {UPSTREAM_TRACE}  transaction {tx}" in out.stdout
    assert "GET /stock/<sku>" in out.stdout


def test_untrusted_edge_never_adopts_the_callers_transaction(spans):
    response = make_app(trust_incoming=False).test_client().get(
        "/orders/3", headers={"traceparent": TRACEPARENT, "X-Transaction-ID": "caller-1"},
        buffered=True,
    )
    tx = response.headers["X-Transaction-ID"]
    assert tx != "caller-1" and response.get_json()["transaction_id"] == tx
    span = spans.one("GET /orders/<int:order_id>")
    assert span.parent is None and f"{span.context.trace_id:032x}" != UPSTREAM_TRACE
    assert span.attributes[semconv.TRANSACTION_UPSTREAM_ID] == "caller-1"


def test_request_scope_restores_the_context_it_found_even_after_a_leaked_attach(spans):
    from opentelemetry import context

    from hoptrace._edge import server_scope

    before = context.get_current()
    edge = server_scope([], "GET", "/leak", "http").open()
    inside = hoptrace.current_transaction_id()
    context.attach(context.set_value("leaked", 1))  # a handler that never detaches
    edge.close()
    assert inside is not None
    assert context.get_current() is before
    assert spans.one("GET").end_time is not None
