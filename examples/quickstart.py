"""The smallest end-to-end hop: a producer and a consumer on kombu's in-memory transport.

Needs no broker (kombu, from ``pip install 'hoptrace[all]'`` or ``[kombu]``). Run it with
``python examples/quickstart.py`` (in a checkout: ``.venv/bin/python``, the venv ``make demo``
builds). Every log line it prints carries the same transaction ID and trace ID, from the
request that started the flow, through the queue, into the consumer's handler.
"""

from __future__ import annotations

import logging
import sys

from kombu import Connection, Exchange, Queue

import hoptrace
from hoptrace import logs

log = logging.getLogger("quickstart")
orders = Queue("orders", Exchange("shop", type="direct"), routing_key="orders")


def main() -> int:
    logs.install()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(name)-10s tx=%(transaction_id)s trace=%(trace_id)s  %(message)s",
    )
    with Connection("memory://") as conn:
        # Producer side: an edge scope (an HTTP request, a cron job…) publishes a message.
        with hoptrace.transaction("checkout"):
            log.info("order received, publishing")
            with hoptrace.produce_scope({}, "shop:orders", "memory") as send:
                conn.Producer().publish(
                    {"order": 42},
                    exchange=orders.exchange,
                    routing_key="orders",
                    declare=[orders],
                    headers=send.carrier,
                )
            sent_tx = hoptrace.current_transaction_id()

        # Consumer side: the handler runs inside the message's context.
        seen: list[str | None] = []

        def handle(body: dict[str, int], message: object) -> None:
            headers = message.headers  # type: ignore[attr-defined]
            with hoptrace.consume_scope(headers, "shop:orders:orders", "memory"):
                log.info("charging card for order %s", body["order"])
                log.info("order shipped")
                seen.append(hoptrace.current_transaction_id())
            message.ack()  # type: ignore[attr-defined]

        with conn.Consumer(orders, callbacks=[handle]):
            conn.drain_events(timeout=5)

    same = seen == [sent_tx]
    print(f"\none transaction ID across the hop: {sent_tx} ({'ok' if same else 'MISMATCH'})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
