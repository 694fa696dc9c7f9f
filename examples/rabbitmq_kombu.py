"""kombu with hoptrace: ``Producer.publish`` and a ``ConsumerMixin`` worker on RabbitMQ.

Run against a local RabbitMQ (``scripts/brokers up rabbitmq``)::

    python examples/rabbitmq_kombu.py

The worker's log lines carry the transaction ID of the request that published the message.
Set ``HOPTRACE_AMQP_URL`` to use another broker; ``python examples/rabbitmq_kombu.py redis`` runs
it on Redis (``HOPTRACE_REDIS_URL``) instead.
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

from broker_urls import amqp_url, redis_url
from kombu import Connection, Exchange, Queue
from kombu.mixins import ConsumerMixin

import hoptrace
import hoptrace.kombu
from hoptrace import logs

# `python examples/rabbitmq_kombu.py redis` runs it on Redis (kombu's Redis transport).
URL = redis_url() if sys.argv[1:] == ["redis"] else amqp_url()
log = logging.getLogger("orders")


class Worker(ConsumerMixin):  # type: ignore[misc]
    """Handles one order, then stops."""

    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.connection = connection
        self.queue = queue
        self.seen: list[str | None] = []

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        return [consumer_cls(queues=[self.queue], callbacks=[self.on_order])]

    def on_order(self, body: Any, message: Any) -> None:
        log.info("charging card for order %s", body["order"])
        self.seen.append(hoptrace.current_transaction_id())
        message.ack()
        self.should_stop = True


def main() -> int:
    logs.install()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(name)-7s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s")
    hoptrace.kombu.instrument()
    name = f"orders-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct", auto_delete=True), routing_key="created",
                  auto_delete=True)
    with Connection(URL) as connection:
        with hoptrace.transaction("checkout") as checkout:
            log.info("order 42 received, publishing")
            connection.Producer().publish({"order": 42}, exchange=queue.exchange,
                                          routing_key="created", declare=[queue])
        worker = Worker(connection, queue)
        worker.run()
    ok = worker.seen == [checkout.transaction_id]
    print(f"\none transaction ID across the hop: {checkout.transaction_id} "
          f"({'ok' if ok else 'MISMATCH'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
