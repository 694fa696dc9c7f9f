"""What every process of the end-to-end flow shares: OTLP export, JSON logs, a clean stop.

Environment (set by the test):

* ``E2E_SERVICE_PREFIX``: prefix of each process's ``service.name`` (unique per run);
* ``OTEL_EXPORTER_OTLP_ENDPOINT``: the OTLP/HTTP endpoint (``http://127.0.0.1:4318``), which
  the SDK's exporter reads itself;
* ``E2E_CELERY_BROKER`` (kombu URL), ``E2E_PIKA_URL`` (pika URL), ``E2E_AIO_PIKA_URL``,
  ``E2E_KAFKA_BOOTSTRAP``, ``E2E_CELERY_QUEUE``, ``E2E_TOPIC``, ``E2E_AMQP_QUEUE``.

Log records go to stderr, one JSON object per line with hoptrace's fields
(``hoptrace.logs.JsonFormatter``); the test reads them back from each process's stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import hoptrace.logs

CELERY_BROKER = os.environ.get("E2E_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PIKA_URL = os.environ.get("E2E_PIKA_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
AIO_PIKA_URL = os.environ.get("E2E_AIO_PIKA_URL", "amqp://guest:guest@127.0.0.1:5672/")
KAFKA_BOOTSTRAP = os.environ.get("E2E_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CELERY_QUEUE = os.environ.get("E2E_CELERY_QUEUE", "hoptrace-e2e-celery")
TOPIC = os.environ.get("E2E_TOPIC", "hoptrace-e2e-orders")
AMQP_QUEUE = os.environ.get("E2E_AMQP_QUEUE", "hoptrace-e2e-shipping")
SERVICE_PREFIX = os.environ.get("E2E_SERVICE_PREFIX", "hoptrace-e2e")
TASK_NAME = "e2e.relay"

log = logging.getLogger("e2e")


def service_name(role: str) -> str:
    """The ``service.name`` of the process playing ``role`` in this run."""
    return f"{SERVICE_PREFIX}-{role}"


def start(role: str) -> TracerProvider:
    """Install the SDK (OTLP/HTTP, batched) and JSON logs with hoptrace's fields."""
    start_logging()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name(role)}))
    # A short delay: spans reach Jaeger while the process runs; shutdown() sends the rest.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=100))
    # Assigned, not set_tracer_provider(): a prefork child replaces the one it inherited.
    trace._TRACER_PROVIDER = provider
    return provider


def start_logging() -> None:
    """Log INFO and up to stderr as JSON lines carrying hoptrace's fields (idempotent)."""
    hoptrace.logs.install()
    root = logging.getLogger()
    if not any(getattr(h, "_e2e", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(hoptrace.logs.JsonFormatter())
        handler._e2e = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for chatty in ("kafka", "pika", "aio_pika", "aiormq"):  # connection chatter at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)


def stop(provider: TracerProvider) -> None:
    """Send every span still buffered, then stop the exporter."""
    provider.shutdown()


class StopFlag:
    """Set by SIGTERM or SIGINT: the process's loop ends and it flushes before exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()
