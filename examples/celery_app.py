"""Celery with hoptrace: a chain, a chord and a retry in one trace and one transaction each.

Needs RabbitMQ (broker) and Redis (results): the local ones (``scripts/brokers up``), or those
named by ``HOPTRACE_AMQP_URL`` and ``HOPTRACE_REDIS_URL``. Run::

    python examples/celery_app.py

That starts a prefork worker for this module in a subprocess, publishes the three workflows
from this process, and prints each workflow's span tree across both processes. To run the
worker yourself instead::

    cd examples && celery -A celery_app worker -P prefork -c 2

The two halves of the setup are marked PRODUCER and WORKER below.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker_urls import amqp_url, redis_url
from celery import Celery, chain, chord, signals
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import hoptrace
import hoptrace.celery
import hoptrace.logs

BROKER = amqp_url()
BACKEND = redis_url()
QUEUE = os.environ.get("HOPTRACE_EXAMPLE_QUEUE", "hoptrace-example")
SPANS_FILE = Path(os.environ.get("HOPTRACE_EXAMPLE_SPANS",
                                 Path(tempfile.gettempdir()) / "hoptrace-example-spans.jsonl"))

app = Celery("celery_app", broker=BROKER, backend=BACKEND)
app.conf.update(task_default_queue=QUEUE, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)


class JsonLinesSpanExporter(SpanExporter):
    """Append finished spans to a file, one JSON object per line (a stand-in for OTLP)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with SPANS_FILE.open("a") as out:
            for span in spans:
                out.write(json.dumps({
                    "name": span.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "start": span.start_time,
                    "transaction_id": (span.attributes or {}).get("hoptrace.transaction.id"),
                    "links": [f"{link.context.span_id:016x}" for link in span.links],
                    "retry": (span.attributes or {}).get("messaging.message.retry.count"),
                    "pid": os.getpid(),
                }) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def install_tracing() -> None:
    """Install an SDK with a batch exporter, hoptrace's log fields and its Celery hooks."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter()))
    trace.set_tracer_provider(provider)
    hoptrace.logs.install()
    hoptrace.celery.instrument(app)


# WORKER ------------------------------------------------------------------------------------
# Under prefork, install the SDK in each child *after* the fork (worker_process_init): a
# BatchSpanProcessor started in the parent has its export thread in the parent only, so the
# children's spans would never leave. Flush when a child exits, or the last batch is lost.


@signals.worker_process_init.connect(weak=False)
def init_worker_child(**_: Any) -> None:
    """Set up tracing in each prefork child process."""
    install_tracing()


@signals.worker_process_shutdown.connect(weak=False)
def flush_worker_child(**_: Any) -> None:
    """Export the spans still buffered before the child process exits."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()


@app.task(name="example.add")
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(name="example.total")
def total(values: list[int]) -> int:
    """Sum a chord header's results."""
    return sum(values)


@app.task(name="example.flaky", bind=True, max_retries=3)
def flaky(self: Any) -> int:
    """Fail twice, then succeed: three attempts (three spans), each linked to the one before."""
    if self.request.retries < 2:
        raise self.retry(exc=RuntimeError("not yet"), countdown=0)
    return int(self.request.retries)


# PRODUCER ----------------------------------------------------------------------------------


def read_spans() -> list[dict[str, Any]]:
    """Every span both processes have exported so far."""
    if not SPANS_FILE.exists():
        return []
    return [json.loads(line) for line in SPANS_FILE.read_text().splitlines() if line.strip()]


def print_tree(spans: list[dict[str, Any]], trace_id: str) -> None:
    """Print one trace as an indented tree, children in start order."""
    mine = sorted((s for s in spans if s["trace_id"] == trace_id), key=lambda s: s["start"])
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in mine}
    for span in mine:
        by_parent.setdefault(span["parent_id"] if span["parent_id"] in ids else None, []).append(
            span)

    def show(span: dict[str, Any], depth: int) -> None:
        extra = f" retry={span['retry']}" if span["retry"] else ""
        extra += f" links->{','.join(span['links'])}" if span["links"] else ""
        where = "worker" if span["pid"] != os.getpid() else "producer"
        print(f"    {'  ' * depth}{span['name']} [{where} {span['span_id']}]{extra}")
        for child in by_parent.get(span["span_id"], []):
            show(child, depth + 1)

    for root in by_parent.get(None, []):
        show(root, 0)


def run_workflows() -> list[tuple[str, str, str]]:
    """Publish a chain, a chord and a retrying task; return (name, trace, transaction) each."""
    runs = []
    with hoptrace.transaction("checkout") as tx:
        trace_id = hoptrace.current_trace_id() or ""
        result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    print(f"chain  -> {result.get(timeout=30)}  transaction {tx.transaction_id}")
    runs.append(("chain", trace_id, tx.transaction_id or ""))

    with hoptrace.transaction("report") as tx:
        trace_id = hoptrace.current_trace_id() or ""
        result = chord([add.s(i, i) for i in range(3)], total.s()).apply_async()
    print(f"chord  -> {result.get(timeout=30)}  transaction {tx.transaction_id}")
    runs.append(("chord", trace_id, tx.transaction_id or ""))

    with hoptrace.transaction("payment") as tx:
        trace_id = hoptrace.current_trace_id() or ""
        result = flaky.delay()
    print(f"retry  -> {result.get(timeout=30)} retries  transaction {tx.transaction_id}")
    runs.append(("retry", trace_id, tx.transaction_id or ""))
    return runs


def main() -> int:
    """Start a worker, run the workflows, print their span trees, stop the worker."""
    global QUEUE, SPANS_FILE
    QUEUE = f"hoptrace-example-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = QUEUE
    SPANS_FILE = Path(tempfile.mkdtemp(prefix="hoptrace-example-")) / "spans.jsonl"
    install_tracing()
    here = Path(__file__).resolve().parent
    env = {**os.environ, "HOPTRACE_EXAMPLE_QUEUE": QUEUE, "HOPTRACE_EXAMPLE_SPANS": str(SPANS_FILE),
           "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
         "-c", "2", "-Q", QUEUE, "-n", f"{QUEUE}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-l", "WARNING"],
        cwd=here, env=env, stdout=subprocess.DEVNULL,
    )
    try:
        add.delay(0, 0).get(timeout=60)  # the worker is up
        runs = run_workflows()
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: children flush their spans
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(QUEUE)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()

    spans = read_spans()
    failures = 0
    for name, trace_id, transaction_id in runs:
        in_trace = [s for s in spans if s["trace_id"] == trace_id]
        process = [s for s in in_trace if s["name"].startswith("process ")]
        same_tx = {s["transaction_id"] for s in in_trace if s["transaction_id"]}
        # Every task run, retries included, is a span of its own: backends merge spans that
        # share a (trace, span) ID.
        distinct = len({s["span_id"] for s in in_trace}) == len(in_trace)
        ok = bool(process) and same_tx == {transaction_id} and distinct
        failures += not ok
        print(f"\n{name}: {len(process)} task runs, trace {trace_id}, "
              f"{'one transaction' if same_tx == {transaction_id} else same_tx}"
              f"{'' if distinct else ', span IDs repeated'}: {'OK' if ok else 'MISMATCH'}")
        print_tree(spans, trace_id)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
