"""``hoptrace demo --brokers local``: the same story over real RabbitMQ and Kafka.

HTTP → Celery task on RabbitMQ (in-process worker) → Kafka (aiokafka) → a relay
that publishes to RabbitMQ (pika) → the final consumer. N requests run concurrently so that
``hoptrace stats`` has something to work with. Every name it creates carries a random suffix
and is deleted afterwards (or auto-deleted by the broker).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import click

T = TypeVar("T")

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_KAFKA = "127.0.0.1:9092"
TASK = "demo.charge_card"


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Return whether a TCP connection to ``host:port`` can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing_brokers(amqp_url: str, kafka_bootstrap: str) -> list[str]:
    """Return a description of each broker that does not answer (empty: both do)."""
    amqp = urlsplit(amqp_url)
    kafka_host, _, kafka_port = kafka_bootstrap.partition(":")
    missing = []
    if not reachable(amqp.hostname or "127.0.0.1", amqp.port or 5672):
        missing.append(f"RabbitMQ at {amqp.hostname}:{amqp.port or 5672}")
    if not reachable(kafka_host or "127.0.0.1", int(kafka_port or 9092)):
        missing.append(f"Kafka at {kafka_bootstrap}")
    return missing


def check_brokers(amqp_url: str, kafka_bootstrap: str) -> None:
    """Raise ClickException naming each broker that does not answer."""
    missing = missing_brokers(amqp_url, kafka_bootstrap)
    if missing:
        raise click.ClickException(
            "not reachable: " + ", ".join(missing) + " (start them with `scripts/brokers up`)"
        )


def _pika_parameters(amqp_url: str) -> Any:
    import pika  # type: ignore[import-untyped]

    parts = urlsplit(amqp_url)
    # "//" is kombu's spelling of the default vhost; "/%2F" is pika's and the URL standard's
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/", "//") else "/"
    return pika.ConnectionParameters(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(parts.username or "guest", parts.password or "guest"),
    )


class _KafkaLoop:
    """An asyncio loop in its own thread for aiokafka; runs coroutines in the caller's context."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kafka", daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run ``make()`` on the loop in a copy of the caller's context; wait for its result."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task: asyncio.Future[T] = asyncio.ensure_future(make(), loop=self.loop)

            def finish(t: asyncio.Future[T]) -> None:
                error = t.exception()
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(t.result())

            task.add_done_callback(finish)

        self.loop.call_soon_threadsafe(start, context=contextvars.copy_context())
        return done.result(timeout)

    def stop(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Shipping:
    """The final consumer: pika, in its own thread, until told to stop."""

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        expected: int,
        log: logging.Logger,
        set_service: Callable[[str], object],
    ) -> None:
        self.amqp_url, self.queue, self.log, self.set_service = amqp_url, queue, log, set_service
        self.remaining = expected
        self.handled = threading.Event()  # every expected message was handled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="shipping", daemon=True)

    def _run(self) -> None:
        import pika

        self.set_service("shipping")
        connection = pika.BlockingConnection(_pika_parameters(self.amqp_url))
        channel = connection.channel()
        channel.basic_consume(self.queue, self._on_message)
        while not self.stop.is_set():
            connection.process_data_events(time_limit=0.1)
        connection.close()

    def _on_message(self, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        self.log.info("shipping order %s shipped", json.loads(body)["order"])
        ch.basic_ack(method.delivery_tag)
        self.remaining -= 1
        if self.remaining == 0:
            self.handled.set()

    def close(self) -> None:
        """Stop consuming and wait for the thread."""
        self.stop.set()
        self.thread.join(10)


async def _post_all(web: Any, requests: int) -> list[str]:
    """POST ``requests`` checkouts at once; return their transaction IDs."""
    import httpx

    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:

        async def post(order_id: int) -> str:
            response = await client.post("/checkout", json={"id": order_id})
            response.raise_for_status()
            return str(response.headers["x-transaction-id"])

        return list(await asyncio.gather(*(post(i) for i in range(1, requests + 1))))


def run_brokers_demo(
    requests: int,
    log: logging.Logger,
    set_service: Callable[[str], object],
    amqp_url: str = DEFAULT_AMQP_URL,
    kafka_bootstrap: str = DEFAULT_KAFKA,
) -> list[str]:
    """Run ``requests`` concurrent checkouts through the brokers; return their transaction IDs.

    The caller has installed the tracer provider and the log handler.
    """
    import pika
    from aiokafka import (  # type: ignore[import-untyped]
        AIOKafkaConsumer,
        AIOKafkaProducer,
        TopicPartition,
    )
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from celery import Celery  # type: ignore[import-untyped]
    from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]
    from kombu.entity import Queue

    import hoptrace.aiokafka
    import hoptrace.celery
    import hoptrace.pika

    from .demo import web_app

    suffix = uuid.uuid4().hex[:6]
    task_queue = f"demo-tasks-{suffix}"
    topic = f"demo-payments-{suffix}"
    final_queue = f"demo-shipping-{suffix}"

    app = Celery("hoptrace-demo", broker=amqp_url, backend="rpc://")
    app.conf.update(
        worker_hijack_root_logger=False,
        task_default_queue=task_queue,
        task_queues=[Queue(task_queue, auto_delete=True)],  # type: ignore[no-untyped-call]
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    hoptrace.celery.instrument(app)
    hoptrace.aiokafka.instrument()
    hoptrace.pika.instrument()

    kafka = _KafkaLoop()
    producer_box: list[Any] = []

    async def start_kafka() -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        producer_box.append(producer)
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning(TopicPartition(topic, 0))
        return consumer

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def charge_card(order_id: int) -> None:
        log.info("worker   charging order %s, producing to Kafka %s", order_id, topic)
        payload = json.dumps({"order": order_id}).encode()
        kafka.run(lambda: producer_box[0].send_and_wait(topic, payload))

    consumer = kafka.run(start_kafka)

    # The relay: Kafka → RabbitMQ, on the Kafka loop.
    relay_connection = pika.BlockingConnection(_pika_parameters(amqp_url))
    relay_channel = relay_connection.channel()
    relay_channel.queue_declare(final_queue, auto_delete=True)

    async def relay() -> None:
        set_service("relay")
        async for record in consumer:
            order = json.loads(record.value)["order"]
            log.info("relay    order %s from Kafka, publishing to RabbitMQ %s", order, final_queue)
            relay_channel.basic_publish("", final_queue, record.value)

    relay_task = asyncio.run_coroutine_threadsafe(relay(), kafka.loop)

    shipping = _Shipping(amqp_url, final_queue, requests, log, set_service)
    shipping.thread.start()

    transactions: list[str] = []
    web = web_app(charge_card, log)
    try:
        with start_worker(
            app, pool="solo", perform_ping_check=False, shutdown_timeout=30
        ):
            set_service("web")
            transactions = asyncio.run(_post_all(web, requests))
            if not shipping.handled.wait(60):
                raise click.ClickException(
                    f"only {requests - shipping.remaining} of {requests} messages reached the end"
                )
    finally:
        shipping.close()
        relay_task.cancel()

        async def stop_kafka() -> None:
            await consumer.stop()
            for producer in producer_box:
                await producer.stop()
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()

        try:
            kafka.run(stop_kafka)
        finally:
            kafka.stop()
            try:
                relay_channel.queue_delete(final_queue)
                relay_connection.close()
            except Exception:  # the broker already removed the auto-delete queue
                pass
            hoptrace.pika.uninstrument()
            hoptrace.aiokafka.uninstrument()
            hoptrace.celery.uninstrument()
    return transactions
