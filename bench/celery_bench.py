"""Celery on RabbitMQ: ``apply_async`` per task, plain, with hoptrace and with OTel contrib.

Variants (each in its own interpreter, since instrumentations patch Celery globally):

* ``plain`` — no instrumentation;
* ``hoptrace_propagation`` — ``hoptrace.celery`` in propagation-only mode (headers, no spans);
* ``hoptrace_sdk`` — ``hoptrace.celery`` with SDK spans (BatchSpanProcessor, spans dropped);
* ``otel`` — ``opentelemetry-instrumentation-celery`` with the same SDK setup;
* ``floor_sdk`` — the same SDK, no tracing logic: each ``send_task_message`` adds four
  static headers and runs inside one bare span (see ``common.py``).

Two cases:

* ``celery apply_async`` — ``Task.apply_async`` end to end on RabbitMQ (what users pay);
* ``celery send_task_message (stub producer)`` — Celery's message building and sending with a
  producer whose ``publish`` does nothing: the instrumentation's own cost, without the
  broker round trip whose noise (tens of µs on a shared machine) hides a few µs of overhead.
  Each instrumented variant also times the same calls with its instrumentation switched off,
  chunk by chunk in the same process; the median of those paired differences
  (``paired_stub_overhead_us``) is the steadiest overhead figure on a busy machine.

``apply_async`` is paired the same way, its on and off chunks in alternating order (the keys
ending in ``(apply_async)``). The plain variant also pairs ``apply_async`` with and without
four static headers the size of hoptrace's (``celery apply_async, 4 static headers``): what
carrying them costs Celery and its AMQP client, with no tracing code.

Every repeat is one round over the variants; within a variant the figure is the median of five
timed chunks of ``apply_async`` calls (after a warm-up); the reported figure per variant is the
median over the rounds, with min and max beside it. No worker runs: the messages wait in a
queue (Celery's default durable queue, so kombu declares it once) that is deleted at the end.

Run ``python bench/celery_bench.py`` (``--quick`` for 2,000 tasks and 3 rounds). Needs
RabbitMQ on 127.0.0.1:5672 or ``HOPTRACE_BENCH_CELERY_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

URL = os.environ.get("HOPTRACE_BENCH_CELERY_URL", "amqp://guest:guest@127.0.0.1:5672//")
CASE = "celery apply_async"
STUB_CASE = "celery send_task_message (stub producer)"
STATIC_CASE = "celery apply_async, 4 static headers"


class StubProducer:
    """A kombu producer stand-in whose publish does nothing: times Celery + instrumentation."""

    connection = None

    def publish(self, body: Any, **kwargs: Any) -> None:
        return None


def set_up(variant: str) -> Any:
    """Install the SDK and the instrumentation that ``variant`` measures."""
    provider = None
    if variant in ("hoptrace_sdk", "otel", "floor_sdk"):
        provider = install_dropping_sdk()
    if variant.startswith("hoptrace"):
        import hoptrace
        import hoptrace.celery

        if variant == "hoptrace_propagation":
            hoptrace.configure(propagation_only=True)
        hoptrace.celery.instrument()
    elif variant == "otel":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    return provider


def floor_sender(send: Any) -> Any:
    """``send_task_message`` with four static headers, inside one bare span: the floor."""

    def send_task_message(producer: Any, name: str, message: Any, *args: Any,
                          **kwargs: Any) -> Any:
        span = floor_span()
        message[0].update(STATIC_HEADERS)
        try:
            return send(producer, name, message, *args, **kwargs)
        finally:
            span.end()

    return send_task_message


def per_call_us(call: Any, count: int) -> float:
    """Call ``call`` ``count`` times; return the µs per call."""
    start = time.perf_counter_ns()
    for _ in range(count):
        call()
    return (time.perf_counter_ns() - start) / count / 1000


def result_row(
    case: str, variant: str, samples: list[float], baseline: list[float]
) -> dict[str, Any]:
    """The row of one case: the median of ``samples`` and, given a ``baseline`` timed in turn
    with them, the median of the paired differences."""
    row: dict[str, Any] = {"case": case, "variant": variant,
                           "median_us": statistics.median(samples)}
    if baseline:
        row["paired_overhead_us"] = statistics.median(
            [on - off for on, off in zip(samples, baseline, strict=True)]
        )
    return row


def toggle(variant: str, on: bool, app: Any = None) -> None:
    """Switch ``variant``'s instrumentation on or off in this process (both are reversible)."""
    if variant == "floor_sdk":
        amqp = app.amqp
        floor_on = getattr(amqp, "_floor_on", False)
        if on and not floor_on:
            amqp._plain_sender = amqp.send_task_message
            amqp.send_task_message = floor_sender(amqp._plain_sender)
        elif not on and floor_on:
            amqp.send_task_message = amqp._plain_sender
        amqp._floor_on = on
    elif variant.startswith("hoptrace"):
        import hoptrace.celery

        if on:
            hoptrace.celery.instrument()
        else:
            hoptrace.celery.uninstrument()
    elif variant == "otel":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        if on:
            CeleryInstrumentor().instrument()
        else:
            CeleryInstrumentor().uninstrument()


def run_variant(variant: str, count: int) -> list[dict[str, Any]]:
    """Time ``count`` ``apply_async`` calls under ``variant``; return one result row."""
    from celery import Celery

    provider = set_up(variant)
    name = f"hoptrace-bench-celery-{uuid.uuid4().hex[:10]}"
    app = Celery("bench", broker=URL, backend=None, set_as_current=False)
    app.conf.update(
        task_default_queue=name,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    if variant == "floor_sdk":
        toggle(variant, True, app)
    chunk = max(count // 5, 1)
    rows = []
    stub = StubProducer()
    amqp = app.amqp

    def stub_publish() -> None:
        task_id = str(uuid.uuid4())
        message = amqp.create_task_message(task_id, "bench.add", (1, 2), {})
        amqp.send_task_message(stub, "bench.add", message, queue=name, retry=False)

    def stub_chunk() -> float:
        return per_call_us(stub_publish, 5_000)

    for _ in range(2000):
        stub_publish()
    stub_chunks, paired_plain = [], []
    for _ in range(6):
        stub_chunks.append(stub_chunk())
        if variant != "plain":
            # The same process with the instrumentation switched off, chunk by chunk: the
            # paired difference cancels the drift of a shared machine.
            toggle(variant, False, app)
            paired_plain.append(stub_chunk())
            toggle(variant, True, app)
    rows.append(result_row(STUB_CASE, variant, stub_chunks, paired_plain))
    try:
        for _ in range(min(count, 1000)):  # warm up: connection, caches, declarations
            add.apply_async((1, 2))
        def apply_chunk() -> float:
            return per_call_us(lambda: add.apply_async((1, 2)), chunk)

        def static_chunk() -> float:
            return per_call_us(lambda: add.apply_async((1, 2), headers=STATIC_HEADERS), chunk)

        chunks, apply_plain, static = [], [], []
        for index in range(5):
            if variant == "plain":
                # The four static headers against none, in turn: what carrying them costs
                # Celery and its AMQP client, with no tracing code.
                if index % 2 == 0:
                    chunks.append(apply_chunk())
                    static.append(static_chunk())
                else:
                    static.append(static_chunk())
                    chunks.append(apply_chunk())
                continue
            # On and off in turn, the order alternating, so the broker's drift over the run
            # falls on both halves of each pair alike.
            order = (True, False) if index % 2 == 0 else (False, True)
            for on in order:
                toggle(variant, on, app)
                (chunks if on else apply_plain).append(apply_chunk())
            toggle(variant, True, app)
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(name)
    if provider is not None:
        provider.shutdown()
    rows.append(result_row(CASE, variant, chunks, apply_plain))
    if static:
        rows.append(result_row(STATIC_CASE, variant, static, chunks))
    for row in rows:
        row["spans_exported"] = exported_spans[0]
    return rows


def main() -> int:
    """Run every variant in its own interpreter, several rounds; write bench/results/celery.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 3 rounds")
    parser.add_argument("--variant", choices=FLOOR_VARIANTS, help="run one variant (internal)")
    parser.add_argument("--json", action="store_true", help="print rows as JSON (internal)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    count = args.messages or (2_000 if args.quick else 10_000)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.variant:
        print(json.dumps(run_variant(args.variant, count)))
        return 0
    samples: dict[tuple[str, str], list[float]] = {}
    exported: dict[str, list[int]] = {}  # per variant process: spans the exporter received
    paired: dict[str, list[float]] = {}
    for _ in range(repeats):
        for variant in FLOOR_VARIANTS:
            rows_of_run = run_variant_subprocess(__file__, variant, ["--messages", str(count)])
            for row in rows_of_run:
                samples.setdefault((row["case"], variant), []).append(row["median_us"])
                if row.get("spans_exported") and row is rows_of_run[0]:
                    exported.setdefault(variant, []).append(row["spans_exported"])
                if "paired_overhead_us" in row:
                    key = {STUB_CASE: variant, CASE: f"{variant} (apply_async)"}.get(
                        row["case"], "4 static headers (apply_async)")
                    paired.setdefault(key, []).append(row["paired_overhead_us"])
    paired_overhead = {v: statistics.median(values) for v, values in paired.items()}
    rows = []
    for (case, variant), values in samples.items():
        stats = summarize(values)
        rows.append({"case": case, "variant": variant, **stats,
                     "throughput_per_s": 1e6 / stats["median_us"], "messages": count})
    summary = ratios(rows)
    targets = {}
    for entry in summary:
        sdk_ratio = entry.get("hoptrace_sdk_vs_otel_overhead")
        targets[f"{entry['case']}: hoptrace_sdk_overhead<=0.25x_otel"] = (
            sdk_ratio is not None and sdk_ratio <= 0.25
        )
        targets[f"{entry['case']}: propagation_only_overhead_us<=5"] = (
            entry.get("hoptrace_propagation_overhead_us", 1e9) <= 5
        )
    if "otel" in paired_overhead and paired_overhead["otel"] > 0:
        targets["paired stub: hoptrace_sdk_overhead<=0.25x_otel"] = (
            paired_overhead.get("hoptrace_sdk", 1e9) <= 0.25 * paired_overhead["otel"]
        )
    for suffix in ("", " (apply_async)"):
        otel = paired_overhead.get("otel" + suffix, 0)
        if otel <= 0:
            continue
        for variant in ("hoptrace_sdk", "floor_sdk"):
            if variant + suffix in paired_overhead:
                paired_overhead[f"{variant}{suffix} / otel"] = (
                    paired_overhead[variant + suffix] / otel
                )
    targets["paired apply_async: propagation_only_overhead_us<=5"] = (
        paired_overhead.get("hoptrace_propagation (apply_async)", 1e9) <= 5
    )
    if paired_overhead.get("otel (apply_async)", 0) > 0:
        targets["paired apply_async: hoptrace_sdk_overhead<=0.25x_otel"] = (
            paired_overhead.get("hoptrace_sdk (apply_async)", 1e9)
            <= 0.25 * paired_overhead["otel (apply_async)"]
        )
    targets["paired stub: propagation_only_overhead_us<=5"] = (
        paired_overhead.get("hoptrace_propagation", 1e9) <= 5
    )
    write_results("celery", rows, {"messages": count, "repeats": repeats, "summary": summary,
                                   "spans_exported_per_process": exported,
                                   "paired_stub_overhead_us": paired_overhead,
                                   "targets": targets})
    for row in rows:
        print(f"{row['case']:<42} {row['variant']:<22} median {row['median_us']:7.1f} µs/task "
              f"(min {row['min_us']:.1f}, max {row['max_us']:.1f})")
    for entry in summary:
        print(json.dumps(entry))
    print("paired stub overhead µs:", json.dumps(paired_overhead))
    print(json.dumps(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
