"""kombu on RabbitMQ: ``Producer.publish`` and ``Consumer`` callbacks, plain and with hoptrace.

OpenTelemetry has no kombu instrumentation, so there is no ``otel`` variant here. Each
variant runs in its own interpreter; every repeat is one round over the variants, and the
figure per variant is the median over the rounds (min and max beside it).

``publish``: N ``Producer.publish`` calls (JSON body), µs per message.
``consume``: the same N messages through a ``Consumer`` callback that acks each one.

Run ``python bench/kombu_bench.py`` (``--quick`` for 2,000 messages and 3 rounds).
Needs RabbitMQ on 127.0.0.1:5672 or ``HOPTRACE_BENCH_KOMBU_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    install_dropping_sdk,
    ratios,
    run_variant_subprocess,
    summarize,
    write_results,
)

URL = os.environ.get("HOPTRACE_BENCH_KOMBU_URL", "amqp://guest:guest@127.0.0.1:5672//")
KOMBU_VARIANTS = ("plain", "hoptrace_propagation", "hoptrace_sdk")


def set_up(variant: str) -> Any:
    provider = None
    if variant == "hoptrace_sdk":
        provider = install_dropping_sdk()
    if variant.startswith("hoptrace"):
        import hoptrace
        import hoptrace.kombu

        if variant == "hoptrace_propagation":
            hoptrace.configure(propagation_only=True)
        hoptrace.kombu.instrument()
    return provider


def run_variant(variant: str, count: int) -> list[dict[str, Any]]:
    import kombu

    provider = set_up(variant)
    name = f"hoptrace-bench-{uuid.uuid4().hex[:10]}"
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct", auto_delete=True),
                        routing_key="k", queue_arguments={"x-expires": 600_000})
    received = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal received
        received += 1
        message.ack()

    def cycle(n: int) -> tuple[float, float]:
        nonlocal received
        producer = conn.Producer()
        start = time.perf_counter_ns()
        for _ in range(n):
            producer.publish({"order": 42}, exchange=queue.exchange, routing_key="k")
        publish_us = (time.perf_counter_ns() - start) / n / 1000
        received = 0
        start = time.perf_counter_ns()
        with conn.Consumer(queue, callbacks=[on_message], prefetch_count=1000):
            while received < n:
                conn.drain_events(timeout=30)
        return publish_us, (time.perf_counter_ns() - start) / n / 1000

    with kombu.Connection(URL) as conn:
        queue(conn.channel()).declare()
        try:
            cycle(min(count, 1000))
            publish_us, consume_us = cycle(count)
        finally:
            queue(conn.channel()).delete()
    if provider is not None:
        provider.shutdown()
    return [
        {"case": "kombu publish", "variant": variant, "median_us": publish_us},
        {"case": "kombu consume", "variant": variant, "median_us": consume_us},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 3 rounds")
    parser.add_argument("--variant", choices=KOMBU_VARIANTS, help="run one variant (internal)")
    parser.add_argument("--json", action="store_true", help="print rows as JSON (internal)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    count = args.messages or (2_000 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.variant:
        print(json.dumps(run_variant(args.variant, count)))
        return 0
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for variant in KOMBU_VARIANTS:
            for row in run_variant_subprocess(__file__, variant, ["--messages", str(count)]):
                samples.setdefault((row["case"], variant), []).append(row["median_us"])
    rows = []
    for (case, variant), values in samples.items():
        stats = summarize(values)
        rows.append({"case": case, "variant": variant, **stats,
                     "throughput_per_s": 1e6 / stats["median_us"], "messages": count})
    summary = ratios(rows)
    write_results("kombu", rows, {"messages": count, "repeats": repeats, "summary": summary})
    for row in rows:
        print(f"{row['case']:<14} {row['variant']:<22} median {row['median_us']:7.1f} µs/msg "
              f"(min {row['min_us']:.1f}, max {row['max_us']:.1f})")
    for entry in summary:
        print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
