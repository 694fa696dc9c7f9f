"""A consumer process killed before its ack: the redelivery links to the attempt that died.

A worker process consumes a message under hoptrace, writes its log line (with the span ID of
its process span) and is killed with SIGKILL before it acks, so its span never ends and is
never exported. RabbitMQ redelivers the message; the consumer that gets it, here the test
process, must link its span to the dead attempt's span ID, the one in the dead worker's log,
keep the transaction ID and stay in the producer's trace. Done for pika and aio-pika workers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import brokers
import pytest

import hoptrace
import hoptrace.pika
from hoptrace import _amqp

pika = pytest.importorskip("pika")
pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.integration, pytest.mark.long]

#: The worker: SDK installed, hoptrace logging on, one delivery handled, then SIGKILL.
WORKER = textwrap.dedent('''
    import asyncio, json, logging, os, signal, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    import hoptrace
    from hoptrace import logs

    trace.set_tracer_provider(TracerProvider())
    logs.install()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    client, url, queue = sys.argv[1:4]

    def handle(redelivered):
        # The handler's own log line, as a production worker would write it.
        record = {"tx": hoptrace.current_transaction_id(), "trace": hoptrace.current_trace_id(),
                  "span": hoptrace.current_span_id(), "redelivered": redelivered}
        logging.getLogger("worker").info(json.dumps(record))
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # dies before the ack

    if client == "pika":
        import pika
        import hoptrace.pika
        hoptrace.pika.instrument()
        channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
        channel.basic_consume(queue, lambda ch, method, props, body: handle(method.redelivered))
        channel.start_consuming()
    else:
        import aio_pika
        import hoptrace.aio_pika
        hoptrace.aio_pika.instrument()

        async def main():
            connection = await aio_pika.connect(url)
            channel = await connection.channel()
            q = await channel.get_queue(queue)
            async with q.iterator() as messages:
                async for message in messages:
                    handle(message.redelivered)

        asyncio.run(main())
''')


def run_doomed_worker(client: str, url: str, queue: str) -> dict[str, Any]:
    """Run the worker until it kills itself; return what its handler logged."""
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, client, url, queue],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]
    logged: dict[str, Any] = json.loads(lines[0])
    return logged


@pytest.mark.parametrize("client", ["pika", "aio-pika"])
def test_redelivery_after_a_killed_consumer_links_the_dead_attempt(
    amqp_url: str, spans: Any, client: str
) -> None:
    url = brokers.pika_url(amqp_url)
    hoptrace.pika.instrument()
    _amqp.memory.forget_all()  # nothing in this process knows the first attempt
    try:
        with pika.BlockingConnection(pika.URLParameters(url)) as connection:
            channel = connection.channel()
            queue = f"hoptrace-killed-{uuid.uuid4().hex[:10]}"
            channel.queue_declare(queue, arguments={"x-expires": 60_000})
            with hoptrace.transaction("publish") as tx:
                channel.basic_publish("", queue, b"work")
            dead = run_doomed_worker(client, url, queue)

            redelivered = []
            for method, _props, _body in channel.consume(queue, inactivity_timeout=10):
                assert method is not None, "the message was not redelivered"
                redelivered.append((method.redelivered, hoptrace.current_transaction_id()))
                channel.basic_ack(method.delivery_tag)
                break
            channel.cancel()
            channel.queue_delete(queue)
    finally:
        hoptrace.pika.uninstrument()

    send = spans.one(f"send {queue}")
    (again,) = spans.named(f"process {queue}")
    assert dead["redelivered"] is False and dead["tx"] == tx.transaction_id
    assert dead["trace"] == format(send.context.trace_id, "032x")
    assert redelivered == [(True, tx.transaction_id)]
    # The retry stays in the producer's trace and links to the span the dead worker logged.
    assert again.parent.span_id == send.context.span_id
    assert again.context.trace_id == send.context.trace_id
    assert [(format(link.context.span_id, "016x"), link.attributes["hoptrace.link.reason"])
            for link in again.links] == [(dead["span"], "redelivery")]
    assert again.links[0].context.trace_id == send.context.trace_id
    assert dead["span"] != format(again.context.span_id, "016x")
