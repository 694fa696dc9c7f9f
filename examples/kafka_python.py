"""kafka-python through a real Kafka broker: ``for msg in consumer`` runs in each record's trace.

Run ``scripts/brokers up kafka`` and then ``python examples/kafka_python.py`` (the broker
address comes from ``HOPTRACE_KAFKA_BOOTSTRAP``, default ``127.0.0.1:9092``). It sends
two orders, each in its own transaction, iterates over them and prints the log lines and the
span tree: ``send orders-…`` with ``process orders-…`` as its child.
"""

from __future__ import annotations

import logging
import sys
import uuid

from broker_urls import kafka_bootstrap
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.kafka_python
from hoptrace import logs

BOOTSTRAP = kafka_bootstrap()
log = logging.getLogger("orders")


def main() -> int:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(name)-8s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    hoptrace.kafka_python.instrument()
    topic = f"orders-{uuid.uuid4().hex[:8]}"

    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP)
    for order in (1, 2):
        with hoptrace.transaction("checkout"):
            log.info("order %s received, publishing", order)
            producer.send(topic, str(order).encode()).get(15)
    producer.close(5)

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                             consumer_timeout_ms=15000)
    consumer.assign([TopicPartition(topic, 0)])
    try:
        for msg in consumer:
            log.info("shipping order %s", msg.value.decode())  # inside process {topic}
            if msg.offset == 1:
                break  # leaving the loop closes the scope
    finally:
        consumer.close()
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        admin.delete_topics([topic])
        admin.close()

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
    sys.exit(main())
