"""``hoptrace demo``: one transaction through an HTTP edge, a Celery task and a kombu message.

Runs with no broker: kombu's ``memory://`` transport and an in-process Celery worker.

1. ``POST /checkout`` reaches a Starlette app behind :class:`hoptrace.asgi.TransactionMiddleware`;
2. the endpoint enqueues the ``demo.charge_card`` Celery task (traced by ``hoptrace.celery``);
3. the task publishes a ``shipping`` message with kombu (traced by ``hoptrace.kombu``);
4. a kombu consumer handles it.

Each hop logs one line; every line carries the request's transaction ID. The spans go to a
JSONL file, which the demo then draws as a waterfall and as an HTML report.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import click
from opentelemetry import trace

LOGGER = "hoptrace.demo"
TASK = "demo.charge_card"
#: How often kombu's in-memory transport polls its queues (its default is one second).
POLL_S = 0.05


#: The demo's three "services" share one process; this says whose code is running.
#: The Celery worker's thread starts with the default.
_service: ContextVar[str] = ContextVar("hoptrace_demo_service", default="worker")


class _PerServiceProvider(trace.TracerProvider):
    """One SDK provider per service; each span goes to the provider of the code that made it.

    In production each service is its own process with its own ``service.name``; the demo
    runs them in one process and keeps them apart this way.
    """

    def __init__(self, providers: dict[str, Any]) -> None:
        self.providers = providers

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        """Return a tracer that starts each span with the current service's provider."""
        return _PerServiceTracer(
            self, instrumenting_module_name, instrumenting_library_version, schema_url
        )


class _PerServiceTracer(trace.Tracer):
    def __init__(
        self, owner: _PerServiceProvider, name: str, version: str | None, schema: str | None
    ) -> None:
        self._owner = owner
        self._args = (name, version, schema)

    def _tracer(self) -> trace.Tracer:
        provider = self._owner.providers[_service.get()]
        return provider.get_tracer(*self._args)  # type: ignore[no-any-return]

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._tracer().start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        with self._tracer().start_as_current_span(*args, **kwargs) as span:
            yield span


class _DemoLines(logging.Handler):
    """Print each demo log line as it happens, keeping the transaction ID visible."""

    def __init__(self, echo: Any) -> None:
        super().__init__()
        self.echo = echo
        self.transactions: list[str | None] = []
        self.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d tx=%(transaction_id)s "
                "trace=%(trace_id)s  %(message)s",
                "%H:%M:%S",
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.transactions.append(getattr(record, "transaction_id", None))
        self.echo(self.format(record))


def run_demo(
    out_dir: Path,
    requests: int,
    echo: Any = click.echo,
    brokers: str = "memory",
    amqp_url: str | None = None,
    kafka_bootstrap: str | None = None,
) -> tuple[Path, list[str], list[str | None]]:
    """Run the flow ``requests`` times (on ``memory://``, or on the local brokers).

    Return the span file, each response's transaction ID, and the transaction ID of each
    demo log line.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from hoptrace import logs
    from hoptrace.export import JsonLinesSpanExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    spans_path = out_dir / "spans.jsonl"
    spans_path.unlink(missing_ok=True)
    providers = {}
    for name in ("web", "worker", "relay", "shipping"):
        providers[name] = TracerProvider(resource=Resource.create({"service.name": name}))
        providers[name].add_span_processor(
            SimpleSpanProcessor(JsonLinesSpanExporter(spans_path))
        )
    trace.set_tracer_provider(_PerServiceProvider(providers))

    logs.install()
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    log.propagate = False
    lines = _DemoLines(echo)
    log.addHandler(lines)
    try:
        if brokers == "local":
            from .demo_brokers import DEFAULT_AMQP_URL, DEFAULT_KAFKA, run_brokers_demo

            transactions = run_brokers_demo(
                requests,
                log,
                _service.set,
                amqp_url or DEFAULT_AMQP_URL,
                kafka_bootstrap or DEFAULT_KAFKA,
            )
        else:
            transactions = _memory_flow(requests, log)
    finally:
        for provider in providers.values():
            provider.shutdown()
        log.removeHandler(lines)
    return spans_path, transactions, lines.transactions


def _memory_flow(requests: int, log: logging.Logger) -> list[str]:
    """HTTP → Celery on ``memory://`` (in-process worker) → kombu consumer, one at a time."""
    from celery import Celery  # type: ignore[import-untyped]
    from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    import hoptrace.celery
    import hoptrace.kombu

    shipping = Queue("shipping", Exchange("shop", type="direct"), routing_key="shipping")  # type: ignore[no-untyped-call]
    app = Celery("hoptrace-demo", broker="memory://", backend="cache+memory://")
    app.conf.update(
        worker_hijack_root_logger=False,
        task_default_queue="checkout",
        broker_transport_options={"polling_interval": POLL_S},
    )
    hoptrace.celery.instrument(app)
    hoptrace.kombu.instrument()

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def charge_card(order_id: int) -> str:
        log.info("worker   charging the card for order %s, then publishing 'shipping'", order_id)
        with Connection("memory://") as conn:  # type: ignore[no-untyped-call]
            conn.Producer().publish(
                {"order": order_id}, exchange=shipping.exchange, routing_key="shipping",
                declare=[shipping],
            )
        return "charged"

    web = web_app(charge_card, log)
    transactions: list[str] = []
    handled = threading.Event()
    remaining = [requests]

    def ship(body: dict[str, int], message: Any) -> None:
        log.info("shipping handling 'shipping' for order %s: done", body["order"])
        message.ack()
        remaining[0] -= 1
        if remaining[0] == 0:
            handled.set()

    ready = threading.Event()

    def consume() -> None:
        _service.set("shipping")
        with Connection(  # type: ignore[no-untyped-call]
            "memory://", transport_options={"polling_interval": POLL_S}
        ) as conn, conn.Consumer(shipping, callbacks=[ship]):
            ready.set()
            while not handled.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue

    consumer = threading.Thread(target=consume, name="shipping", daemon=True)
    consumer.start()
    ready.wait(10)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            _service.set("web")
            for order_id in range(1, requests + 1):
                response_tx, task_id = asyncio.run(_post_checkout(web, order_id))
                transactions.append(response_tx)
                app.AsyncResult(task_id).get(timeout=30, interval=0.01)
            if not handled.wait(30):
                raise click.ClickException("the shipping consumer did not receive every message")
        consumer.join(10)
    finally:
        hoptrace.kombu.uninstrument()
        hoptrace.celery.uninstrument()
    return transactions


def web_app(charge_card: Any, log: logging.Logger) -> Any:
    """Return the demo's Starlette app: ``POST /checkout`` enqueues ``charge_card``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from hoptrace.asgi import TransactionMiddleware

    async def checkout(request: Request) -> JSONResponse:
        order = await request.json()
        log.info("web      POST /checkout order %s: enqueueing %s", order["id"], TASK)
        result = charge_card.delay(order["id"])
        return JSONResponse({"task_id": result.id}, status_code=202)

    return Starlette(
        routes=[Route("/checkout", checkout, methods=["POST"])],
        middleware=[Middleware(TransactionMiddleware)],
    )


async def _post_checkout(web: Any, order_id: int) -> tuple[str, str]:
    import httpx

    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        response = await client.post("/checkout", json={"id": order_id})
    response.raise_for_status()
    return response.headers["x-transaction-id"], response.json()["task_id"]


@click.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for spans.jsonl and report.html (default: a new temporary directory).",
)
@click.option(
    "--requests",
    default=None,
    type=int,
    help="How many checkouts to run (default: 1; 20, concurrently, with --brokers local).",
)
@click.option(
    "--brokers",
    type=click.Choice(["auto", "memory", "local"]),
    default="auto",
    show_default=True,
    help="memory: kombu's memory:// transport, no broker needed. local: RabbitMQ and Kafka. "
    "auto: local when both answer on their default ports, else memory.",
)
@click.option("--amqp-url", default=None, help="RabbitMQ URL for --brokers local.")
@click.option(
    "--kafka", "kafka_bootstrap", default=None, help="Kafka bootstrap for --brokers local."
)
def demo(
    out_dir: str | None,
    requests: int | None,
    brokers: str,
    amqp_url: str | None,
    kafka_bootstrap: str | None,
) -> None:
    """Run HTTP → Celery → message consumer with one transaction ID, then show the trace.

    With --brokers local: HTTP → Celery on RabbitMQ → Kafka → RabbitMQ → final consumer.
    """
    from .html_report import render_html
    from .spanfile import group_traces, read_spans
    from .waterfall import print_traces

    if brokers == "auto":
        from .demo_brokers import DEFAULT_AMQP_URL, DEFAULT_KAFKA, missing_brokers

        found = not missing_brokers(amqp_url or DEFAULT_AMQP_URL, kafka_bootstrap or DEFAULT_KAFKA)
        brokers = "local" if found else "memory"
        click.echo(
            "RabbitMQ and Kafka answer on their default ports: running on the real brokers "
            "(--brokers memory to stay in memory)."
            if found
            else "no brokers on the default ports: running in memory (kombu memory://)."
        )
    if requests is None:
        requests = 20 if brokers == "local" else 1
    if requests < 1:
        raise click.ClickException("--requests must be at least 1")
    if brokers == "local":
        from .demo_brokers import DEFAULT_AMQP_URL, DEFAULT_KAFKA, check_brokers

        check_brokers(amqp_url or DEFAULT_AMQP_URL, kafka_bootstrap or DEFAULT_KAFKA)
    target = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="hoptrace-demo-"))
    click.echo("log lines (each hop logs one; all share the request's transaction ID):")
    spans_path, transactions, logged = run_demo(
        target, requests, brokers=brokers, amqp_url=amqp_url, kafka_bootstrap=kafka_bootstrap
    )
    traces = sorted(group_traces(read_spans(spans_path)).values(), key=lambda t: t.start_ns)
    first = next((t for t in traces if t.transaction_id == transactions[0]), None)
    from . import _console

    console = _console()
    console.print()
    if first is not None:
        print_traces(console, [first])
    html_path = target / "report.html"
    html_path.write_text(render_html(traces, title="hoptrace demo", source=str(spans_path)))
    console.print()
    console.print(f"spans (JSONL): {spans_path}", soft_wrap=True)
    console.print(f"HTML report:   {html_path}", soft_wrap=True)
    console.print(
        f"next: hoptrace view {spans_path}  |  hoptrace stats {spans_path}", soft_wrap=True
    )
    # Each request logged one line per hop, all with its transaction ID.
    hops = 4 if brokers == "local" else 3
    expected = sorted(tx for tx in transactions for _ in range(hops))
    if first is None or sorted(str(tx) for tx in logged) != expected:
        console.print("[red]the hops did not share one transaction ID per request[/red]")
        sys.exit(1)
