"""Memory soak: many messages through each consumer integration; RSS growth and internal state.

Each client runs in its own interpreter (so the RSS figure is that client's alone), with
hoptrace instrumenting it in propagation-only mode (``hoptrace_propagation``) and with an SDK
whose exporter drops every span (``hoptrace_sdk``), and with no instrumentation at all
(``uninstrumented``, ``--baseline``) for the client's own figure. In one run, the client first
produces warm-up + N messages through the (instrumented) producer to a new topic or queue, then
consumes them one by one in the client's ordinary style (aiokafka ``async for``, confluent
``poll``, kafka-python iterator, pika ``basic_consume``, kombu ``drain_events``, aio-pika queue
iterator), asking for the current transaction ID in the loop body as a handler's logging would.
kombu uses the AMQP transport by default (``HOPTRACE_BENCH_KOMBU_URL`` selects another, such as
``redis://127.0.0.1:6379/0``). RSS (``VmRSS``) is read after the first 5,000 messages and again
after the last one (after a ``gc.collect()`` each time); the growth between the two is reported
with the sizes of hoptrace's per-message structures at the end:

* ``hoptrace._amqp.memory`` — the bounded redelivery memory (expected to fill to its cap);
* the held scopes of ``hoptrace.core.held`` (its context-local stack and per-owner map);
* the ``hoptrace.diagnostics()`` counters and ``hoptrace.celery.running_executions()``.

``celery`` runs up to 10,000 tasks through one prefork child of a real worker instead, and
reads the child's RSS from a task after each burst.

Target: RSS growth < 5 MB per client, and no structure growing past its cap.

    python bench/soak_bench.py            # 100,000 messages per client and variant
    python bench/soak_bench.py --quick    # 20,000
    python bench/soak_bench.py --clients pika,kombu --variants hoptrace_sdk
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, install_dropping_sdk, run_variant_subprocess, write_results

KAFKA = os.environ.get("HOPTRACE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
AMQP = os.environ.get("HOPTRACE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: kombu's transport: AMQP by default (on this broker setup it consumes ~3x faster than the
#: Redis transport, so the soak finishes sooner); set to ``redis://127.0.0.1:6379/0`` for Redis.
KOMBU_URL = os.environ.get("HOPTRACE_BENCH_KOMBU_URL") or AMQP
CLIENTS = ("aiokafka", "confluent", "kafka-python", "pika", "kombu", "aio-pika", "celery")
SOAK_VARIANTS = ("hoptrace_propagation", "hoptrace_sdk")
#: The same soak with no instrumentation, to tell the client's own growth from hoptrace's. Not
#: called "plain": rows here carry no ``median_us``, which common.ratios() needs for "plain".
BASELINE = "uninstrumented"
WARMUP = 5_000
RSS_TARGET_MB = 5.0
PAYLOAD = b'{"order": 42, "items": ["a", "b"]}'


def rss_mb() -> float:
    """Return this process's resident set size in MB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Soak:
    """Counts consumed messages; takes the RSS readings at the warm-up mark and at the end."""

    def __init__(self, total: int) -> None:
        import hoptrace

        self.total = total
        self.seen = 0
        self.rss_warm: float | None = None
        self.rss_end: float | None = None
        #: (messages consumed, RSS MB) at every tenth of the run after the warm-up.
        self.checkpoints: list[tuple[int, float]] = []
        self._every = max(1, (total - WARMUP) // 10)
        self.started = 0.0
        self.elapsed = 0.0
        self._current_transaction_id = hoptrace.current_transaction_id

    def handle(self) -> bool:
        """Do a handler's work for one message; return True once every message is in."""
        self._current_transaction_id()
        self.seen += 1
        if self.seen == WARMUP:
            gc.collect()
            self.rss_warm = rss_mb()
            self.started = time.perf_counter()
        elif self.seen > WARMUP and (self.seen - WARMUP) % self._every == 0:
            gc.collect()
            self.checkpoints.append((self.seen, round(rss_mb(), 2)))
        if self.seen >= self.total:
            self.elapsed = time.perf_counter() - self.started
            gc.collect()  # read while the consumer is still open, as at the warm-up mark
            self.rss_end = rss_mb()
            return True
        return False


def internal_state() -> dict[str, Any]:
    """Sizes of hoptrace's per-message structures, as seen from the calling context."""
    import hoptrace
    from hoptrace import _amqp
    from hoptrace.core import held

    # The scopes held between two calls (a poll and the next, an async for's iterations)
    # live in hoptrace.core.held: a context-local stack and a per-owner map.
    by_owner = getattr(held, "_by_owner", {})
    stack = getattr(held, "_stack", None)
    state: dict[str, Any] = {
        "amqp_memory_size": len(_amqp.memory),
        "amqp_memory_cap": _amqp.MEMORY_SIZE,
        "kafka_pending_depth": len(stack.get()) if stack is not None else 0,
        "kafka_latest_size": sum(len(scopes) for scopes in list(by_owner.values())),
        "diagnostics": dict(hoptrace.diagnostics()),
    }
    try:
        import hoptrace.celery

        state["celery_running_executions"] = hoptrace.celery.running_executions()
    except Exception as exc:  # celery missing: report it rather than fail the soak
        state["celery_running_executions"] = f"unavailable: {exc!r}"
    return state


def set_up(variant: str) -> Any:
    """Install the variant's instrumentation for every client; return the SDK provider."""
    import hoptrace
    import hoptrace.aio_pika
    import hoptrace.aiokafka
    import hoptrace.confluent_kafka
    import hoptrace.kafka_python
    import hoptrace.kombu
    import hoptrace.pika

    provider = None
    if variant == BASELINE:
        return None
    if variant == "hoptrace_propagation":
        hoptrace.configure(propagation_only=True)
    else:
        provider = install_dropping_sdk()
    for module in (hoptrace.aiokafka, hoptrace.confluent_kafka, hoptrace.kafka_python,
                   hoptrace.pika, hoptrace.kombu, hoptrace.aio_pika):
        module.instrument()
    return provider


def new_name() -> str:
    return f"hoptrace-soak-{uuid.uuid4().hex[:10]}"


def delete_topic(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA})
    try:
        for future in admin.delete_topics([topic]).values():
            future.result(10)
    except Exception as exc:
        print(f"could not delete topic {topic}: {exc!r}", file=sys.stderr)


def confluent_produce(topic: str, total: int) -> None:
    """Produce ``total`` records with confluent-kafka (``produce`` + ``flush``)."""
    import confluent_kafka

    producer = confluent_kafka.Producer({"bootstrap.servers": KAFKA, "linger.ms": 20})
    for i in range(total):
        while True:
            try:
                producer.produce(topic, PAYLOAD)
                break
            except BufferError:
                producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                # The topic is auto-created by the first record; on a busy broker its
                # metadata can lag behind: wait and produce again.
                if exc.args[0].code() != confluent_kafka.KafkaError._UNKNOWN_TOPIC:
                    raise
                producer.poll(0.2)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("confluent producer did not deliver every record")


def produce_elsewhere(topic: str, total: int) -> None:
    """Produce ``total`` records to ``topic`` from another interpreter (hoptrace headers on).

    A producer in the consumer's own process leaves librdkafka's send buffers behind, freed
    at unpredictable times: that would swing the consumer's RSS figure by tens of MB.
    """
    subprocess.run(
        [sys.executable, __file__, "--produce-topic", topic, "--messages", str(total)],
        check=True,
    )


async def aiokafka_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = new_name()
    produce_elsewhere(topic, total)
    soak = Soak(total)
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()
    try:
        async for _msg in consumer:
            if soak.handle():
                break
        state = internal_state()  # inside the consuming task: its own _pending stack
    finally:
        await consumer.stop()
        delete_topic(topic)
    return soak, state


def confluent_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    import confluent_kafka

    topic = new_name()
    produce_elsewhere(topic, total)
    soak = Soak(total)
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": KAFKA, "group.id": new_name(),
        # librdkafka prefetches up to 100,000 messages / 64 MB by default; a small prefetch
        # queue keeps its fill level (which swings with timing) out of the growth figure.
        "queued.min.messages": 1000,
        "queued.max.messages.kbytes": 2048,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            msg = consumer.poll(5)
            if msg is None or msg.error() is not None:
                continue
            if soak.handle():
                break
        consumer.poll(0)  # the next poll closes the last record's scope
        state = internal_state()
    finally:
        consumer.close()
        delete_topic(topic)
    return soak, state


def kafka_python_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    from kafka import KafkaConsumer, TopicPartition

    topic = new_name()
    produce_elsewhere(topic, total)
    soak = Soak(total)
    consumer = KafkaConsumer(bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=30_000)
    consumer.assign([TopicPartition(topic, 0)])
    try:
        for _msg in consumer:
            if soak.handle():
                break
        state = internal_state()
    finally:
        consumer.close()
        delete_topic(topic)
    return soak, state


def pika_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = connection.channel()
    queue = new_name()
    channel.queue_declare(queue, arguments={"x-expires": 900_000})
    soak = Soak(total)
    try:
        for i in range(total):
            properties = pika.BasicProperties(message_id=str(i), delivery_mode=1)
            channel.basic_publish("", queue, PAYLOAD, properties)
        channel.basic_qos(prefetch_count=1000)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            if soak.handle():
                ch.stop_consuming()

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
        state = internal_state()
    finally:
        channel.queue_delete(queue)
        connection.close()
    return soak, state


def kombu_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    import kombu

    name = new_name()
    exchange = kombu.Exchange(name, type="direct")
    queue = kombu.Queue(name, exchange, routing_key=name)
    soak = Soak(total)
    done = False

    def on_message(body: Any, message: Any) -> None:
        nonlocal done
        message.ack()
        if soak.handle():
            done = True

    with kombu.Connection(KOMBU_URL) as conn:
        channel = conn.channel()
        bound = queue(channel)
        bound.declare()
        try:
            producer = conn.Producer()
            for i in range(total):
                producer.publish(PAYLOAD, exchange=exchange, routing_key=name,
                                 message_id=str(i), serializer="raw")
            with conn.Consumer(queue, callbacks=[on_message], prefetch_count=1000):
                while not done:
                    conn.drain_events(timeout=30)
            state = internal_state()
        finally:
            bound.delete()
            exchange(channel).delete()
    return soak, state


async def aio_pika_soak(total: int) -> tuple[Soak, dict[str, Any]]:
    import aio_pika

    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(new_name(), arguments={"x-expires": 900_000})
    soak = Soak(total)
    try:
        for i in range(total):
            await channel.default_exchange.publish(
                aio_pika.Message(PAYLOAD, message_id=str(i)), routing_key=queue.name
            )
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                if soak.handle():
                    break
        state = internal_state()
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
    return soak, state


RUNNERS: dict[str, Callable[[int], tuple[Soak, dict[str, Any]]]] = {
    "aiokafka": lambda n: asyncio.run(aiokafka_soak(n)),
    "confluent": confluent_soak,
    "kafka-python": kafka_python_soak,
    "pika": pika_soak,
    "kombu": kombu_soak,
    "aio-pika": lambda n: asyncio.run(aio_pika_soak(n)),
}


def run_client(client: str, variant: str, messages: int) -> dict[str, Any]:
    """Soak one client in this process; return its result row."""
    provider = set_up(variant)
    total = WARMUP + messages
    soak, state = RUNNERS[client](total)
    if provider is not None:
        provider.shutdown()
    assert soak.rss_warm is not None and soak.rss_end is not None
    growth = soak.rss_end - soak.rss_warm
    # From the middle of the run on, the redelivery memory is long full (cap 10,000): what
    # grows after that is growth per message, not the memory filling up.
    middle = soak.checkpoints[len(soak.checkpoints) // 2 - 1] if soak.checkpoints else None
    structures_ok = (
        state["amqp_memory_size"] <= state["amqp_memory_cap"]
        and state["kafka_pending_depth"] <= 1
        and state["kafka_latest_size"] <= 1
        and state["celery_running_executions"] in (0, None)
    )
    return {
        "case": f"{client} soak",
        "transport": KOMBU_URL.split(":", 1)[0] if client == "kombu" else None,
        "variant": variant,
        "messages": messages,
        "warmup_messages": WARMUP,
        "consumed": soak.seen,
        "rss_after_warmup_mb": round(soak.rss_warm, 2),
        "rss_end_mb": round(soak.rss_end, 2),
        "rss_growth_mb": round(growth, 2),
        "rss_growth_second_half_mb": (
            round(soak.rss_end - middle[1], 2) if middle is not None else None
        ),
        "rss_checkpoints": soak.checkpoints,
        "consume_us_per_msg": round(soak.elapsed / messages * 1e6, 2),
        **state,
        "rss_target_met": growth < RSS_TARGET_MB,
        "structures_bounded": structures_ok,
    }


def celery_pool_soak(tasks: int) -> dict[str, Any]:
    """Tasks through one prefork child of a real worker: the child's RSS growth and state.

    The worker runs ``tests/integration/celery_apps/traced_app.py`` with hoptrace and an SDK
    that counts spans; ``traced.process_stats`` reports the child's RSS after each burst.
    """
    integration = Path(__file__).resolve().parents[1] / "tests" / "integration"
    sys.path.insert(0, str(integration))
    import tempfile

    from celery_apps.harness import running_worker
    from celery_apps.traced_app import build_app

    import hoptrace
    import hoptrace.celery

    broker = os.environ.get("HOPTRACE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    backend = os.environ.get("HOPTRACE_REDIS_URL", "redis://127.0.0.1:6379/0")
    queue = f"hoptrace-soak-celery-{uuid.uuid4().hex[:8]}"
    app = build_app(broker, backend, queue, name="soak")
    add, stats = app.tasks["traced.add"], app.tasks["traced.process_stats"]
    rounds = 20
    per_round = max(1, tasks // rounds)
    samples = []
    hoptrace.celery.instrument(app)
    try:
        with tempfile.TemporaryDirectory() as out, running_worker(
            broker, backend, Path(out), app, queue=queue, concurrency=1,
            extra_env={"HOPTRACE_CELERY_SPANS": "count"},
        ):
            for number in range(rounds):
                with hoptrace.transaction("burst"):
                    for i in range(per_round):
                        add.apply_async((i, number), ignore_result=True)
                samples.append(stats.delay().get(timeout=300))
    finally:
        hoptrace.celery.uninstrument()
    warm, last = samples[3], samples[-1]
    growth = (last["rss_kib"] - warm["rss_kib"]) / 1024
    return {
        "case": "celery prefork soak",
        "variant": "hoptrace_sdk",
        "messages": per_round * rounds,
        "warmup_messages": per_round * 4,
        "rss_after_warmup_mb": round(warm["rss_kib"] / 1024, 2),
        "rss_end_mb": round(last["rss_kib"] / 1024, 2),
        "rss_growth_mb": round(growth, 2),
        "rss_checkpoints": [round(s["rss_kib"] / 1024, 2) for s in samples],
        "live_scopes_at_end": last["live"],
        "rss_target_met": growth < RSS_TARGET_MB,
        "structures_bounded": last["running"] == 1,
    }


def merged_with_earlier(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``rows`` plus the rows of the last results file for other (case, variant)s."""
    path = RESULTS / "soak.json"
    if not path.exists():
        return rows
    fresh = {(row["case"], row["variant"]) for row in rows}
    earlier = json.loads(path.read_text()).get("rows", [])
    return [r for r in earlier if (r["case"], r["variant"]) not in fresh] + rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 messages per run")
    parser.add_argument("--messages", type=int, help="messages after the warm-up")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--variants", default=",".join(SOAK_VARIANTS))
    parser.add_argument("--baseline", action="store_true",
                        help="also run every client uninstrumented")
    parser.add_argument("--merge", action="store_true",
                        help="keep rows of bench/results/soak.json for runs not repeated now")
    parser.add_argument("--produce-topic", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    messages = args.messages or (20_000 if args.quick else 100_000)
    if args.produce_topic:  # the Kafka producer of one run, in its own interpreter
        set_up("hoptrace_propagation")
        confluent_produce(args.produce_topic, args.messages)
        return 0
    if args.client:
        print(json.dumps(run_client(args.client, args.variant, messages)))
        return 0
    variants = args.variants.split(",") + ([BASELINE] if args.baseline else [])
    rows: list[dict[str, Any]] = []
    failed = []
    clients = args.clients.split(",")
    if "celery" in clients:
        clients.remove("celery")
        try:
            row = celery_pool_soak(min(messages, 10_000))
            rows.append(row)
            print(f"{row['case']:<20} growth {row['rss_growth_mb']:6.2f} MB "
                  f"(rss {row['rss_after_warmup_mb']:.1f} -> {row['rss_end_mb']:.1f})", flush=True)
        except Exception as exc:
            print(f"celery soak failed: {exc!r}", file=sys.stderr)
            failed.append("celery")
    for client in clients:
        for variant in variants:
            try:
                row = run_variant_subprocess(
                    __file__, variant, ["--client", client, "--messages", str(messages)]
                )
            except Exception as exc:
                stderr = getattr(exc, "stderr", "") or ""
                print(f"{client} / {variant} failed: {exc!r}\n{stderr[-2000:]}", file=sys.stderr)
                failed.append(f"{client}/{variant}")
                continue
            rows.append(row)
            print(f"{row['case']:<20} {variant:<22} growth {row['rss_growth_mb']:6.2f} MB "
                  f"(2nd half {row['rss_growth_second_half_mb']:5.2f}) "
                  f"(rss {row['rss_after_warmup_mb']:.1f} -> {row['rss_end_mb']:.1f}) "
                  f"amqp memory {row['amqp_memory_size']}/{row['amqp_memory_cap']} "
                  f"kafka pending {row['kafka_pending_depth']} latest "
                  f"{row['kafka_latest_size']} {row['consume_us_per_msg']:.1f} us/msg",
                  flush=True)
    if args.merge:
        rows = merged_with_earlier(rows)
    write_results("soak", rows, {
        "messages_per_run": messages, "warmup": WARMUP, "rss_target_mb": RSS_TARGET_MB,
        "failed": failed,
    })
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
