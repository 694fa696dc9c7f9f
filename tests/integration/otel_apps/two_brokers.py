"""An app run under ``opentelemetry-instrument``: one message per client, published and consumed.

It is never imported by pytest: ``tests/integration/test_opentelemetry_instrument.py`` runs it
in a subprocess. It patches nothing itself; whatever traces the clients is what
``opentelemetry-instrument`` loaded from the entry points.

Environment: ``APP_AMQP_URL`` (pika form, ``/%2F`` vhost), ``APP_KAFKA_BOOTSTRAP``,
``APP_QUEUE_PREFIX``, ``APP_TOPIC_PREFIX``, ``APP_HOPS`` (comma-separated, default all).

Each result is one stdout line ``hoptrace-app {json}``: first which instrumentations are in
force, then per hop the caller's transaction and trace and what the handler saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from opentelemetry import trace

import hoptrace

PREFIX = "hoptrace-app "
AMQP_URL = os.environ["APP_AMQP_URL"]
BOOTSTRAP = os.environ["APP_KAFKA_BOOTSTRAP"]
QUEUE_PREFIX = os.environ.get("APP_QUEUE_PREFIX", f"hoptrace-otel-{uuid.uuid4().hex[:8]}")
TOPIC_PREFIX = os.environ.get("APP_TOPIC_PREFIX", f"hoptrace-otel-{uuid.uuid4().hex[:8]}")
TIMEOUT = 10.0


def emit(record: dict[str, Any]) -> None:
    # One write of the whole line: print() writes the text and its newline separately, and the
    # console exporter's thread (writing its spans to the same stdout) can land in between,
    # which splits this line and the exporter's JSON. (The test runs with PYTHONUNBUFFERED=1.)
    sys.stdout.write(PREFIX + json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def handler_view() -> dict[str, Any]:
    return {
        "handler_tx": hoptrace.current_transaction_id(),
        "handler_trace_id": hoptrace.current_trace_id(),
        "handler_span_id": hoptrace.current_span_id(),
    }


def caller_view(tx: hoptrace.transaction) -> dict[str, Any]:
    return {"caller_tx": tx.transaction_id, "caller_trace_id": hoptrace.current_trace_id()}


def instrumentation_state() -> dict[str, Any]:
    import hoptrace.aio_pika
    import hoptrace.aiokafka
    import hoptrace.celery
    import hoptrace.confluent_kafka
    import hoptrace.kafka_python
    import hoptrace.kombu
    import hoptrace.pika

    ours = {
        "celery": hoptrace.celery.is_instrumented(),
        "kombu": hoptrace.kombu.is_instrumented(),
        "pika": hoptrace.pika.is_instrumented(),
        "aio-pika": hoptrace.aio_pika.is_instrumented(),
        "aiokafka": hoptrace.aiokafka.instrumented(),
        "confluent-kafka": hoptrace.confluent_kafka.instrumented(),
        "kafka-python": hoptrace.kafka_python.instrumented(),
    }
    contrib: dict[str, bool | None] = {}
    for client, module, cls in [
        ("celery", "opentelemetry.instrumentation.celery", "CeleryInstrumentor"),
        ("pika", "opentelemetry.instrumentation.pika", "PikaInstrumentor"),
        ("aio-pika", "opentelemetry.instrumentation.aio_pika", "AioPikaInstrumentor"),
        ("aiokafka", "opentelemetry.instrumentation.aiokafka", "AIOKafkaInstrumentor"),
        ("confluent-kafka", "opentelemetry.instrumentation.confluent_kafka",
         "ConfluentKafkaInstrumentor"),
        ("kafka-python", "opentelemetry.instrumentation.kafka", "KafkaInstrumentor"),
    ]:
        try:
            instrumentor = getattr(__import__(module, fromlist=[cls]), cls)()
            contrib[client] = bool(instrumentor.is_instrumented_by_opentelemetry)
        except ImportError:
            contrib[client] = None
    return {"hoptrace": ours, "contrib": contrib}


# ------------------------------------------------------------------------------- hops ---


def hop_pika() -> dict[str, Any]:
    import pika

    queue = f"{QUEUE_PREFIX}-pika"
    seen: dict[str, Any] = {}
    with pika.BlockingConnection(pika.URLParameters(AMQP_URL)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=True)
        with hoptrace.transaction("pika-caller") as tx:
            caller = caller_view(tx)
            channel.basic_publish("", queue, b"order")

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen.update(handler_view())
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message)
        deadline = time.monotonic() + TIMEOUT
        while not seen and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
    return {"destination": queue, "consumer_destination": queue, **caller, **seen}


def hop_aio_pika() -> dict[str, Any]:
    import aio_pika

    queue = f"{QUEUE_PREFIX}-aio-pika"
    url = AMQP_URL.replace("/%2F", "/")

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        done = asyncio.Event()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, auto_delete=True)
            with hoptrace.transaction("aio-pika-caller") as tx:
                caller = caller_view(tx)
                await channel.default_exchange.publish(aio_pika.Message(b"order"), queue)

            async def on_message(message: Any) -> None:
                seen.update(handler_view())
                await message.ack()
                done.set()

            await q.consume(on_message)
            await asyncio.wait_for(done.wait(), TIMEOUT)
        finally:
            await connection.close()
        return {**caller, **seen}

    return {"destination": queue, "consumer_destination": queue, **asyncio.run(run())}


def hop_confluent_kafka() -> dict[str, Any]:
    import confluent_kafka

    topic = f"{TOPIC_PREFIX}-confluent"
    producer = confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP})
    with hoptrace.transaction("confluent-caller") as tx:
        caller = caller_view(tx)
        producer.produce(topic, b"order", partition=0)
    producer.flush(TIMEOUT)
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"{topic}-group",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + TIMEOUT
    try:
        while not seen and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            seen.update(handler_view())  # the handler runs after poll() returned the record
    finally:
        consumer.close()
    return {"destination": topic, "consumer_destination": topic, **caller, **seen}


def hop_aiokafka() -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = f"{TOPIC_PREFIX}-aiokafka"

    async def run() -> dict[str, Any]:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        try:
            with hoptrace.transaction("aiokafka-caller") as tx:
                caller = caller_view(tx)
                await producer.send_and_wait(topic, b"order", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.start()

        async def handle() -> dict[str, Any]:
            async for _msg in consumer:
                return handler_view()
            return {}

        try:
            return {**caller, **await asyncio.wait_for(handle(), TIMEOUT)}
        finally:
            await consumer.stop()

    return {"destination": topic, "consumer_destination": topic, **asyncio.run(run())}


def hop_kafka_python() -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = f"{TOPIC_PREFIX}-kafka-python"
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP)
    try:
        with hoptrace.transaction("kafka-python-caller") as tx:
            caller = caller_view(tx)
            producer.send(topic, b"order", partition=0).get(timeout=TIMEOUT)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=int(TIMEOUT * 1000))
    consumer.assign([TopicPartition(topic, 0)])
    seen: dict[str, Any] = {}
    try:
        for _msg in consumer:
            seen.update(handler_view())
            break
    finally:
        consumer.close()
    return {"destination": topic, "consumer_destination": topic, **caller, **seen}


HOPS = {
    "pika": hop_pika,
    "aio-pika": hop_aio_pika,
    "confluent-kafka": hop_confluent_kafka,
    "aiokafka": hop_aiokafka,
    "kafka-python": hop_kafka_python,
}


def metrics_state() -> dict[str, Any]:
    """Which meter provider is global, and whether hoptrace records its metrics into it."""
    from opentelemetry import metrics

    from hoptrace.core import metrics as hoptrace_metrics

    return {"meter_provider": type(metrics.get_meter_provider()).__name__,
            "hoptrace_metrics": hoptrace_metrics.enabled()}


def main() -> int:
    emit({"instrumentation": instrumentation_state(), "metrics": metrics_state()})
    wanted = [h for h in os.environ.get("APP_HOPS", ",".join(HOPS)).split(",") if h]
    for name in wanted:
        started = time.monotonic()
        try:
            result = HOPS[name]()
        except Exception as exc:  # reported, so the test names the hop that broke
            result = {"error": f"{type(exc).__name__}: {exc}"}
        emit({"hop": name, "seconds": round(time.monotonic() - started, 3), **result})
    emit({"instrumentation_after": instrumentation_state()})
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
