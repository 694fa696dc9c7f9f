"""Kafka produce and consume through the local broker: plain, hoptrace, OTel contrib.

Each repeat runs every variant once, round-robin, each in a fresh interpreter
(instrumentation patches the clients globally). In one run of a variant, each client
(aiokafka, confluent-kafka, kafka-python) produces N records to a new topic, waits for every
acknowledgement, then consumes them one by one (``async for`` / ``poll`` / ``for``), looking
at the current context in the loop body as a handler's logging would. Reported per message:
produce, consume and the sum, median over repeats with min..max. The plain variant also runs
aiokafka with three static headers the size of hoptrace's, to show what carrying the context
costs the client itself.

    python bench/kafka_bench.py            # 20,000 records, 5 repeats
    python bench/kafka_bench.py --quick    # 3,000 records, 3 repeats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import STATIC_HEADERS as AMQP_STATIC_HEADERS
from common import (
    VARIANTS,
    install_dropping_sdk,
    ratios,
    run_variant_subprocess,
    summarize,
    write_results,
)

BOOTSTRAP = os.environ.get("HOPTRACE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CLIENTS = ("aiokafka", "confluent", "kafka-python")
#: The three headers hoptrace writes on a Kafka record, with values of the real sizes: sent by
#: the plain variant too, in one extra case, to show what carrying them costs a client with no
#: tracing at all.
#: (Kafka records carry their send time, so hoptrace sends no send-time header there.)
STATIC_HEADERS = [
    (name, value.encode())
    for name, value in AMQP_STATIC_HEADERS.items()
    if name != "x-hoptrace-sent-ns"
]
PAYLOAD = b"x" * 100


def setup(variant: str) -> None:
    """Install the variant's instrumentation (the process is this variant's alone)."""
    if variant == "plain":
        return
    if variant == "otel":
        install_dropping_sdk()
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
        from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
        from opentelemetry.instrumentation.kafka import KafkaInstrumentor

        AIOKafkaInstrumentor().instrument()
        ConfluentKafkaInstrumentor().instrument()
        KafkaInstrumentor().instrument()
        return
    import hoptrace
    import hoptrace.aiokafka
    import hoptrace.confluent_kafka
    import hoptrace.kafka_python

    if variant == "hoptrace_propagation":
        hoptrace.configure(propagation_only=True)
    else:
        install_dropping_sdk()
    hoptrace.aiokafka.instrument()
    hoptrace.confluent_kafka.instrument()
    hoptrace.kafka_python.instrument()


def new_topic() -> str:
    return f"hoptrace-bench-{uuid.uuid4().hex[:10]}"


def delete_topic(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        for future in admin.delete_topics([topic]).values():
            future.result(10)
    except Exception:
        pass


def per_message(name: str, produce_ns: int, consume_ns: int, records: int) -> dict[str, float]:
    return {
        f"{name} produce": produce_ns / records / 1000,
        f"{name} consume": consume_ns / records / 1000,
        f"{name} produce+consume": (produce_ns + consume_ns) / records / 1000,
    }


async def aiokafka_run(records: int, headers: list[tuple[str, bytes]] | None) -> tuple[int, int]:
    """Produce and consume ``records`` records with aiokafka; return (produce ns, consume ns)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from opentelemetry import context as otel_context

    topic = new_topic()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        await producer.send_and_wait(topic, PAYLOAD)  # topic creation, metadata: untimed
        start = time.perf_counter_ns()
        futures = [
            await producer.send(topic, PAYLOAD, headers=list(headers) if headers else None)
            for _ in range(records)
        ]
        await asyncio.gather(*futures)
        produce_ns = time.perf_counter_ns() - start
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
    )
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.start()
    try:
        await consumer.getone()  # the warm-up record: connection and first fetch, untimed
        seen = 0
        get_current = otel_context.get_current
        start = time.perf_counter_ns()
        async for _msg in consumer:
            get_current()  # what a handler's logging does: look at the current context
            seen += 1
            if seen == records:
                break
        consume_ns = time.perf_counter_ns() - start
    finally:
        await consumer.stop()
    delete_topic(topic)
    return produce_ns, consume_ns


def confluent_run(records: int, headers: list[tuple[str, bytes]] | None) -> tuple[int, int]:
    """The same with confluent-kafka (``produce`` + ``flush``, then ``poll`` one by one)."""
    import confluent_kafka
    from opentelemetry import context as otel_context

    topic = new_topic()
    producer = confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    producer.produce(topic, PAYLOAD)
    producer.flush(30)
    start = time.perf_counter_ns()
    for i in range(records):
        producer.produce(topic, PAYLOAD, headers=list(headers) if headers else None)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    produce_ns = time.perf_counter_ns() - start

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    while True:  # the warm-up record, untimed
        msg = consumer.poll(5)
        if msg is not None and msg.error() is None:
            break
    seen = 0
    get_current = otel_context.get_current
    start = time.perf_counter_ns()
    while seen < records:
        msg = consumer.poll(5)
        if msg is None or msg.error() is not None:
            continue
        get_current()
        seen += 1
    consume_ns = time.perf_counter_ns() - start
    consumer.close()
    delete_topic(topic)
    return produce_ns, consume_ns


def kafka_python_run(records: int, headers: list[tuple[str, bytes]] | None) -> tuple[int, int]:
    """The same with kafka-python (``send`` + ``flush``, then the consumer iterator)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from opentelemetry import context as otel_context

    topic = new_topic()
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    producer.send(topic, PAYLOAD).get(30)
    start = time.perf_counter_ns()
    for _ in range(records):
        producer.send(topic, PAYLOAD, headers=list(headers) if headers else None)
    producer.flush(60)
    produce_ns = time.perf_counter_ns() - start
    producer.close(5)

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=30000)
    consumer.assign([TopicPartition(topic, 0)])
    iterator = iter(consumer)
    next(iterator)  # the warm-up record, untimed
    get_current = otel_context.get_current
    start = time.perf_counter_ns()
    for seen, _msg in enumerate(iterator, 1):
        get_current()
        if seen == records:
            break
    consume_ns = time.perf_counter_ns() - start
    del iterator
    consumer.close()
    delete_topic(topic)
    return produce_ns, consume_ns


def one_variant(variant: str, records: int) -> dict[str, float]:
    """Run every client once under ``variant``; return µs per message per case."""
    out: dict[str, float] = {}
    header_sets: list[tuple[str, list[tuple[str, bytes]] | None]] = [("", None)]
    if variant == "plain":
        header_sets.append((", 3 static headers", STATIC_HEADERS))
    for suffix, headers in header_sets:
        out.update(per_message(
            "aiokafka" + suffix, *asyncio.run(aiokafka_run(records, headers)), records
        ))
        out.update(per_message("confluent" + suffix, *confluent_run(records, headers), records))
        out.update(per_message(
            "kafka-python" + suffix, *kafka_python_run(records, headers), records
        ))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3,000 records, 3 repeats")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant (internal)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (internal)")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats = 3000, 3

    if args.variant:
        setup(args.variant)
        print(json.dumps(one_variant(args.variant, args.records)))
        return 0

    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = run_variant_subprocess(__file__, variant, ["--records", str(args.records)])
            for case, value in out.items():
                samples.setdefault((case, variant), []).append(value)
    rows: list[dict[str, Any]] = []
    for (case, variant), values in samples.items():
        row = {"case": case, "variant": variant, **summarize(values)}
        row["throughput_per_s"] = 1e6 / row["median_us"]
        rows.append(row)
    notes = {"records": args.records, "repeats": args.repeats, "ratios": ratios(rows)}
    path = write_results("kafka", rows, notes)
    for row in rows:
        print(
            f"{row['case']:26} {row['variant']:22} {row['median_us']:8.2f} µs/msg "
            f"({row['min_us']:.2f}..{row['max_us']:.2f})"
        )
    for entry in notes["ratios"]:
        print(json.dumps(entry))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
