"""aio-pika with hoptrace: ``Exchange.publish`` and an ``async for`` over ``queue.iterator()``.

Run against a local RabbitMQ (``scripts/brokers up rabbitmq``)::

    python examples/rabbitmq_aio_pika.py

Inside the loop body every log line carries the publisher's transaction ID and trace ID.
Set ``HOPTRACE_AMQP_URL`` to use another broker (see ``examples/broker_urls.py``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid

import aio_pika
from broker_urls import amqp_url

import hoptrace
import hoptrace.aio_pika
from hoptrace import logs

URL = amqp_url()
log = logging.getLogger("orders")


async def run() -> int:
    hoptrace.aio_pika.instrument()
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"orders-{uuid.uuid4().hex[:8]}", auto_delete=True)
        with hoptrace.transaction("checkout") as checkout:
            log.info("order 42 received, publishing")
            await channel.default_exchange.publish(aio_pika.Message(b'{"order": 42}'),
                                                   routing_key=queue.name)
        seen = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    log.info("charging card for %s", message.body.decode())
                    seen.append(hoptrace.current_transaction_id())
                break
    ok = seen == [checkout.transaction_id]
    print(f"\none transaction ID across the hop: {checkout.transaction_id} "
          f"({'ok' if ok else 'MISMATCH'})")
    return 0 if ok else 1


def main() -> int:
    logs.install()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(name)-7s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s")
    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
