"""A FastStream app with hoptrace's middleware: two hops, a concurrent and a batch subscriber.

Run ``scripts/brokers up`` and then::

    python examples/faststream_app.py                    # Kafka (aiokafka)
    python examples/faststream_app.py --broker rabbit    # RabbitMQ
    python examples/faststream_app.py --broker redis     # Redis lists

Broker addresses come from ``HOPTRACE_KAFKA_BOOTSTRAP``, ``HOPTRACE_AMQP_URL`` and
``HOPTRACE_REDIS_URL`` (defaults: the local brokers; see ``examples/broker_urls.py``).

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
import sys
import uuid
from typing import Annotated, Any

from broker_urls import amqp_url, kafka_bootstrap, redis_url
from faststream import Context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
import hoptrace.faststream
from hoptrace import logs
from hoptrace.faststream import HoptraceMiddleware

KAFKA = kafka_bootstrap()
AMQP = amqp_url()
REDIS = redis_url()
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


def setup_telemetry() -> InMemorySpanExporter:
    """Spans kept in memory; every log line carries tx= and trace=."""
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
    return exporter


class App:
    """The subscribers, what each handler saw, and the check of their IDs."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.broker, self.options, self.batching = make_broker(kind)
        suffix = uuid.uuid4().hex[:6]
        self.names = {n: f"example-{n}-{suffix}" for n in ("orders", "invoices", "payments",
                                                            "audit")}
        self.target = {"redis": "list", "rabbit": "queue"}.get(kind, "topic")
        self.seen: dict[str, list[tuple[str, tuple[str | None, str | None]]]] = {}
        self.published: dict[str, tuple[str | None, str | None]] = {}
        self.expected = (ORDERS * 2 + (ORDERS if self.batching else 0)
                         + (ORDERS if kind != "rabbit" else 0))
        self.done = asyncio.Event()

    def subscriber(self, name: str, **extra: Any) -> Any:
        if self.kind == "redis":
            from faststream.redis import ListSub

            sub = ListSub(self.names[name], batch=extra.pop("batch", False), polling_interval=0.05)
            return self.broker.subscriber(list=sub, **extra)
        # one consumer group per destination
        group = {"group_id": f"{self.names[name]}-group"} if self.options else {}
        return self.broker.subscriber(self.names[name], **self.options, **group, **extra)

    def saw(self, handler: str, body: str) -> None:
        ids = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
        self.seen.setdefault(handler, []).append((body, ids))
        if sum(len(v) for k, v in self.seen.items() if k != "audit batch") >= self.expected:
            self.done.set()

    def register(self) -> None:
        @self.subscriber("orders")
        @self.broker.publisher(**{self.target: self.names["invoices"]})
        async def ship(order: str) -> str:
            log.info("shipping %s", order)
            self.saw("ship", order)
            return order  # published to invoices, in this order's transaction

        @self.subscriber("invoices")
        async def invoice(order: str) -> None:
            log.info("invoicing %s", order)
            self.saw("invoice", order)

        if self.kind != "rabbit":  # FastStream 0.7 takes max_workers on Kafka and Redis
            @self.subscriber("payments", max_workers=4)
            async def pay(order: str) -> None:
                await asyncio.sleep(0.05)  # four handlers in flight at once
                log.info("charging %s", order)
                self.saw("pay", order)

        if self.batching:
            @self.subscriber("audit", batch=True)
            async def audit(orders: list[str], message: Message) -> None:
                log.info("auditing a batch of %d", len(orders))
                ids = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
                self.seen.setdefault("audit batch", []).append(("", ids))
                for order in hoptrace.faststream.iterate(message, orders):
                    log.info("audited %s", order)  # this order's transaction
                    self.saw("audit", order)

    async def publish(self) -> None:
        """One transaction per order, published to every subscriber's destination."""
        destinations = ["orders"] + (["payments"] if self.kind != "rabbit" else []) \
            + (["audit"] if self.batching else [])
        for i in range(1, ORDERS + 1):
            order = f"order-{i}"
            with hoptrace.transaction("checkout") as tx:
                log.info("publishing %s", order)
                for name in destinations:
                    await self.broker.publish(order, **{self.target: self.names[name]})
                self.published[order] = (tx.transaction_id, hoptrace.current_trace_id())

    def check(self) -> bool:
        """Every handler ran in its order's transaction and trace; the batch in its own."""
        orders = {ids[0] for ids in self.published.values()}
        ok = True
        for handler, entries in self.seen.items():
            if handler == "audit batch":  # the batch's own transaction, none of the orders'
                ok = ok and all(ids[0] not in orders for _, ids in entries)
                continue
            ok = ok and all(self.published[body] == ids for body, ids in entries)
        return ok and len(self.seen.get("invoice", [])) == ORDERS


async def main(kind: str) -> int:
    exporter = setup_telemetry()
    app = App(kind)
    app.register()
    async with app.broker:
        await app.broker.start()
        await app.publish()
        try:
            await asyncio.wait_for(app.done.wait(), 30)
        except TimeoutError:
            print("timed out waiting for the handlers")
            return 1
    ok = app.check()
    print(f"\n{sum(1 for s in exporter.get_finished_spans())} spans; every handler in its "
          f"order's transaction and trace: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker", choices=("kafka", "rabbit", "redis"), default="kafka")
    sys.exit(asyncio.run(main(parser.parse_args().broker)))
