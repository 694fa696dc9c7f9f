"""The ASGI edge middleware, in a real Starlette app served in-process."""

from __future__ import annotations

import logging
import warnings

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

with warnings.catch_warnings():  # Starlette prefers httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import hoptrace
from hoptrace.asgi import TransactionMiddleware
from hoptrace.core import semconv
from hoptrace.core.propagator import baggage_entry

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"


async def item(request: Request) -> JSONResponse:
    headers = hoptrace.inject({})
    logging.getLogger("test.asgi").info("handling item")
    return JSONResponse(
        {
            "transaction_id": hoptrace.current_transaction_id(),
            "trace_id": hoptrace.current_trace_id(),
            "span_id": hoptrace.current_span_id(),
            "outgoing": headers,
        }
    )


async def publish(request: Request) -> JSONResponse:
    with hoptrace.produce_scope({}, "orders", "rabbitmq") as scope:
        carrier = scope.carrier
    return JSONResponse({"outgoing": carrier})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("handler failed")


async def fail(request: Request) -> JSONResponse:
    return JSONResponse({}, status_code=503)


ROUTES = [
    Route("/items/{item_id}", item),
    Route("/publish", publish, methods=["POST"]),
    Route("/boom", boom),
    Route("/fail", fail),
]


def make_client(*, otel_outer: bool = False) -> TestClient:
    app = Starlette(routes=ROUTES, middleware=[Middleware(TransactionMiddleware)])
    served = OpenTelemetryMiddleware(app) if otel_outer else app
    return TestClient(served, raise_server_exceptions=False)


def test_new_request_starts_a_transaction_and_a_server_span(spans):
    response = make_client().get("/items/7")
    body = response.json()
    tx = response.headers["x-transaction-id"]
    assert tx == body["transaction_id"]
    span = spans.one("GET /items/{item_id}")
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert span.attributes[semconv.TRANSACTION_ID] == tx
    assert span.attributes[semconv.HTTP_ROUTE] == "/items/{item_id}"
    assert span.attributes[semconv.URL_PATH] == "/items/7"
    assert span.attributes[semconv.HTTP_RESPONSE_STATUS_CODE] == 200
    assert body["trace_id"] == f"{span.context.trace_id:032x}"
    assert body["span_id"] == f"{span.context.span_id:016x}"
    assert baggage_entry(body["outgoing"]["baggage"], "transaction.id") == tx


def test_incoming_traceparent_and_transaction_id_are_continued(spans):
    response = make_client().get(
        "/items/1", headers={"traceparent": TRACEPARENT, "X-Transaction-ID": "order-42"}
    )
    assert response.headers["x-transaction-id"] == "order-42"
    assert response.json()["transaction_id"] == "order-42"
    span = spans.one("GET /items/{item_id}")
    assert f"{span.context.trace_id:032x}" == UPSTREAM_TRACE
    assert f"{span.parent.span_id:016x}" == UPSTREAM_SPAN
    assert response.json()["trace_id"] == UPSTREAM_TRACE


def test_publish_inside_the_request_is_a_child_of_the_server_span(spans):
    response = make_client().post("/publish", headers={"x-transaction-id": "checkout-1"})
    carrier = response.json()["outgoing"]
    server = spans.one("POST /publish")
    send = spans.one("send orders")
    assert send.parent.span_id == server.context.span_id
    assert baggage_entry(carrier["baggage"], "transaction.id") == "checkout-1"
    assert carrier["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"


def test_malformed_incoming_context_gives_a_fresh_trace_and_transaction(spans):
    response = make_client().get(
        "/items/1",
        headers={"traceparent": "00-zzzz-not-a-traceparent", "x-transaction-id": "bad id!"},
    )
    tx = response.headers["x-transaction-id"]
    assert tx != "bad id!"
    assert tx == response.json()["transaction_id"]
    span = spans.one("GET /items/{item_id}")
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != UPSTREAM_TRACE
    rejected = span.attributes[semconv.CONTEXT_REJECTED]
    assert "traceparent.format" in rejected
    assert "transaction_id.format" in rejected
    counts = hoptrace.diagnostics()
    assert any(key.startswith("rejected.traceparent") for key in counts)


def test_handler_exception_marks_the_span_and_still_returns_the_id(spans):
    response = make_client().get("/boom", headers={"x-transaction-id": "tx-boom"})
    assert response.status_code == 500
    span = spans.one("GET /boom")
    assert span.status.status_code is StatusCode.ERROR
    assert "RuntimeError" in span.status.description
    assert [event.name for event in span.events] == ["exception"]


def test_server_error_status_marks_the_span(spans):
    response = make_client().get("/fail")
    assert response.status_code == 503
    span = spans.one("GET /fail")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[semconv.HTTP_RESPONSE_STATUS_CODE] == 503
    assert response.headers["x-transaction-id"] == span.attributes[semconv.TRANSACTION_ID]


def test_otel_asgi_server_span_is_reused_not_duplicated(spans):
    response = make_client(otel_outer=True).get(
        "/items/3", headers={"traceparent": TRACEPARENT, "x-transaction-id": "reuse-1"}
    )
    assert response.headers["x-transaction-id"] == "reuse-1"
    servers = [s for s in spans.all() if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans.all()]
    (server,) = servers
    assert server.instrumentation_scope.name.startswith("opentelemetry.instrumentation.asgi")
    assert server.attributes[semconv.TRANSACTION_ID] == "reuse-1"
    body = response.json()
    assert body["span_id"] == f"{server.context.span_id:016x}"
    assert body["trace_id"] == UPSTREAM_TRACE
    assert body["transaction_id"] == "reuse-1"


def test_untrusted_edge_starts_a_new_trace_linked_to_the_caller(spans):
    hoptrace.configure(trust_incoming=False)
    response = make_client().get(
        "/items/1",
        headers={"traceparent": TRACEPARENT, "baggage": "tenant=acme", "x-transaction-id": "t-1"},
    )
    span = spans.one("GET /items/{item_id}")
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != UPSTREAM_TRACE
    assert [f"{link.context.span_id:016x}" for link in span.links] == [UPSTREAM_SPAN]
    assert "tenant" not in response.json()["outgoing"].get("baggage", "")
    # An untrusted caller never chooses the transaction: a new one, the claim kept apart.
    tx = response.headers["x-transaction-id"]
    assert tx != "t-1" and response.json()["transaction_id"] == tx
    assert span.attributes[semconv.TRANSACTION_ID] == tx
    assert span.attributes[semconv.TRANSACTION_UPSTREAM_ID] == "t-1"


def test_middleware_option_marks_one_edge_untrusted(spans):
    app = Starlette(
        routes=ROUTES, middleware=[Middleware(TransactionMiddleware, trust_incoming=False)]
    )
    response = TestClient(app).get(
        "/items/1", headers={"traceparent": TRACEPARENT, "x-transaction-id": "t-2"}
    )
    span = spans.one("GET /items/{item_id}")
    assert span.parent is None and span.attributes[semconv.TRANSACTION_UPSTREAM_ID] == "t-2"
    assert response.headers["x-transaction-id"] != "t-2"
    # the setting itself is untouched: a trusting edge still continues the caller's
    trusting = make_client().get("/items/1", headers={"x-transaction-id": "t-3"})
    assert trusting.headers["x-transaction-id"] == "t-3"


def test_configured_header_name_is_matched_case_insensitively(spans):
    hoptrace.configure(transaction_header="X-Correlation-ID")
    response = make_client().get("/items/1", headers={"x-correlation-id": "corr-9"})
    assert response.headers["X-Correlation-ID"] == "corr-9"
    assert response.json()["transaction_id"] == "corr-9"


@pytest.mark.usefixtures("no_sdk")
def test_without_sdk_the_incoming_trace_and_transaction_are_kept():
    response = make_client().get(
        "/items/1", headers={"traceparent": TRACEPARENT, "x-transaction-id": "nosdk-1"}
    )
    body = response.json()
    assert body["trace_id"] == UPSTREAM_TRACE
    assert body["transaction_id"] == "nosdk-1"
    assert body["outgoing"]["traceparent"].split("-")[1] == UPSTREAM_TRACE
    assert response.headers["x-transaction-id"] == "nosdk-1"


def test_lifespan_and_other_scopes_pass_through(spans):
    app = Starlette(routes=ROUTES, middleware=[Middleware(TransactionMiddleware)])
    with TestClient(app) as client:  # runs the lifespan protocol through the middleware
        assert client.get("/items/5").status_code == 200
    assert len([s for s in spans.all() if s.kind is SpanKind.SERVER]) == 1


def _without_scope_route(app):
    """Inner middleware that removes ``scope["route"]`` once the router has run, as
    Starlette < 1.7 (which never sets it) leaves the scope."""

    async def wrapped(scope, receive, send):
        try:
            await app(scope, receive, send)
        finally:
            scope.pop("route", None)

    return wrapped


@pytest.mark.parametrize(
    ("routes", "path", "name"),
    [
        (ROUTES, "/items/3", "GET /items/{item_id}"),
        # One endpoint behind two templates: the route is unknown, the span keeps the method.
        ([Route("/items/{item_id}", item), Route("/things/{thing_id}", item)], "/items/3", "GET"),
    ],
    ids=["one-route", "endpoint-on-two-routes"],
)
def test_route_is_found_from_the_endpoint_when_starlette_does_not_set_it(
    spans, routes, path, name
):
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TransactionMiddleware), Middleware(_without_scope_route)],
    )
    assert TestClient(app).get(path).status_code == 200
    (span,) = [s for s in spans.all() if s.kind is SpanKind.SERVER]
    assert span.name == name
    assert span.attributes.get(semconv.HTTP_ROUTE) == (name.partition(" ")[2] or None)


def test_example_http_asgi_runs_and_every_line_shares_the_callers_transaction():
    import re
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "http_asgi.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    hop_lines = re.findall(r"^shop\s+tx=(\S+) trace=(\S+)\s+(checkout|charging)", out.stdout, re.M)
    assert [line[2] for line in hop_lines] == ["checkout", "charging"]
    assert {line[0] for line in hop_lines} == {"order-42-checkout"}
    assert len({line[1] for line in hop_lines}) == 1
    trace_id = hop_lines[0][1]
    assert f"trace {trace_id}  transaction order-42-checkout" in out.stdout
    assert "process orders" in out.stdout and "x-transaction-id=order-42-checkout" in out.stdout
