"""Many handlers at once, per client, against the real brokers: every handler sees its own
message's transaction ID and trace, and no context is left attached anywhere afterwards.

* async clients, 1,000 handlers in flight at the same moment: aio-pika (``Queue.consume``
  callbacks, and ``Queue.iterator()`` handing each message to its own task) and aiokafka
  (one task per record inside ``hoptrace.aiokafka.processing``);
* sync clients, 16 threads: pika and kombu (amqp and redis transports), 16 threads each
  with its own connection, publishing to and consuming from one shared queue;
  confluent-kafka and kafka-python, 16 producer threads, then one consumer feeding a
  16-thread pool that handles each record inside the client module's ``processing`` scope,
  then 16 threads each reading every record with a consumer of its own (``poll()`` / ``for``
  loop, whose scope stays open for the loop body).

Each message body holds the transaction ID and trace ID its producer saw. A *leak* is a
handler that sees anything else, or a thread or task that still has a transaction ID once
its handler is over. Every test asserts 0 leaks and as many deliveries as publishes, and
prints one summary row (shown with ``-s`` or ``-rA``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace import _amqp

pytestmark = pytest.mark.integration

ASYNC_HANDLERS = 1000
THREADS = 16
PER_THREAD = 63  # 16 x 63 = 1,008 messages per sync client
HANDLER_SECONDS = 0.002  # a sync handler's work: long enough for threads to overlap


# ------------------------------------------------------------------------- tallies ---


@dataclass
class Tally:
    """What the handlers of one run saw, counted under a lock (threads) or not (one loop)."""

    client: str
    path: str
    published: int = 0
    delivered: int = 0
    leaks: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def leak(self, what: str) -> None:
        with self.lock:
            self.leaks += 1
            if len(self.problems) < 10:
                self.problems.append(what)

    def handled(self, body: bytes | str | dict[str, Any]) -> None:
        """Check, inside a handler, that the active context is the producer's; count it."""
        sent = body if isinstance(body, dict) else json.loads(body)
        tx, trace = hoptrace.current_transaction_id(), hoptrace.current_trace_id()
        if tx != sent["tx"] or trace != sent["trace"]:
            self.leak(f"handler of {sent['tx']} saw tx={tx} trace={trace}")
        with self.lock:
            self.delivered += 1

    def outside(self, where: str) -> None:
        """Check that no context is attached here, outside every handler."""
        tx = hoptrace.current_transaction_id()
        if tx is not None:
            self.leak(f"{where}: {tx} still attached")

    def summary(self, concurrency: str) -> None:
        print(
            f"\n{'client':<16}{'path':<40}{'messages':>9}{'concurrency':>26}{'leaks':>7}"
            f"{'secs':>7}\n{self.client:<16}{self.path:<40}{self.delivered:>9}"
            f"{concurrency:>26}{self.leaks:>7}{time.monotonic() - self.started:>7.1f}"
        )

    def assert_clean(self) -> None:
        assert self.published > 0
        assert self.leaks == 0, self.problems
        assert self.delivered == self.published


def run_threads(target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(t)`` in THREADS threads at once; return what any of them raised."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            target(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return errors


def stamped_body() -> bytes:
    """The body a producer sends: the transaction ID and trace ID active right now."""
    tx, trace = hoptrace.current_transaction_id(), hoptrace.current_trace_id()
    assert tx is not None and trace is not None
    return json.dumps({"tx": tx, "trace": trace}).encode()


def probe_threads(pool: ThreadPoolExecutor, tally: Tally) -> None:
    """Run one check on every worker of ``pool`` at once (a barrier holds each on its own)."""
    barrier = threading.Barrier(THREADS)

    def probe() -> None:
        barrier.wait(10)
        tally.outside("idle pool worker")

    for future in [pool.submit(probe) for _ in range(THREADS)]:
        future.result(15)


@pytest.fixture(autouse=True)
def _no_context_in_the_test_thread() -> Iterator[None]:
    yield
    assert hoptrace.current_transaction_id() is None


# ------------------------------------------------------------------------ aio-pika ---


@pytest.fixture
def aio_pika_instrumented() -> Iterator[Any]:
    aio_pika = pytest.importorskip("aio_pika")
    import hoptrace.aio_pika

    hoptrace.aio_pika.instrument()
    _amqp.memory.forget_all()
    try:
        yield aio_pika
    finally:
        hoptrace.aio_pika.uninstrument()


async def _publish_concurrently(aio_pika: Any, channel: Any, queue: Any, tally: Tally) -> None:
    """Publish ``ASYNC_HANDLERS`` messages from as many tasks, each in its own transaction."""

    async def publish(i: int) -> None:
        with hoptrace.transaction(transaction_id=f"{tally.path}-{i}"):
            await asyncio.sleep(0)
            body = stamped_body()
            await channel.default_exchange.publish(aio_pika.Message(body),
                                                   routing_key=queue.name)
        tally.outside("publisher task after its transaction")

    await asyncio.gather(*(publish(i) for i in range(ASYNC_HANDLERS)))
    tally.published = ASYNC_HANDLERS


@pytest.mark.parametrize("path", ["consume-callback", "iterator-tasks"])
def test_aio_pika_1000_handlers_in_flight(
    amqp_url: str, aio_pika_instrumented: Any, spans: Any, path: str
) -> None:
    aio_pika = aio_pika_instrumented
    tally = Tally("aio-pika", path)
    name = f"hoptrace-conc-aio-pika-{uuid.uuid4().hex[:10]}"

    async def run() -> None:
        connection = await aio_pika.connect(brokers.pika_url(amqp_url), timeout=10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=ASYNC_HANDLERS)
            queue = await channel.declare_queue(name, auto_delete=True)
            await _publish_concurrently(aio_pika, channel, queue, tally)
            everyone_in = asyncio.Event()
            all_done = asyncio.Event()

            async def handle(message: Any) -> None:
                tally.enter()
                if tally.in_flight >= ASYNC_HANDLERS:
                    everyone_in.set()
                try:
                    # Hold every handler until all are in flight, then let them interleave.
                    await asyncio.wait_for(everyone_in.wait(), 30)
                    await asyncio.sleep(0)
                    tally.handled(message.body)
                    await message.ack()
                finally:
                    tally.leave()
                    if tally.delivered >= tally.published:
                        all_done.set()

            if path == "consume-callback":
                tag = await queue.consume(handle)
                await asyncio.wait_for(all_done.wait(), 60)
                await queue.cancel(tag)
            else:
                tasks = []
                async with queue.iterator() as messages:
                    async for message in messages:
                        # The task copies the context the iterator holds for this message.
                        tasks.append(asyncio.create_task(handle(message)))
                        if len(tasks) == ASYNC_HANDLERS:
                            break
                    tally.outside("iterating task after the loop")
                tally.outside("iterating task after the iterator closed")
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
            tally.outside("main task")
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            await connection.close()

    asyncio.run(run())
    tally.summary(f"{tally.max_in_flight} tasks at once")
    tally.assert_clean()
    assert tally.max_in_flight == ASYNC_HANDLERS
    # Every scope ended, none left open.
    assert len(spans.named(f"process {name}")) == ASYNC_HANDLERS


# ------------------------------------------------------------------------- aiokafka ---


def test_aiokafka_1000_handler_tasks_in_flight(kafka_bootstrap: str, spans: Any) -> None:
    pytest.importorskip("aiokafka")
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    import hoptrace.aiokafka as hk

    topic = f"hoptrace-conc-aiokafka-{uuid.uuid4().hex[:10]}"
    tally = Tally("aiokafka", "getmany + processing() tasks")

    async def run() -> None:
        producer = hk.TracedProducer(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                                      linger_ms=5))
        await producer.start()
        try:
            async def send(i: int) -> Any:
                with hoptrace.transaction(transaction_id=f"aiokafka-{i}"):
                    await asyncio.sleep(0)
                    future = await producer.send(topic, stamped_body())
                tally.outside("producer task after its transaction")
                return future

            futures = await asyncio.gather(*(send(i) for i in range(ASYNC_HANDLERS)))
            await asyncio.gather(*futures)
            tally.published = ASYNC_HANDLERS
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.start()
        everyone_in = asyncio.Event()

        async def handle(record: Any) -> None:
            async with hk.processing(record):
                tally.enter()
                if tally.in_flight >= ASYNC_HANDLERS:
                    everyone_in.set()
                try:
                    await asyncio.wait_for(everyone_in.wait(), 30)
                    await asyncio.sleep(0)
                    tally.handled(record.value)
                finally:
                    tally.leave()
            tally.outside("handler task after processing()")

        tasks: list[asyncio.Task[None]] = []
        try:
            deadline = time.monotonic() + 30
            while len(tasks) < ASYNC_HANDLERS and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    tasks.extend(asyncio.create_task(handle(r)) for r in records)
                tally.outside("fetching task")
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            await consumer.stop()
        tally.outside("main task")

    try:
        asyncio.run(run())
    finally:
        brokers.delete_kafka_topics(kafka_bootstrap, [topic])
    tally.summary(f"{tally.max_in_flight} tasks at once")
    tally.assert_clean()
    assert tally.max_in_flight == ASYNC_HANDLERS
    assert len(spans.named(f"process {topic}")) == ASYNC_HANDLERS


# ----------------------------------------------------------------------------- pika ---


def test_pika_16_threads_each_with_its_own_connection(amqp_url: str, spans: Any) -> None:
    pika = pytest.importorskip("pika")
    import hoptrace.pika

    hoptrace.pika.instrument()
    _amqp.memory.forget_all()
    tally = Tally("pika", "16 BlockingConnections, basic_consume")
    params = pika.URLParameters(brokers.pika_url(amqp_url))
    queue = f"hoptrace-conc-pika-{uuid.uuid4().hex[:10]}"
    total = THREADS * PER_THREAD
    tally.published = total
    barrier = threading.Barrier(THREADS)

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        tally.enter()
        try:
            time.sleep(HANDLER_SECONDS)  # give the other threads' handlers time to overlap
            tally.handled(body)
        finally:
            tally.leave()
        ch.basic_ack(method.delivery_tag)

    def worker(t: int) -> None:
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.queue_declare(queue, arguments={"x-expires": 60_000})
            channel.basic_qos(prefetch_count=8)
            channel.basic_consume(queue, on_message)
            barrier.wait(20)
            for i in range(PER_THREAD):
                with hoptrace.transaction(transaction_id=f"pika-{t}-{i}"):
                    channel.basic_publish("", queue, stamped_body())
                tally.outside("pika thread after publishing")
                if i % 8 == 0:
                    connection.process_data_events(time_limit=0)
                    tally.outside("pika thread between deliveries")
            deadline = time.monotonic() + 30
            while tally.delivered < total and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
                tally.outside("pika thread between deliveries")
        finally:
            connection.close()
        tally.outside("pika thread at the end")

    try:
        errors = run_threads(worker)
    finally:
        hoptrace.pika.uninstrument()
        with pika.BlockingConnection(params) as cleanup:
            cleanup.channel().queue_delete(queue)
    assert errors == []
    tally.summary(f"{THREADS} thr, {tally.max_in_flight} at once")
    tally.assert_clean()
    assert tally.max_in_flight > 1
    assert len(spans.named(f"process {queue}")) == total


# ---------------------------------------------------------------------------- kombu ---


@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_kombu_16_threads_each_with_its_own_connection(
    transport: str, request: pytest.FixtureRequest, spans: Any
) -> None:
    kombu = pytest.importorskip("kombu")
    import hoptrace.kombu

    url = request.getfixturevalue(f"{transport}_url")
    hoptrace.kombu.instrument()
    _amqp.memory.forget_all()
    tally = Tally("kombu", f"16 {transport} Connections, Consumer")
    name = f"hoptrace-conc-kombu-{uuid.uuid4().hex[:10]}"
    exchange = kombu.Exchange(name, type="direct", auto_delete=True)
    queue = kombu.Queue(name, exchange, routing_key="orders", auto_delete=True)
    total = THREADS * PER_THREAD
    tally.published = total
    barrier = threading.Barrier(THREADS)

    def handle(body: Any, message: Any) -> None:
        tally.enter()
        try:
            time.sleep(HANDLER_SECONDS)
            tally.handled(body)
        finally:
            tally.leave()
        message.ack()

    def worker(t: int) -> None:
        # Publishing and consuming on separate connections, as a threaded service would
        # (test_kombu.py covers handlers that py-amqp runs nested inside a publish).
        with kombu.Connection(url) as conn, kombu.Connection(url) as out:
            with conn.Consumer([queue], callbacks=[handle], accept=["json"],
                               prefetch_count=8):
                producer = out.Producer(serializer="json")
                barrier.wait(20)
                for i in range(PER_THREAD):
                    with hoptrace.transaction(transaction_id=f"kombu-{t}-{i}"):
                        producer.publish(json.loads(stamped_body()), exchange=exchange,
                                         routing_key="orders")
                    tally.outside("kombu thread after publishing")
                    if i % 8 == 0:
                        try:
                            conn.drain_events(timeout=0.001)
                        except TimeoutError:
                            pass
                        tally.outside("kombu thread between deliveries")
                deadline = time.monotonic() + 30
                while tally.delivered < total and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.05)
                    except TimeoutError:
                        pass
                    tally.outside("kombu thread between deliveries")
        tally.outside("kombu thread at the end")

    try:
        errors = run_threads(worker)
    finally:
        hoptrace.kombu.uninstrument()
        with kombu.Connection(url) as conn:
            try:
                queue(conn.channel()).delete()
            except Exception:
                pass
    assert errors == []
    tally.summary(f"{THREADS} thr, {tally.max_in_flight} at once")
    tally.assert_clean()
    assert tally.max_in_flight > 1
    assert len(spans.named(f"process {name}:orders:{name}")) == total


# ------------------------------------------------------------- confluent / kafka-python ---


def _pool_run(
    tally: Tally,
    produce: Callable[[int, int], None],
    flush: Callable[[], None],
    fetch: Callable[[], list[Any]],
    handle: Callable[[Any], None],
) -> None:
    """16 producer threads, then one fetching thread feeding a 16-thread handler pool."""
    total = THREADS * PER_THREAD
    barrier = threading.Barrier(THREADS)

    def produce_all(t: int) -> None:
        barrier.wait(20)
        for i in range(PER_THREAD):
            produce(t, i)
            tally.outside("producer thread after its transaction")

    with ThreadPoolExecutor(THREADS) as producers:
        for future in [producers.submit(produce_all, t) for t in range(THREADS)]:
            future.result(60)
    flush()
    tally.published = total

    # Handlers start in groups of 16 (1,008 = 63 x 16), so all 16 threads are in flight.
    hold = threading.Barrier(THREADS)

    def run_handler(record: Any) -> None:
        tally.enter()
        try:
            hold.wait(10)
        except threading.BrokenBarrierError:
            pass
        try:
            handle(record)
        finally:
            tally.leave()
        tally.outside("pool thread after its handler")

    with ThreadPoolExecutor(THREADS) as pool:
        futures = []
        deadline = time.monotonic() + 30
        while len(futures) < total and time.monotonic() < deadline:
            futures.extend(pool.submit(run_handler, r) for r in fetch())
            tally.outside("fetching thread")
        for future in futures:
            future.result(30)
        probe_threads(pool, tally)
    assert len(futures) == total


def _own_consumers(tally: Tally, consume_all: Callable[[int], None]) -> None:
    """16 threads, each reading every published record with a consumer of its own."""

    def run(t: int) -> None:
        consume_all(t)
        tally.outside("consumer thread after close()")

    assert run_threads(run) == []


def test_confluent_kafka_16_producer_threads_a_16_thread_pool_and_16_consumers(
    kafka_bootstrap: str, spans: Any
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    import hoptrace.confluent_kafka as hc

    topic = f"hoptrace-conc-confluent-{uuid.uuid4().hex[:10]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    tally = Tally("confluent-kafka", "consume() -> pool, processing()")
    producer = hc.Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    consumer = hc.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                            "enable.auto.commit": False, "auto.offset.reset": "earliest"})

    def produce(t: int, i: int) -> None:
        with hoptrace.transaction(transaction_id=f"confluent-{t}-{i}"):
            producer.produce(topic, stamped_body())
        producer.poll(0)

    def flush() -> None:
        assert producer.flush(30) == 0
        consumer.assign([confluent_kafka.TopicPartition(topic, 0,
                                                        confluent_kafka.OFFSET_BEGINNING)])

    def fetch() -> list[Any]:
        return [m for m in consumer.consume(num_messages=200, timeout=0.5) if m.error() is None]

    def handle(message: Any) -> None:
        with hc.processing(message, group):
            time.sleep(0)
            tally.handled(message.value())

    own = Tally("confluent-kafka", "16 threads x own Consumer, poll()")

    def consume_all(t: int) -> None:
        mine = hc.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{group}-{t}",
                            "enable.auto.commit": False})
        mine.assign([confluent_kafka.TopicPartition(topic, 0,
                                                    confluent_kafka.OFFSET_BEGINNING)])
        seen = 0
        deadline = time.monotonic() + 40
        try:
            while seen < tally.published and time.monotonic() < deadline:
                message = mine.poll(0.5)  # the previous message's scope closes here
                if message is None or message.error() is not None:
                    own.outside("consumer thread after an empty poll()")
                    continue
                own.enter()  # the handler: the loop body after poll()
                time.sleep(HANDLER_SECONDS / 4)
                own.handled(message.value())
                own.leave()
                seen += 1
        finally:
            mine.close()

    try:
        _pool_run(tally, produce, flush, fetch, handle)
        own.published = THREADS * tally.published
        own.started = time.monotonic()
        _own_consumers(own, consume_all)
    finally:
        consumer.close()
        from confluent_kafka.admin import AdminClient

        for future in AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(
                [topic], operation_timeout=10).values():
            try:
                future.result(15)
            except Exception:
                pass
    tally.summary(f"{THREADS} pool thr, {tally.max_in_flight} at once")
    own.summary(f"{THREADS} thr, {own.max_in_flight} at once")
    tally.assert_clean()
    own.assert_clean()
    assert tally.max_in_flight == THREADS
    assert own.max_in_flight > 1
    assert len(spans.named(f"process {topic}")) == tally.published + own.published


def test_kafka_python_16_producer_threads_a_16_thread_pool_and_16_consumers(
    kafka_bootstrap: str, spans: Any
) -> None:
    pytest.importorskip("kafka")
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    import hoptrace.kafka_python as hkp

    topic = f"hoptrace-conc-kafka-python-{uuid.uuid4().hex[:10]}"
    tally = Tally("kafka-python", "poll() -> pool, processing()")
    producer = hkp.TracedProducer(KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5))
    consumer = hkp.TracedConsumer(KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False))

    def produce(t: int, i: int) -> None:
        with hoptrace.transaction(transaction_id=f"kafka-python-{t}-{i}"):
            producer.send(topic, stamped_body())

    def flush() -> None:
        producer.flush(30)
        consumer.assign([TopicPartition(topic, 0)])

    def fetch() -> list[Any]:
        batch = consumer.poll(timeout_ms=500, max_records=200)
        return [record for records in batch.values() for record in records]

    def handle(record: Any) -> None:
        with hkp.processing(record):
            time.sleep(0)
            tally.handled(record.value)

    own = Tally("kafka-python", "16 threads x own Consumer, for-loop")

    def consume_all(t: int) -> None:
        mine = hkp.TracedConsumer(KafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, consumer_timeout_ms=20_000))
        mine.assign([TopicPartition(topic, 0)])
        seen = 0
        try:
            for record in mine:  # each record's scope is open for the loop body
                own.enter()
                time.sleep(HANDLER_SECONDS / 4)
                own.handled(record.value)
                own.leave()
                seen += 1
                if seen == tally.published:
                    break
            own.outside("consumer thread after the loop")
        finally:
            mine.close()

    try:
        _pool_run(tally, produce, flush, fetch, handle)
        own.published = THREADS * tally.published
        own.started = time.monotonic()
        _own_consumers(own, consume_all)
    finally:
        consumer.close()
        producer.close(5)
        brokers.delete_kafka_topics(kafka_bootstrap, [topic])
    tally.summary(f"{THREADS} pool thr, {tally.max_in_flight} at once")
    own.summary(f"{THREADS} thr, {own.max_in_flight} at once")
    tally.assert_clean()
    own.assert_clean()
    assert tally.max_in_flight == THREADS
    assert own.max_in_flight > 1
    assert len(spans.named(f"process {topic}")) == tally.published + own.published
