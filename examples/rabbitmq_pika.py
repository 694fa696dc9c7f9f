"""pika with hoptrace: publish inside a transaction, consume with ``channel.consume()``.

Run against a local RabbitMQ (``scripts/brokers up rabbitmq``)::

    python examples/rabbitmq_pika.py

Every log line carries the transaction ID and trace ID of the request that published the
message, and the span tree at the end shows ``process`` as the child of ``send``.
Set ``HOPTRACE_AMQP_URL`` to use another broker (``//`` or ``/%2F`` for the default vhost:
see ``examples/broker_urls.py``).
"""

from __future__ import annotations

import logging
import sys
import uuid

import pika
from broker_urls import amqp_url
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.pika
from hoptrace import logs

URL = amqp_url()
log = logging.getLogger("orders")


def main() -> int:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(name)-7s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    hoptrace.pika.instrument()

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    queue = f"orders-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, auto_delete=True)

    with hoptrace.transaction("checkout") as checkout:
        log.info("order 42 received, publishing")
        channel.basic_publish("", queue, b'{"order": 42}',
                              pika.BasicProperties(content_type="application/json"))

    seen = []
    for method, _properties, body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        log.info("charging card for %s", body.decode())
        seen.append(hoptrace.current_transaction_id())
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()
    connection.close()

    print("\nspans:")
    spans = {s.context.span_id: s for s in exporter.get_finished_spans()}
    for span in spans.values():
        parent = spans.get(span.parent.span_id) if span.parent else None
        print(f"  {span.name}  <- {parent.name if parent else '(root)'}")
    ok = seen == [checkout.transaction_id]
    print(f"\none transaction ID across the hop: {checkout.transaction_id} "
          f"({'ok' if ok else 'MISMATCH'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
