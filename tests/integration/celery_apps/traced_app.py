"""A Celery app for the worker processes the Celery integration tests start.

Configured from the environment, so one module serves every broker and every mode:

* ``HOPTRACE_CELERY_BROKER`` / ``HOPTRACE_CELERY_BACKEND``: broker and result backend URLs;
* ``HOPTRACE_CELERY_QUEUE``: the queue this worker consumes (unique per test module);
* ``HOPTRACE_CELERY_OUT``: a directory; each worker process writes its finished spans to
  ``spans-<pid>.jsonl`` and its log records to ``logs-<pid>.jsonl`` there;
* ``HOPTRACE_CELERY_MODE``: ``hoptrace`` (default), ``otel`` (OTel's contrib instrumentation),
  or ``both-contrib-first`` / ``both-hoptrace-first`` (both instrumentations, in that order:
  hoptrace should take over from contrib's either way).

The SDK is installed in ``worker_process_init``, that is in each prefork child after the fork,
and flushed in ``worker_process_shutdown``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import hoptrace
import hoptrace.celery
import hoptrace.logs

BROKER = os.environ.get("HOPTRACE_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("HOPTRACE_CELERY_BACKEND", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("HOPTRACE_CELERY_QUEUE", "hoptrace-celery-tests")
OUT = Path(os.environ.get("HOPTRACE_CELERY_OUT", "/tmp/hoptrace-celery"))
MODE = os.environ.get("HOPTRACE_CELERY_MODE", "hoptrace")
#: Modes that instrument with OTel's contrib Celery instrumentation and hoptrace's, in order.
BOTH_MODES = ("both-contrib-first", "both-hoptrace-first")
SPANS = os.environ.get("HOPTRACE_CELERY_SPANS", "file")
#: Set by the tests for the worker processes they start; nothing is installed otherwise.
IN_WORKER = os.environ.get("HOPTRACE_CELERY_WORKER") == "1"

log = logging.getLogger("traced_app")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """Return the parts of a finished span that the tests assert on, JSON-ready."""
    ctx = span.context
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "status": span.status.status_code.name,
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "start": span.start_time,
        "end": span.end_time,
    }


class JsonLinesExporter(SpanExporter):
    """Append each finished span as one JSON line to a per-process file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                out.write(json.dumps(span_record(span), default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class CountingExporter(SpanExporter):
    """Count finished spans by kind and keep none (for the long leak check)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.by_kind[span.kind.name] = self.by_kind.get(span.kind.name, 0) + 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


COUNTER = CountingExporter()


class JsonLinesLogHandler(logging.Handler):
    """Append each log record, with hoptrace's fields, as one JSON line."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.setFormatter(hoptrace.logs.JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self.path.open("a") as out:
            out.write(line + "\n")


def setup_process() -> None:
    """Install the SDK, the log handler and the instrumentation in this worker process."""
    OUT.mkdir(parents=True, exist_ok=True)
    provider = TracerProvider()
    exporter: SpanExporter = (
        COUNTER if SPANS == "count" else JsonLinesExporter(OUT / f"spans-{os.getpid()}.jsonl")
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]  # replace any inherited one
    hoptrace.logs.install()
    handler = JsonLinesLogHandler(OUT / f"logs-{os.getpid()}.jsonl")
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if MODE == "otel":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)
    elif MODE in BOTH_MODES:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        if MODE == "both-contrib-first":
            CeleryInstrumentor().instrument(tracer_provider=provider)
            hoptrace.celery.instrument()
        else:
            hoptrace.celery.instrument()
            CeleryInstrumentor().instrument(tracer_provider=provider)
    else:
        hoptrace.celery.instrument()


@signals.worker_process_init.connect(weak=False)
def _init_child(**_: Any) -> None:
    if IN_WORKER:
        setup_process()


@signals.worker_init.connect(weak=False)
def _init_worker(sender: Any = None, **_: Any) -> None:
    # Solo and threads pools run tasks in the main worker process (no worker_process_init).
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") or ""
    if IN_WORKER and "prefork" not in pool:
        setup_process()


@signals.worker_process_shutdown.connect(weak=False)
def _flush_child(**_: Any) -> None:
    provider = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    if provider is not None and hasattr(provider, "force_flush"):
        provider.force_flush()


def context_now() -> dict[str, Any]:
    """Return the transaction, trace and span IDs in force right now."""
    return {
        "transaction_id": hoptrace.current_transaction_id(),
        "trace_id": hoptrace.current_trace_id(),
        "span_id": hoptrace.current_span_id(),
        "pid": os.getpid(),
    }


def build_app(broker: str, backend: str, queue: str, name: str = "traced_app") -> Celery:
    """Return a Celery app with every test task registered, sending to ``queue``."""
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )

    @app.task(name="traced.echo", shared=False, bind=True)
    def echo(self: Any, label: str = "") -> dict[str, Any]:
        """Log a line and return the context the task ran in."""
        log.info("echo task running %s", label)
        return {**context_now(), "task_id": self.request.id, "label": label}

    @app.task(name="traced.add", shared=False)
    def add(x: int, y: int) -> int:
        """Add two numbers (a chain link and chord header task)."""
        log.info("add %s + %s", x, y)
        return x + y

    @app.task(name="traced.total", shared=False, bind=True)
    def total(self: Any, values: list[int]) -> dict[str, Any]:
        """Sum the results of a chord's header (the chord callback)."""
        return {**context_now(), "task_id": self.request.id, "total": sum(values)}

    @app.task(name="traced.publish_child", shared=False, bind=True)
    def publish_child(self: Any) -> dict[str, Any]:
        """Publish another task from inside a task; return both IDs."""
        child = echo.delay("child")
        return {**context_now(), "task_id": self.request.id, "child_id": child.id}

    @app.task(name="traced.flaky", shared=False, bind=True, max_retries=5)
    def flaky(self: Any, fail_times: int) -> dict[str, Any]:
        """Retry with self.retry until ``fail_times`` attempts have failed."""
        if self.request.retries < fail_times:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} failed"), countdown=0)
        return {**context_now(), "task_id": self.request.id, "retries": self.request.retries}

    @app.task(
        name="traced.auto_flaky",
        shared=False,
        bind=True,
        autoretry_for=(ValueError,),
        retry_kwargs={"max_retries": 5, "countdown": 0},
        retry_backoff=False,
    )
    def auto_flaky(self: Any, fail_times: int) -> dict[str, Any]:
        """Fail with ValueError (autoretry_for) until ``fail_times`` attempts have failed."""
        if self.request.retries < fail_times:
            raise ValueError(f"auto attempt {self.request.retries} failed")
        return {**context_now(), "task_id": self.request.id, "retries": self.request.retries}

    @app.task(name="traced.die_once", shared=False, bind=True, acks_late=True,
              reject_on_worker_lost=True)
    def die_once(self: Any) -> dict[str, Any]:
        """Log, then kill this pool process before the ack on the first delivery only."""
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        log.info("die_once running, redelivered=%s", redelivered)
        if not redelivered:
            os.kill(os.getpid(), 9)  # SIGKILL: no ack, no span end, no flush
        return {**context_now(), "task_id": self.request.id}

    @app.task(name="traced.retry_then_die", shared=False, bind=True, acks_late=True,
              reject_on_worker_lost=True, max_retries=3)
    def retry_then_die(self: Any) -> dict[str, Any]:
        """Retry once; kill the pool process on the retry's first delivery, before the ack."""
        retries = self.request.retries
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        log.info("retry_then_die running, retries=%s, redelivered=%s", retries, redelivered)
        if retries == 0:
            raise self.retry(exc=RuntimeError("first attempt failed"), countdown=0)
        if not redelivered:
            os.kill(os.getpid(), 9)  # SIGKILL: no ack, no span end, no flush
        return {**context_now(), "task_id": self.request.id}

    @app.task(name="traced.boom", shared=False)
    def boom(message: str) -> None:
        """Fail."""
        raise KeyError(message)

    @app.task(name="traced.remote_only", shared=False, bind=True)
    def remote_only(self: Any, label: str) -> dict[str, Any]:
        """A task the test process publishes by name only (not registered in its app)."""
        return {**context_now(), "task_id": self.request.id, "label": label}

    @app.task(name="traced.open_executions", shared=False)
    def open_executions() -> int:
        """Return how many process scopes are open in this worker process (this one included)."""
        return hoptrace.celery.running_executions()

    @app.task(name="traced.process_stats", shared=False)
    def process_stats() -> dict[str, Any]:
        """Return this worker process's tracking state, live scope objects, RSS and span counts."""
        import gc

        from hoptrace.core.hop import consume_scope, produce_scope

        gc.collect()
        kinds = (consume_scope, produce_scope)
        live = {kind.__name__: 0 for kind in kinds}
        for obj in gc.get_objects():
            if type(obj) in kinds:
                live[type(obj).__name__] += 1
        rss = 0
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return {
            "pid": os.getpid(),
            "running": hoptrace.celery.running_executions(),
            "live": live,
            "rss_kib": rss,
            "spans": dict(COUNTER.by_kind),
        }

    return app


app = build_app(BROKER, BACKEND, QUEUE)
