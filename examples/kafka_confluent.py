"""confluent-kafka through a real Kafka broker: ``poll()`` hands over each record in its trace.

Run ``scripts/brokers up kafka`` and then ``python examples/kafka_confluent.py`` (the broker
address comes from ``HOPTRACE_KAFKA_BOOTSTRAP``, default ``127.0.0.1:9092``). It sends
two orders, each in its own transaction, polls them back and prints the log lines and the
span tree: ``send orders-…`` with ``process orders-…`` as its child.
"""

from __future__ import annotations

import logging
import sys
import uuid

from broker_urls import kafka_bootstrap
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.confluent_kafka
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
    topic = f"orders-{uuid.uuid4().hex[:8]}"

    # Drop-in subclasses (confluent's own classes are C types and cannot be patched).
    producer = hoptrace.confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP})
    for order in (1, 2):
        with hoptrace.transaction("checkout"):
            log.info("order %s received, publishing", order)
            producer.produce(topic, str(order).encode(), headers={"source": "web"})
    producer.flush(15)

    consumer = hoptrace.confluent_kafka.Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"shipping-{uuid.uuid4().hex[:6]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    handled = 0
    try:
        while handled < 2:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            log.info("shipping order %s", msg.value().decode())  # inside process {topic}
            handled += 1
    finally:
        consumer.close()  # also closes the last record's scope
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        for future in admin.delete_topics([topic]).values():
            future.result(15)

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
