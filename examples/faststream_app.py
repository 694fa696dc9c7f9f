"""A FastStream app with hoptrace's middleware: two hops, a concurrent and a batch subscriber.

Run ``scripts/brokers up`` and then::

    python examples/faststream_app.py                    # Kafka (aiokafka)
    python examples/faststream_app.py --broker rabbit    # RabbitMQ
    python examples/faststream_app.py --broker redis     # Redis lists

Broker addresses come from ``HOPTRACE_TEST_KAFKA_BOOTSTRAP`` (default ``127.0.0.1:9092``),
``HOPTRACE_EXAMPLE_AMQP_URL`` and ``HOPTRACE_EXAMPLE_REDIS_URL``.

* ``orders`` → ``ship`` → returns an invoice, published to ``invoices`` → ``invoice``: each
  order's transaction ID and trace reach both handlers;
* ``payments`` is consumed by four workers at once (``max_workers=4``; Kafka and Redis);
* ``audit`` is a batch subscriber (Kafka and Redis): the batch has its own transaction, and
  ``hoptrace.faststream.iterate`` hands over each record in its own.

Every log line shows ``tx=`` and ``trace=``; the script checks them and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from typing import Annotated, Any

from faststream import Context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.faststream
from hoptrace import logs
from hoptrace.faststream import HoptraceMiddleware

KAFKA = os.environ.get("HOPTRACE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
AMQP = os.environ.get("HOPTRACE_EXAMPLE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS = os.environ.get("HOPTRACE_EXAMPLE_REDIS_URL", "redis://127.0.0.1:6379/0")
log = logging.getLogger("app")
ORDERS = 3
#: A handler parameter that receives the FastStream message itself (for a batch, all records).
Message = Annotated[Any, Context("message")]


def make_broker(kind: str) -> tuple[Any, dict[str, Any], bool]:
    """Return (broker, subscriber options for a destination name, whether it can batch)."""
    if kind == "rabbit":
        from faststream.rabbit import RabbitBroker

        return RabbitBroker(AMQP, middlewares=[HoptraceMiddleware()], logger=None), {}, False
    if kind == "redis":
        from faststream.redis import RedisBroker

        return RedisBroker(REDIS, middlewares=[HoptraceMiddleware()], logger=None), {}, True
    from faststream.kafka import KafkaBroker

    options = {"auto_offset_reset": "earliest"}
    return KafkaBroker(KAFKA, middlewares=[HoptraceMiddleware()], logger=None), options, True


async def main(kind: str) -> int:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logs.install()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(name)-4s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    for noisy in ("aiokafka", "faststream", "aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    broker, options, batching = make_broker(kind)
    suffix = uuid.uuid4().hex[:6]
    names = {n: f"example-{n}-{suffix}" for n in ("orders", "invoices", "payments", "audit")}
    target = {"redis": "list", "rabbit": "queue"}.get(kind, "topic")

    def subscriber(name: str, **extra: Any) -> Any:
        if kind == "redis":
            from faststream.redis import ListSub

            return broker.subscriber(list=ListSub(names[name], batch=extra.pop("batch", False),
                                                  polling_interval=0.05), **extra)
        group = {"group_id": f"{names[name]}-group"} if options else {}  # one group each
        return broker.subscriber(names[name], **options, **group, **extra)

    seen: dict[str, list[tuple[str, tuple[str | None, str | None]]]] = {}
    expected = ORDERS * 2 + (ORDERS if batching else 0) + (ORDERS if kind != "rabbit" else 0)
    done = asyncio.Event()

    def saw(handler: str, body: str) -> None:
        ids = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
        seen.setdefault(handler, []).append((body, ids))
        if sum(len(v) for k, v in seen.items() if k != "audit batch") >= expected:
            done.set()

    @subscriber("orders")
    @broker.publisher(**{target: names["invoices"]})
    async def ship(order: str) -> str:
        log.info("shipping %s", order)
        saw("ship", order)
        return order  # published to invoices, in this order's transaction

    @subscriber("invoices")
    async def invoice(order: str) -> None:
        log.info("invoicing %s", order)
        saw("invoice", order)

    if kind != "rabbit":  # FastStream 0.7 takes max_workers on Kafka and Redis subscribers
        @subscriber("payments", max_workers=4)
        async def pay(order: str) -> None:
            await asyncio.sleep(0.05)  # four handlers in flight at once
            log.info("charging %s", order)
            saw("pay", order)

    if batching:
        @subscriber("audit", batch=True)
        async def audit(orders: list[str], message: Message) -> None:
            log.info("auditing a batch of %d", len(orders))
            ids = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
            seen.setdefault("audit batch", []).append(("", ids))
            for order in hoptrace.faststream.iterate(message, orders):
                log.info("audited %s", order)  # this order's transaction
                saw("audit", order)

    published: dict[str, tuple[str | None, str | None]] = {}
    async with broker:
        await broker.start()
        for i in range(1, ORDERS + 1):
            order = f"order-{i}"
            with hoptrace.transaction("checkout") as tx:
                log.info("publishing %s", order)
                await broker.publish(order, **{target: names["orders"]})
                if kind != "rabbit":
                    await broker.publish(order, **{target: names["payments"]})
                if batching:
                    await broker.publish(order, **{target: names["audit"]})
                published[order] = (tx.transaction_id, hoptrace.current_trace_id())
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            print("timed out waiting for the handlers")
            return 1

    ok = True
    for handler, entries in seen.items():
        if handler == "audit batch":  # the batch's own transaction, none of the orders'
            ok = ok and all(ids[0] not in {p[0] for p in published.values()}
                            for _, ids in entries)
            continue
        for body, ids in entries:
            ok = ok and published[body] == ids
    ok = ok and len(seen.get("invoice", [])) == ORDERS
    print(f"\n{sum(1 for s in exporter.get_finished_spans())} spans; every handler in its "
          f"order's transaction and trace: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker", choices=("kafka", "rabbit", "redis"), default="kafka")
    sys.exit(asyncio.run(main(parser.parse_args().broker)))
