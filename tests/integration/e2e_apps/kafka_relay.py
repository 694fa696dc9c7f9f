"""kafka-python consumer that passes each order on to RabbitMQ with aio-pika.

The handler runs inside the record's ``process {topic}`` scope (hoptrace.kafka_python keeps it
open until the loop asks for the next record) and publishes from there, so the aio-pika send
span is its child. Run: ``python -m e2e_apps.kafka_relay``; logs ``ready`` once assigned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

import hoptrace.aio_pika
import hoptrace.kafka_python

from . import telemetry

log = logging.getLogger("e2e.kafka_relay")


async def connect() -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(telemetry.AIO_PIKA_URL)
    channel = await connection.channel()
    await channel.declare_queue(telemetry.AMQP_QUEUE)
    return connection, channel


def handle(loop: asyncio.AbstractEventLoop, channel: aio_pika.abc.AbstractChannel,
           record: Any) -> None:
    """Log the order and publish it to the shipping queue."""
    order = record.key.decode()
    log.info("order %s: publishing to rabbitmq", order)
    message = aio_pika.Message(record.value, content_type="application/json")
    # run_until_complete runs the publish in a task that copies this context: the record's.
    loop.run_until_complete(
        channel.default_exchange.publish(message, routing_key=telemetry.AMQP_QUEUE)
    )


def main() -> None:
    provider = telemetry.start("kafka-relay")
    hoptrace.kafka_python.instrument()
    hoptrace.aio_pika.instrument()
    stop = telemetry.StopFlag()
    loop = asyncio.new_event_loop()
    connection, channel = loop.run_until_complete(connect())
    consumer = KafkaConsumer(
        bootstrap_servers=telemetry.KAFKA_BOOTSTRAP,
        group_id=f"{telemetry.TOPIC}-relay",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=200,
    )
    consumer.assign([TopicPartition(telemetry.TOPIC, 0)])
    log.info("ready")
    try:
        while not stop:
            for record in consumer:  # ends after 200 ms without a record
                handle(loop, channel, record)
                if stop:
                    break
    finally:
        consumer.close()
        loop.run_until_complete(connection.close())
        loop.close()
        telemetry.stop(provider)
        log.info("stopped")


if __name__ == "__main__":
    main()
