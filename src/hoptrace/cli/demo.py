"""``hoptrace demo``: one transaction through an HTTP edge, a Celery task and a kombu message.

Runs with no broker: kombu's ``memory://`` transport and an in-process Celery worker.

1. ``POST /checkout`` reaches a Starlette app behind :class:`hoptrace.asgi.TransactionMiddleware`;
2. the endpoint enqueues the ``demo.charge_card`` Celery task (traced by ``hoptrace.celery``);
3. the task publishes a ``shipping`` message with kombu (traced by ``hoptrace.kombu``);
4. a kombu consumer handles it.

Each hop logs one line; every line carries the request's transaction ID. The spans go to a
JSONL file, which the demo then draws as a waterfall and as an HTML report. When a Jaeger
answers (``scripts/brokers up`` runs one), the spans also go to it over OTLP, and the demo
reads them back from its query API, as ``hoptrace view --jaeger`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
from opentelemetry import trace

if TYPE_CHECKING:
    from rich.console import Console

    from .backends import JaegerReader
    from .spanfile import Trace

LOGGER = "hoptrace.demo"
TASK = "demo.charge_card"
#: How often kombu's in-memory transport polls its queues (its default is one second).
POLL_S = 0.05
#: Where ``scripts/brokers up`` runs Jaeger: its query API, and OTLP over HTTP.
DEFAULT_JAEGER_URL = "http://127.0.0.1:16686"
OTLP_HTTP_PORT = 4318
#: How long the demo waits for Jaeger to hold every span it exported.
JAEGER_WAIT_S = 20.0


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
    otlp_endpoint: str | None = None,
) -> tuple[Path, list[str], list[str | None]]:
    """Run the flow ``requests`` times (on ``memory://``, or on the local brokers).

    The spans go to ``spans.jsonl`` in ``out_dir``, and over OTLP/HTTP to ``otlp_endpoint``
    (e.g. ``http://127.0.0.1:4318``) when one is given. Return the span file, each
    response's transaction ID, and the transaction ID of each demo log line.
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
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            providers[name].add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces", timeout=5)
                )
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


def find_jaeger(option: str) -> tuple[JaegerReader | None, str]:
    """The Jaeger to export to (None if none answers), and one line saying what was found.

    ``option`` is ``auto`` (``HOPTRACE_JAEGER_URL``, else the local default), ``off``, or a
    query URL.
    """
    from .backends import BackendError, JaegerReader

    if option == "off":
        return None, "Jaeger: off (--jaeger off); the spans go to the file only."
    url = option
    if option == "auto":
        url = os.environ.get("HOPTRACE_JAEGER_URL") or DEFAULT_JAEGER_URL
    try:
        reader = JaegerReader(url, timeout=2.0)
        reader.services()
    except BackendError as exc:
        return None, (
            f"Jaeger: none answering ({exc}); the spans go to the file only "
            "(`scripts/brokers up jaeger` starts one)."
        )
    return reader, f"Jaeger answers at {reader.url}: the spans go there too, over OTLP."


def otlp_endpoint_for(reader: JaegerReader) -> str:
    """Jaeger's OTLP/HTTP receiver: the query API's host, port 4318."""
    host = urlsplit(reader.url).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{OTLP_HTTP_PORT}"


def read_back(
    reader: JaegerReader, file_traces: list[Trace], since_ns: int, wait_s: float = JAEGER_WAIT_S
) -> dict[str, Trace]:
    """Read this run's traces back from Jaeger, waiting until it holds every span of them."""
    from .backends import TimeWindow, fetch_window
    from .spanfile import group_traces

    wanted = {t.trace_id: len(t.spans) for t in file_traces}
    services = sorted({root.service for t in file_traces for root in t.roots})
    deadline = time.monotonic() + wait_s
    while True:
        window = TimeWindow(since_ns, time.time_ns() + 1_000_000_000)
        found = fetch_window(reader, services, window, page_size=max(100, 2 * len(wanted)))
        grouped = group_traces(found.spans)
        ours = {trace_id: t for trace_id, t in grouped.items() if trace_id in wanted}
        complete = all(len(ours[t].spans) >= n for t, n in wanted.items() if t in ours)
        if (len(ours) == len(wanted) and complete) or time.monotonic() >= deadline:
            return ours
        time.sleep(0.25)


def show_round_trip(
    console: Console, reader: JaegerReader, file_traces: list[Trace], since_ns: int
) -> Trace | None:
    """Print what Jaeger gave back; return the first trace as read from it (None: it failed)."""
    from .backends import BackendError
    from .waterfall import format_ms

    try:
        back = read_back(reader, file_traces, since_ns)
    except BackendError as exc:
        console.print(f"[red]Jaeger round trip failed: {exc}[/red]")
        return None
    same = [
        t
        for t in file_traces
        if t.trace_id in back
        and {(s.span_id, s.parent_span_id) for s in back[t.trace_id].spans}
        == {(s.span_id, s.parent_span_id) for s in t.spans}
    ]
    spans = sum(len(t.spans) for t in back.values())
    console.print(
        f"Jaeger round trip: read back {len(back)} of {len(file_traces)} traces ({spans} spans) "
        f"from {reader.url}; {len(same)} match the file span for span, parents included.",
        soft_wrap=True,
    )
    if len(same) != len(file_traces):
        console.print("[red]Jaeger did not give back every span the demo exported[/red]")
        return None
    slowest = max(back.values(), key=lambda t: t.duration_ms)
    console.print(
        f"slowest trace ({format_ms(slowest.duration_ms)}), as OTLP JSON: "
        f"{reader.trace_url(slowest.trace_id)}",
        soft_wrap=True,
    )
    ui = reader.ui_url(slowest.trace_id)
    console.print(
        f"in the Jaeger UI: {ui}" if ui else "(this Jaeger serves no UI: a source build)",
        soft_wrap=True,
    )
    first = file_traces[0].trace_id
    return back[first]


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
@click.option(
    "--jaeger",
    "jaeger_option",
    default="auto",
    show_default=True,
    metavar="URL|auto|off",
    help="Also export to this Jaeger over OTLP and read the traces back from its query API. "
    f"auto: $HOPTRACE_JAEGER_URL, else {DEFAULT_JAEGER_URL}, when it answers.",
)
@click.option(
    "--otlp",
    "otlp_option",
    default=None,
    metavar="URL",
    help=f"Jaeger's OTLP/HTTP endpoint (default: the --jaeger host, port {OTLP_HTTP_PORT}).",
)
def demo(
    out_dir: str | None,
    requests: int | None,
    brokers: str,
    amqp_url: str | None,
    kafka_bootstrap: str | None,
    jaeger_option: str,
    otlp_option: str | None,
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
    jaeger, found_jaeger = find_jaeger(jaeger_option)
    click.echo(found_jaeger)
    otlp = (otlp_option or otlp_endpoint_for(jaeger)) if jaeger is not None else None
    target = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="hoptrace-demo-"))
    click.echo("log lines (each hop logs one; all share the request's transaction ID):")
    started_ns = time.time_ns() - 1_000_000_000
    spans_path, transactions, logged = run_demo(
        target,
        requests,
        brokers=brokers,
        amqp_url=amqp_url,
        kafka_bootstrap=kafka_bootstrap,
        otlp_endpoint=otlp,
    )
    traces = sorted(group_traces(read_spans(spans_path)).values(), key=lambda t: t.start_ns)
    first = next((t for t in traces if t.transaction_id == transactions[0]), None)
    from . import _console

    console = _console()
    console.print()
    round_trip_ok = True
    if jaeger is not None and first is not None:
        ordered = [first, *(t for t in traces if t is not first)]
        from_jaeger = show_round_trip(console, jaeger, ordered, started_ns)
        round_trip_ok = from_jaeger is not None
        if from_jaeger is not None:
            console.print(f"the first request's trace, as read back from Jaeger ({jaeger.url}):")
            first = from_jaeger
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
    if jaeger is not None:
        root = first.spans[0].service if first is not None and first.spans else "web"
        console.print(
            f"      hoptrace stats --jaeger {jaeger.url} --service {root} --since 15m",
            soft_wrap=True,
        )
    # Each request logged one line per hop, all with its transaction ID.
    hops = 4 if brokers == "local" else 3
    expected = sorted(tx for tx in transactions for _ in range(hops))
    if first is None or sorted(str(tx) for tx in logged) != expected:
        console.print("[red]the hops did not share one transaction ID per request[/red]")
        sys.exit(1)
    if not round_trip_ok:
        sys.exit(1)
