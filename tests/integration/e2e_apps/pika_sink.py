"""The last hop: a pika ``basic_consume`` callback that logs and acks each order.

Run: ``python -m e2e_apps.pika_sink``; logs ``ready`` once it consumes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pika  # type: ignore[import-untyped]

import hoptrace.pika

from . import telemetry

log = logging.getLogger("e2e.pika_sink")


def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
    """Log the delivered order and acknowledge it."""
    log.info("order %s: delivered", json.loads(body)["order"])
    channel.basic_ack(method.delivery_tag)


def main() -> None:
    provider = telemetry.start("pika-sink")
    hoptrace.pika.instrument()
    stop = telemetry.StopFlag()
    connection = pika.BlockingConnection(pika.URLParameters(telemetry.PIKA_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(telemetry.AMQP_QUEUE)
        channel.basic_consume(telemetry.AMQP_QUEUE, on_message)
        log.info("ready")
        while not stop:
            connection.process_data_events(time_limit=0.2)
    finally:
        if connection.is_open:
            connection.close()
        telemetry.stop(provider)
        log.info("stopped")


if __name__ == "__main__":
    main()
