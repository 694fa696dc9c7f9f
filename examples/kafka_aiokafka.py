"""aiokafka through a real Kafka broker: the handler of each record runs in the producer's trace.

Run ``scripts/brokers up kafka`` and then ``python examples/kafka_aiokafka.py`` (the broker
address comes from ``HOPTRACE_KAFKA_BOOTSTRAP``, default ``127.0.0.1:9092``). It sends
two orders, each in its own transaction, handles them with ``async for`` and prints the log
lines and the span tree: ``send orders-…`` with ``process orders-…`` as its child.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from broker_urls import kafka_bootstrap
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.aiokafka
from hoptrace import logs

BOOTSTRAP = kafka_bootstrap()
log = logging.getLogger("orders")


async def main() -> int:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(name)-8s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # topic auto-creation chatter
    hoptrace.aiokafka.instrument()
    topic = f"orders-{uuid.uuid4().hex[:8]}"

    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        for order in (1, 2):
            with hoptrace.transaction("checkout"):
                log.info("order %s received, publishing", order)
                await producer.send_and_wait(topic, str(order).encode(), key=b"customer-7")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()
    try:
        async for msg in consumer:
            log.info("shipping order %s", msg.value.decode())  # inside process {topic}
            if msg.offset == 1:
                break
    finally:
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    spans = exporter.get_finished_spans()
    print("\nspan tree:")
    ok = True
    for span in spans:
        if span.name.startswith("send"):
            print(f"  {span.name}  trace={span.context.trace_id:032x}")
            children = [s for s in spans if s.parent and s.parent.span_id == span.context.span_id]
            for child in children:
                print(f"    └─ {child.name}  offset={child.attributes['messaging.kafka.offset']}")
            ok = ok and len(children) == 1
    ok = ok and sum(1 for s in spans if s.name.startswith("process")) == 2
    print(f"\neach record handled in its producer's trace: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
