"""A Flask app behind a real WSGI server; the request's transaction ID is in every log line.

Starts ``wsgiref``'s server on a free local port in a thread, sends one request with a
``traceparent`` from an upstream caller, and prints the log lines, the response header and the
waterfall (``hoptrace view``) of the spans the request made.

    python examples/http_wsgi.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import hoptrace
from hoptrace import logs
from hoptrace.cli import main as hoptrace_cli
from hoptrace.export import JsonLinesSpanExporter
from hoptrace.wsgi import TransactionMiddleware

UPSTREAM = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
log = logging.getLogger("inventory")

app = Flask("inventory")
app.wsgi_app = TransactionMiddleware(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/stock/<sku>")
def stock(sku: str):  # type: ignore[no-untyped-def]
    log.info("looking up stock for %s", sku)
    with hoptrace.produce_scope({}, "stock-audit", "memory") as send:
        log.info("audit event queued (traceparent %s)", send.carrier["traceparent"])
    return jsonify(sku=sku, available=7)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    spans = Path(tempfile.mkdtemp()) / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "inventory"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans)))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(name)-9s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/stock/sku-1"
        request = urllib.request.Request(url, headers={"traceparent": UPSTREAM})
        with urllib.request.urlopen(request, timeout=10) as response:
            tx = response.headers["X-Transaction-ID"]
            print(f"response {response.status}, X-Transaction-ID: {tx}")
    finally:
        server.shutdown()
        thread.join()
    provider.shutdown()
    print(f"\nspans written to {spans}\n")
    hoptrace_cli(["view", str(spans)], standalone_mode=False)
    return 0 if tx else 1


if __name__ == "__main__":
    raise SystemExit(main())
