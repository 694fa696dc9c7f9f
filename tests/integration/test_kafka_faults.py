"""Kafka restarted mid-stream: hoptrace loses no record and every one keeps its transaction.

For aiokafka, confluent-kafka and kafka-python: COUNT records, each produced in its own
transaction by an idempotent ``acks=all`` producer, while the broker restarts part-way. The
producer rides through on the client's own retries and sends again whatever still fails.
A consumer then reads the topic to its end. The run is done without hoptrace and with it:
both deliver every record, and with hoptrace each one carries its transaction ID in the
header and as ``hoptrace.current_transaction_id()`` inside the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import brokers
import pytest

import hoptrace
from hoptrace.core.propagator import baggage_entry

pytestmark = [pytest.mark.integration, pytest.mark.long]

COUNT = 5_000
RESTART_AFTER = 500
"""Records produced, and acknowledged, before the broker is restarted."""
TAIL = 500
"""Records kept back until the broker is up again, so some are produced after the restart."""
PACE_S = 0.002
"""Pause between records while the broker restarts."""
OUTAGE_S = 1.0
"""A pause between two acknowledgements longer than this means the producer saw the outage."""
RESEND_ROUNDS = 5
DEADLINE_S = 120.0
TX_HEADER = "x-transaction-id"

CLIENTS = ["aiokafka", "confluent_kafka", "kafka_python"]


@dataclass
class Outcome:
    """What one produce-through-restart-then-consume run saw."""

    sends: int = 0
    """Produce calls, second sends included."""
    failures: int = 0
    """Sends that raised or whose delivery failed."""
    resent: int = 0
    last_ack: float | None = None
    ack_gap_s: float = 0.0
    """The longest pause between two acknowledgements: the outage as the producer saw it."""
    during: int = 0
    """Records produced while the broker restarted."""
    after: int = 0
    """Records produced once it was back."""
    restart_s: float = 0.0
    produce_s: float = 0.0
    consume_s: float = 0.0
    delivered: Counter[int] = field(default_factory=Counter)
    """Sequence number -> times it was read."""
    problems: list[str] = field(default_factory=list)

    def handle(self, value: bytes, headers: Any, instrumented: bool) -> None:
        """The consumer's handler: count the record and check its transaction."""
        seq, tx = value.decode().split(":")
        self.delivered[int(seq)] += 1
        values = dict(headers or ())
        bag = values.get("baggage")
        if isinstance(bag, bytes):
            bag = bag.decode()
        # The ID travels as the baggage entry; no transaction header by default.
        carried = baggage_entry(bag, "transaction.id") if isinstance(bag, str) else None
        current = hoptrace.current_transaction_id()
        if instrumented and (carried != tx or current != tx or TX_HEADER in values):
            self.problems.append(f"{seq}: baggage={bag} current={current} body={tx} "
                                 f"{TX_HEADER}={values.get(TX_HEADER)!r}")
        if not instrumented and (carried is not None or TX_HEADER in values):
            self.problems.append(f"{seq}: uninstrumented record carries an ID: {values}")

    def acked(self) -> None:
        now = time.monotonic()
        if self.last_ack is not None:
            self.ack_gap_s = max(self.ack_gap_s, now - self.last_ack)
        self.last_ack = now

    def summary(self, client: str, instrumented: bool) -> str:
        total = sum(self.delivered.values())
        return (
            f"{client} {'hoptrace' if instrumented else 'plain'}: restart {self.restart_s:.1f}s, "
            f"produce {self.produce_s:.1f}s ({self.during} during / {self.after} after the "
            f"restart, no ack for {self.ack_gap_s:.1f}s, {self.failures} failed, "
            f"{self.resent} resent), consume {self.consume_s:.1f}s: {len(self.delivered)} "
            f"distinct of {total} read"
        )


class Restart:
    """Restarts Kafka in a thread once RESTART_AFTER records are out, and paces the producer.

    While the broker restarts, records go out every PACE_S; the last TAIL wait until it is
    back. ``with`` waits for the restart and re-raises its failure (or skip).
    """

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._restart, daemon=True)
        self.failures: list[BaseException] = []

    def _restart(self) -> None:
        started = time.monotonic()
        try:
            brokers.restart("kafka")
        except BaseException as exc:  # pytest.fail/skip raise BaseException subclasses
            self.failures.append(exc)
        finally:
            self.outcome.restart_s = time.monotonic() - started
            self.done.set()

    def __enter__(self) -> Restart:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.thread.is_alive():
            self.thread.join(DEADLINE_S)
        if self.failures and exc is None:
            raise self.failures[0]

    def _pace(self, seq: int) -> bool:
        """Start the restart at RESTART_AFTER; True if record ``seq`` goes out during it."""
        if seq == RESTART_AFTER:
            self.thread.start()
        return RESTART_AFTER <= seq < COUNT - TAIL and not self.done.is_set()

    def _count(self, seq: int) -> None:
        if seq >= RESTART_AFTER:
            if self.done.is_set():
                self.outcome.after += 1
            else:
                self.outcome.during += 1

    def before(self, seq: int) -> None:
        """Call before producing record ``seq``: may pause, or wait for the broker."""
        if self._pace(seq):
            time.sleep(PACE_S)
        elif seq >= RESTART_AFTER:
            self.done.wait(DEADLINE_S)
        self._count(seq)

    async def before_async(self, seq: int) -> None:
        """:meth:`before` for an event loop."""
        if self._pace(seq):
            await asyncio.sleep(PACE_S)
        elif seq >= RESTART_AFTER:
            deadline = time.monotonic() + DEADLINE_S
            while not self.done.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self._count(seq)


def body(seq: int, tx: str) -> bytes:
    return f"{seq}:{tx}".encode()


# ------------------------------------------------------------- aiokafka ---


async def aiokafka_produce(bootstrap: str, topic: str, outcome: Outcome) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5,
        retry_backoff_ms=200,
    )
    await producer.start()
    failed: list[tuple[int, str | None]] = []

    def delivered(seq: int, tx: str, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            outcome.failures += 1
            failed.append((seq, tx))
        else:
            outcome.acked()

    async def send(seq: int, tx: str | None) -> None:
        with hoptrace.transaction("produce", transaction_id=tx) as scope:
            tx = scope.transaction_id
            assert tx is not None
            outcome.sends += 1
            try:
                future = await producer.send(topic, body(seq, tx))
            except KafkaError:
                outcome.failures += 1
                failed.append((seq, tx))
                return
        future.add_done_callback(lambda f: delivered(seq, tx, f))

    try:
        with Restart(outcome) as restart:
            for seq in range(COUNT):
                if seq == RESTART_AFTER:
                    await producer.flush()  # these are on the broker before it goes down
                await restart.before_async(seq)
                await send(seq, None)
            await producer.flush()
        for _ in range(RESEND_ROUNDS):
            if not failed:
                break
            again = failed[:]
            failed.clear()
            outcome.resent += len(again)
            for seq, tx in again:
                await send(seq, tx)
            await producer.flush()
        assert not failed, f"{len(failed)} records never acknowledged"
    finally:
        await producer.stop()


async def aiokafka_consume(
    bootstrap: str, topic: str, outcome: Outcome, instrumented: bool
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        async for msg in consumer:
            outcome.handle(msg.value, msg.headers, instrumented)
            if msg.offset >= end - 1:
                break
    finally:
        await consumer.stop()


def run_aiokafka(bootstrap: str, topic: str, outcome: Outcome, instrumented: bool) -> None:
    import hoptrace.aiokafka

    async def run() -> None:
        started = time.monotonic()
        await aiokafka_produce(bootstrap, topic, outcome)
        outcome.produce_s = time.monotonic() - started
        started = time.monotonic()
        await asyncio.wait_for(
            aiokafka_consume(bootstrap, topic, outcome, instrumented), DEADLINE_S
        )
        outcome.consume_s = time.monotonic() - started

    with instrumentation(hoptrace.aiokafka, instrumented):
        asyncio.run(run())


# ------------------------------------------------------- confluent-kafka ---


def run_confluent_kafka(bootstrap: str, topic: str, outcome: Outcome, instrumented: bool) -> None:
    import confluent_kafka

    import hoptrace.confluent_kafka

    with instrumentation(hoptrace.confluent_kafka, instrumented):
        # instrument() swaps the module attributes: look them up now
        producer = confluent_kafka.Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "reconnect.backoff.max.ms": 1000,
        })
        failed: list[tuple[int, str | None]] = []

        def send(seq: int, tx: str | None) -> None:
            with hoptrace.transaction("produce", transaction_id=tx) as scope:
                tx = scope.transaction_id
                assert tx is not None

                def delivered(err: Any, msg: Any) -> None:
                    if err is not None:
                        outcome.failures += 1
                        failed.append((seq, tx))
                    else:
                        outcome.acked()

                outcome.sends += 1
                try:
                    producer.produce(topic, body(seq, tx), on_delivery=delivered)
                except (BufferError, confluent_kafka.KafkaException):
                    outcome.failures += 1
                    failed.append((seq, tx))
            producer.poll(0)

        started = time.monotonic()
        with Restart(outcome) as restart:
            for seq in range(COUNT):
                if seq == RESTART_AFTER:
                    assert producer.flush(DEADLINE_S) == 0  # on the broker before the restart
                restart.before(seq)
                send(seq, None)
            assert producer.flush(DEADLINE_S) == 0
        for _ in range(RESEND_ROUNDS):
            if not failed:
                break
            again = failed[:]
            failed.clear()
            outcome.resent += len(again)
            for seq, tx in again:
                send(seq, tx)
            assert producer.flush(DEADLINE_S) == 0
        assert not failed, f"{len(failed)} records never acknowledged"
        outcome.produce_s = time.monotonic() - started

        started = time.monotonic()
        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"hoptrace-fault-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        try:
            _, end = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, 0), timeout=30
            )
            consumer.assign([
                confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)
            ])
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error() is not None:
                    continue
                value, offset = msg.value(), msg.offset()
                assert value is not None and offset is not None
                outcome.handle(value, msg.headers(), instrumented)
                if offset >= end - 1:
                    break
        finally:
            consumer.close()
        outcome.consume_s = time.monotonic() - started


# ---------------------------------------------------------- kafka-python ---


def run_kafka_python(bootstrap: str, topic: str, outcome: Outcome, instrumented: bool) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.errors import KafkaError

    import hoptrace.kafka_python

    with instrumentation(hoptrace.kafka_python, instrumented):
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5,
            reconnect_backoff_max_ms=1000, retry_backoff_ms=200,
        )
        failed: list[tuple[int, str | None]] = []
        lock = threading.Lock()  # callbacks run in the producer's I/O thread

        def send(seq: int, tx: str | None) -> None:
            with hoptrace.transaction("produce", transaction_id=tx) as scope:
                tx = scope.transaction_id
                assert tx is not None

                def acked(_: Any) -> None:
                    with lock:
                        outcome.acked()

                def errored(_: BaseException) -> None:
                    with lock:
                        outcome.failures += 1
                        failed.append((seq, tx))

                outcome.sends += 1
                try:
                    future = producer.send(topic, body(seq, tx))
                except KafkaError:
                    errored(KafkaError())
                    return
            future.add_callback(acked)
            future.add_errback(errored)

        started = time.monotonic()
        try:
            with Restart(outcome) as restart:
                for seq in range(COUNT):
                    if seq == RESTART_AFTER:
                        producer.flush(DEADLINE_S)  # on the broker before the restart
                    restart.before(seq)
                    send(seq, None)
                producer.flush(DEADLINE_S)
            for _ in range(RESEND_ROUNDS):
                if not failed:
                    break
                with lock:
                    again = failed[:]
                    failed.clear()
                outcome.resent += len(again)
                for seq, tx in again:
                    send(seq, tx)
                producer.flush(DEADLINE_S)
            assert not failed, f"{len(failed)} records never acknowledged"
        finally:
            producer.close(10)
        outcome.produce_s = time.monotonic() - started

        started = time.monotonic()
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            consumer_timeout_ms=30_000,
        )
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            end = consumer.end_offsets([partition])[partition]
            for msg in consumer:
                outcome.handle(msg.value, msg.headers, instrumented)
                if msg.offset >= end - 1:
                    break
        finally:
            consumer.close()
        outcome.consume_s = time.monotonic() - started


# ---------------------------------------------------------------- shared ---


@contextlib.contextmanager
def instrumentation(module: Any, on: bool) -> Iterator[None]:
    if on:
        module.instrument()
    try:
        yield
    finally:
        if on:
            module.uninstrument()


RUNNERS: dict[str, Callable[[str, str, Outcome, bool], None]] = {
    "aiokafka": run_aiokafka,
    "confluent_kafka": run_confluent_kafka,
    "kafka_python": run_kafka_python,
}
IMPORTS = {"aiokafka": "aiokafka", "confluent_kafka": "confluent_kafka", "kafka_python": "kafka"}


def create_topic(bootstrap: str, topic: str) -> None:
    """One partition, so the end offset counts every record the consumer must read."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()

    asyncio.run(create())


@pytest.fixture
def kafka_back_up(kafka_bootstrap: str) -> Iterator[list[str]]:
    """Topics to delete; afterwards Kafka is up again (later tests use it), pass or fail."""
    topics: list[str] = []
    location = brokers.locate("kafka")
    try:
        yield topics
    finally:
        if location is None or location.source != "testcontainers":
            brokers.start("kafka")
        brokers.delete_kafka_topics(kafka_bootstrap, topics)


def run(client: str, bootstrap: str, topics: list[str], instrumented: bool) -> Outcome:
    topic = f"hoptrace-kafka-fault-{client}-{uuid.uuid4().hex[:10]}"
    topics.append(topic)
    create_topic(bootstrap, topic)
    outcome = Outcome()
    RUNNERS[client](bootstrap, topic, outcome, instrumented)
    print(outcome.summary(client, instrumented))
    return outcome


@pytest.mark.parametrize("client", CLIENTS)
def test_broker_restart_mid_stream_loses_nothing_and_keeps_transactions(
    client: str, kafka_bootstrap: str, kafka_back_up: list[str], spans: Any
) -> None:
    pytest.importorskip(IMPORTS[client])
    plain = run(client, kafka_bootstrap, kafka_back_up, instrumented=False)
    spans.clear()
    traced = run(client, kafka_bootstrap, kafka_back_up, instrumented=True)
    topic = kafka_back_up[-1]

    for outcome, instrumented in ((plain, False), (traced, True)):
        # the restart fell mid-stream, and records were held through it
        summary = outcome.summary(client, instrumented)
        assert outcome.during > 0 and outcome.after > 0, summary
        assert outcome.ack_gap_s > OUTAGE_S, f"the producer never saw the outage: {summary}"
    assert len(traced.delivered) == len(plain.delivered) == COUNT
    assert plain.problems == []
    assert traced.problems == [], traced.problems[:5]
    assert len(spans.named(f"send {topic}")) == traced.sends
    assert len(spans.named(f"process {topic}")) == sum(traced.delivered.values())
