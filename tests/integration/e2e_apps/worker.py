"""The Celery app of the worker: task ``e2e.relay`` produces the order to Kafka.

Run: ``celery -A e2e_apps.worker worker -P prefork ...``. Each prefork child installs the SDK
and hoptrace after the fork (``worker_process_init``) and flushes its spans and Kafka producer
when it exits (``worker_process_shutdown``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import confluent_kafka
from celery import Celery, signals  # type: ignore[import-untyped]
from opentelemetry.sdk.trace import TracerProvider

import hoptrace
import hoptrace.celery
import hoptrace.confluent_kafka

from . import telemetry

log = logging.getLogger("e2e.worker")

app = Celery("e2e-worker", broker=telemetry.CELERY_BROKER, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_state: dict[str, Any] = {}


@app.task(name=telemetry.TASK_NAME, shared=False)  # type: ignore[untyped-decorator]
def relay(order: str) -> None:
    """Produce the order to the Kafka topic and wait for the broker's acknowledgement."""
    log.info("order %s: producing to kafka", order)
    producer = _state["producer"]
    producer.produce(telemetry.TOPIC, key=order.encode(),
                     value=json.dumps({"order": order}).encode())
    # The send span ends in the delivery report; flush() runs it before the task returns.
    producer.flush(10)


@signals.setup_logging.connect(weak=False)  # type: ignore[untyped-decorator]
def _logging(**_: Any) -> None:
    # Connected: Celery leaves logging to us; its own lines (``Task ... succeeded``) are JSON too.
    telemetry.start_logging()


@signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    log.info("ready")


@signals.worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _start_child(**_: Any) -> None:
    _state["provider"] = telemetry.start("worker")
    hoptrace.celery.instrument(app)
    hoptrace.confluent_kafka.instrument()
    # Created after instrument(): confluent_kafka.Producer now names hoptrace's subclass.
    _state["producer"] = confluent_kafka.Producer({
        "bootstrap.servers": telemetry.KAFKA_BOOTSTRAP, "linger.ms": 0,
    })


@signals.worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
def _stop_child(**_: Any) -> None:
    producer = _state.pop("producer", None)
    if producer is not None:
        producer.flush(5)
    provider: TracerProvider | None = _state.pop("provider", None)
    if provider is not None:
        telemetry.stop(provider)
    log.info("stopped")
