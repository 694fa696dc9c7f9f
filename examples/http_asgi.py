"""An HTTP request into a Starlette app that publishes a message; a consumer handles it.

Needs no broker or server: the app is called in-process through httpx. The request carries
a caller's ``X-Transaction-ID``; every log line (the endpoint's and the consumer's) carries it,
the response echoes it, and the spans go to a JSONL file that ``hoptrace view`` draws.

    python examples/http_asgi.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import hoptrace
from hoptrace import logs
from hoptrace.asgi import TransactionMiddleware
from hoptrace.cli import main as hoptrace_cli
from hoptrace.export import JsonLinesSpanExporter

log = logging.getLogger("shop")
queue: asyncio.Queue[tuple[dict[str, Any], dict[str, str]]] = asyncio.Queue()


async def checkout(request: Request) -> JSONResponse:
    order = await request.json()
    log.info("checkout for order %s: publishing", order["id"])
    with hoptrace.produce_scope({}, "orders", "memory") as send:
        await queue.put((order, send.carrier))
    return JSONResponse({"queued": order["id"]}, status_code=202)


async def consume_one() -> None:
    order, headers = await queue.get()
    with hoptrace.consume_scope(headers, "orders", "memory"):
        log.info("charging card for order %s", order["id"])


app = Starlette(
    routes=[Route("/checkout", checkout, methods=["POST"])],
    middleware=[Middleware(TransactionMiddleware)],
)


async def run() -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        response = await client.post(
            "/checkout", json={"id": 42}, headers={"X-Transaction-ID": "order-42-checkout"}
        )
    log.info("response %s, x-transaction-id=%s", response.status_code,
             response.headers["x-transaction-id"])
    await consume_one()
    return response.headers["x-transaction-id"]


def main() -> int:
    spans = Path(tempfile.mkdtemp()) / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans)))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(name)-5s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    tx = asyncio.run(run())
    provider.shutdown()
    print(f"\nspans written to {spans}\n")
    hoptrace_cli(["view", str(spans)], standalone_mode=False)
    return 0 if tx == "order-42-checkout" else 1


if __name__ == "__main__":
    raise SystemExit(main())
