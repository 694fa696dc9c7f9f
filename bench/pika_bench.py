"""pika publish and consume of 20,000 messages: plain, hoptrace, and OTel contrib, in one run.

Each variant runs in its own interpreter (instrumentations patch pika globally):

* ``plain`` — no instrumentation;
* ``hoptrace_propagation`` — ``hoptrace.pika.instrument()`` in propagation-only mode;
* ``hoptrace_sdk`` — ``hoptrace.pika.instrument()`` with an SDK whose exporter drops spans;
* ``otel`` — ``opentelemetry-instrumentation-pika`` with the same SDK;
* ``floor_sdk`` — the same SDK, no tracing logic: each publish copies the properties and adds
  four static headers inside one bare span, and each callback runs inside one bare span with a
  context attached (see ``common.py``).

``publish``: ``BlockingChannel.basic_publish`` of N messages (no confirms), µs per message.
``consume``: the same N messages through a ``basic_consume`` callback that acks each one,
µs per message from the first ``process_data_events`` to the last ack.

The plain variant also publishes and consumes with four static headers the size of
hoptrace's, to show what carrying the context costs pika itself (it encodes and decodes AMQP
header tables in pure Python).

Every repeat is one round over the four variants, each in a fresh interpreter; the figure
per variant is the median over the rounds, with min and max beside it.

Run ``python bench/pika_bench.py`` (``--quick`` for 2,000 messages and fewer repeats).
Needs RabbitMQ on 127.0.0.1:5672 (``scripts/brokers up rabbitmq``) or ``HOPTRACE_BENCH_AMQP_URL``.
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
    FLOOR_VARIANTS,
    STATIC_HEADERS,
    exported_spans,
    floor_span,
    install_dropping_sdk,
    ratios,
    run_variant_subprocess,
    summarize,
    write_results,
)

URL = os.environ.get("HOPTRACE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
def set_up(variant: str) -> Any:
    """Install the variant's instrumentation; return the SDK provider, if any."""
    provider = None
    if variant in ("hoptrace_sdk", "otel", "floor_sdk"):
        provider = install_dropping_sdk()
    if variant.startswith("hoptrace"):
        import hoptrace
        import hoptrace.pika

        if variant == "hoptrace_propagation":
            hoptrace.configure(propagation_only=True)
        hoptrace.pika.instrument()
    elif variant == "otel":
        from opentelemetry.instrumentation.pika import PikaInstrumentor

        PikaInstrumentor().instrument()
    elif variant == "floor_sdk":
        _install_floor()
    return provider


#: Wraps the consume callback (the floor variant's bare span and attached context).
_wrap_handler: Any = None


def _install_floor() -> None:
    global _wrap_handler
    from opentelemetry.context import Context
    from pika.channel import Channel

    from hoptrace.core.context import attach, detach

    original = Channel.basic_publish

    def basic_publish(self: Any, exchange: str, routing_key: str, body: Any,
                      properties: Any = None, mandatory: bool = False) -> Any:
        span = floor_span()
        copied = object.__new__(type(properties))
        copied.__dict__.update(properties.__dict__)
        copied.headers = dict(STATIC_HEADERS)
        try:
            return original(self, exchange, routing_key, body, copied, mandatory)
        finally:
            span.end()

    Channel.basic_publish = basic_publish
    context = Context({"floor": True})

    def wrap(handler: Any) -> Any:
        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            span = floor_span()
            token = attach(context)
            try:
                handler(ch, method, properties, body)
            finally:
                detach(token)
                span.end()

        return on_message

    _wrap_handler = wrap


def publish(channel: Any, queue: str, count: int, headers: dict[str, str] | None = None) -> float:
    import pika

    properties = pika.BasicProperties(content_type="application/json", delivery_mode=1,
                                      headers=headers)
    body = b'{"order": 42, "items": ["a", "b"]}'
    start = time.perf_counter_ns()
    for _ in range(count):
        channel.basic_publish("", queue, body, properties)
    return (time.perf_counter_ns() - start) / count / 1000


def consume(connection: Any, channel: Any, queue: str, count: int) -> float:
    received = 0

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal received
        received += 1
        ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(
        queue, on_message if _wrap_handler is None else _wrap_handler(on_message)
    )
    start = time.perf_counter_ns()
    deadline = time.monotonic() + 120
    while received < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.01)
    elapsed = (time.perf_counter_ns() - start) / count / 1000
    channel.basic_cancel(tag)
    if received < count:
        raise RuntimeError(f"consumed {received} of {count} messages")
    return elapsed


def run_variant(variant: str, count: int, repeats: int) -> list[dict[str, Any]]:
    import pika

    provider = set_up(variant)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    queue = f"hoptrace-bench-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(queue, arguments={"x-expires": 600_000})
    try:
        warm = min(count, 1000)
        publish(channel, queue, warm)
        consume(connection, channel, queue, warm)
        publish_us, consume_us, static_publish_us, static_consume_us = [], [], [], []
        for _ in range(repeats):
            publish_us.append(publish(channel, queue, count))
            consume_us.append(consume(connection, channel, queue, count))
            if variant == "plain":
                static_publish_us.append(publish(channel, queue, count, STATIC_HEADERS))
                static_consume_us.append(consume(connection, channel, queue, count))
    finally:
        channel.queue_delete(queue)
        connection.close()
        if provider is not None:
            provider.shutdown()
    rows = []
    cases = [("pika publish", publish_us), ("pika consume", consume_us)]
    if static_publish_us:
        cases += [("pika, 4 static headers publish", static_publish_us),
                  ("pika, 4 static headers consume", static_consume_us)]
    for case, samples in cases:
        stats = summarize(samples)
        rows.append({"case": case, "variant": variant, **stats,
                     "throughput_per_s": 1e6 / stats["median_us"], "messages": count,
                     "spans_exported": exported_spans[0]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 3 repeats")
    parser.add_argument("--variant", choices=FLOOR_VARIANTS, help="run one variant (internal)")
    parser.add_argument("--json", action="store_true", help="print rows as JSON (internal)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    count = args.messages or (2_000 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.variant:
        rows = run_variant(args.variant, count, repeats)
        print(json.dumps(rows))
        return 0
    # Rounds interleave the variants, one repeat each, so load that drifts during the run
    # (a shared 2-core machine) falls on every variant alike.
    samples: dict[tuple[str, str], list[float]] = {}
    exported: dict[str, list[int]] = {}  # per variant process: spans the exporter received
    extra = ["--messages", str(count), "--repeats", "1"]
    for _ in range(repeats):
        for variant in FLOOR_VARIANTS:
            rows_of_run = run_variant_subprocess(__file__, variant, extra)
            for row in rows_of_run:
                samples.setdefault((row["case"], variant), []).append(row["median_us"])
                if row.get("spans_exported") and row is rows_of_run[0]:
                    exported.setdefault(variant, []).append(row["spans_exported"])
    rows = []
    for (case, variant), values in samples.items():
        stats = summarize(values)
        rows.append({"case": case, "variant": variant, **stats,
                     "throughput_per_s": 1e6 / stats["median_us"], "messages": count})
    summary = ratios(rows)
    write_results("pika", rows, {"messages": count, "repeats": repeats, "summary": summary,
                                 "spans_exported_per_process": exported})
    for row in rows:
        print(f"{row['case']:<14} {row['variant']:<22} median {row['median_us']:7.1f} µs/msg "
              f"(min {row['min_us']:.1f}, max {row['max_us']:.1f})")
    for entry in summary:
        print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
