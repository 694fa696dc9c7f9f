"""FastStream over Kafka: plain, hoptrace's middleware, FastStream's telemetry middleware.

Each repeat runs every variant once, round-robin, each in a fresh interpreter. In one run a
FastStream ``KafkaBroker`` publishes N messages to a new topic (``no_confirm=True``, so the
broker pipelines them) and its subscriber handles them, looking at the current context as a
handler's logging would. Reported per message: the publish calls, and publish until the last
message was handled. Variants:

* ``plain`` — FastStream, no middleware;
* ``noop_middleware`` — FastStream with one middleware that does nothing (FastStream's own
  ``BaseMiddleware``): what any middleware costs before it does anything;
* ``hoptrace_propagation`` — ``HoptraceMiddleware`` in propagation-only mode (no spans);
* ``hoptrace_sdk`` — ``HoptraceMiddleware`` with SDK spans (BatchSpanProcessor, dropped);
* ``otel`` — FastStream's own ``KafkaTelemetryMiddleware`` with the same SDK setup.

    python bench/faststream_bench.py            # 3,000 messages, 3 repeats
    python bench/faststream_bench.py --quick    # 1,000 messages, 2 repeats
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

from common import VARIANTS as COMMON_VARIANTS
from common import install_dropping_sdk, ratios, run_variant_subprocess, summarize, write_results

VARIANTS = (*COMMON_VARIANTS, "noop_middleware")

BOOTSTRAP = os.environ.get("HOPTRACE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PAYLOAD = b"x" * 100


def middlewares(variant: str) -> list[Any]:
    """Install the variant's SDK and settings; return the broker's middlewares."""
    if variant == "plain":
        return []
    if variant == "noop_middleware":
        from faststream import BaseMiddleware

        return [BaseMiddleware]
    if variant == "otel":
        install_dropping_sdk()
        from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

        return [KafkaTelemetryMiddleware()]
    import hoptrace
    from hoptrace.faststream import HoptraceMiddleware

    if variant == "hoptrace_propagation":
        hoptrace.configure(propagation_only=True)
    else:
        install_dropping_sdk()
    return [HoptraceMiddleware()]


async def one_run(variant: str, messages: int) -> dict[str, float]:
    """Publish and handle ``messages`` messages; return µs per message per case."""
    from faststream.kafka import KafkaBroker, TopicPartition
    from opentelemetry import context as otel_context

    topic = f"hoptrace-bench-fs-{uuid.uuid4().hex[:10]}"
    broker = KafkaBroker(BOOTSTRAP, middlewares=middlewares(variant), logger=None)
    handled = [0]
    done = asyncio.Event()
    get_current = otel_context.get_current

    # Assigned, not subscribed: no consumer-group rebalance to wait for.
    @broker.subscriber(partitions=[TopicPartition(topic, 0)], auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        get_current()  # what a handler's logging does: look at the current context
        handled[0] += 1
        if handled[0] == messages + 1:
            done.set()

    async with broker:
        await broker.connect()
        await broker.publish(PAYLOAD, topic)  # creates the topic; the warm-up message
        await broker.start()
        while handled[0] < 1:
            await asyncio.sleep(0.01)
        start = time.perf_counter_ns()
        for _ in range(messages):
            await broker.publish(PAYLOAD, topic, no_confirm=True)
        published = time.perf_counter_ns()
        await asyncio.wait_for(done.wait(), 120)
        end = time.perf_counter_ns()
    from confluent_kafka.admin import AdminClient

    try:
        for future in AdminClient({"bootstrap.servers": BOOTSTRAP}).delete_topics([topic]).values():
            future.result(10)
    except Exception:
        pass
    return {
        "faststream kafka publish": (published - start) / messages / 1000,
        "faststream kafka publish+handle": (end - start) / messages / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 messages, 2 repeats")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant (internal)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (internal)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeats = 1000, 2

    if args.variant:
        print(json.dumps(asyncio.run(one_run(args.variant, args.messages))))
        return 0

    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = run_variant_subprocess(__file__, variant, ["--messages", str(args.messages)])
            for case, value in out.items():
                samples.setdefault((case, variant), []).append(value)
    rows: list[dict[str, Any]] = []
    for (case, variant), values in samples.items():
        row = {"case": case, "variant": variant, **summarize(values)}
        row["throughput_per_s"] = 1e6 / row["median_us"]
        rows.append(row)
    notes = {
        "messages": args.messages, "repeats": args.repeats, "ratios": ratios(rows),
        "otel_variant": "FastStream's KafkaTelemetryMiddleware (its own OpenTelemetry)",
        "noop_middleware_variant": "FastStream's BaseMiddleware, which does nothing",
    }
    path = write_results("faststream", rows, notes)
    for row in rows:
        print(
            f"{row['case']:32} {row['variant']:22} {row['median_us']:8.2f} µs/msg "
            f"({row['min_us']:.2f}..{row['max_us']:.2f})"
        )
    for entry in notes["ratios"]:
        print(json.dumps(entry))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
