"""Shared pieces of the benchmark harness: the span-dropping SDK, timing, result files.

Every benchmark script (``bench/*_bench.py``) measures the same case under several variants
in one run and writes ``bench/results/<name>.json`` through :func:`write_results`:

* ``plain`` — no instrumentation;
* ``hoptrace_propagation`` — hoptrace in propagation-only mode (no spans);
* ``hoptrace_sdk`` — hoptrace with SDK spans (BatchSpanProcessor, exporter drops spans);
* ``otel`` — the OTel contrib instrumentation with the same SDK setup;
* ``floor_sdk`` (Celery and pika) — no tracing logic at all: each message gets one span from
  the cheapest SDK span start there is (hoptrace's lean recorder, no attributes) and four
  static headers the size of hoptrace's. No instrumentation that makes the span per hop these
  integrations require can cost less; its overhead over OTel's bounds the ratio from below.

The SDK setup is a BatchSpanProcessor whose exporter counts and drops spans, with a queue
large enough that no span is ever dropped and a 100 ms schedule delay. With the defaults
(2,048 spans, 5 s), opentelemetry-sdk 1.45 can miss a wake-up and sleep for the full delay
(opentelemetry-python#5400); the queue then overflows, and each dropped span costs a logged
warning, which would be measured in every variant alike.

Variants that patch a client library globally run in their own subprocess (see
:func:`run_variant_subprocess`), so one variant's patches never leak into another's figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("plain", "hoptrace_propagation", "hoptrace_sdk", "otel")
#: VARIANTS plus the SDK span floor, for the benchmarks that measure it.
FLOOR_VARIANTS = (*VARIANTS, "floor_sdk")
#: The four headers hoptrace writes on a message, with values of the real sizes.
STATIC_HEADERS = {
    "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    "x-transaction-id": "c" * 32,
    "baggage": "transaction.id=" + "c" * 32,
    "x-hoptrace-sent-ns": "1" * 19,
}
#: Spans the exporter of :func:`install_dropping_sdk` received (checked against drops).
exported_spans = [0]


def install_dropping_sdk() -> Any:
    """Install a global SDK tracer provider whose exporter drops every span; return it."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            exported_spans[0] += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(DropExporter(), max_queue_size=1_000_000, schedule_delay_millis=100)
    )
    trace.set_tracer_provider(provider)
    return provider


def floor_span() -> Any:
    """Start the cheapest SDK span there is: hoptrace's lean recorder, no attributes."""
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    from hoptrace.core.spans import start_span

    return start_span("send", Context(), SpanKind.PRODUCER, {})


def summarize(samples_us: Sequence[float]) -> dict[str, float]:
    """Return the median, min and max of per-message microsecond samples."""
    return {
        "median_us": statistics.median(samples_us),
        "min_us": min(samples_us),
        "max_us": max(samples_us),
        "repeats": len(samples_us),
    }


def run_variant_subprocess(script: str, variant: str, extra: Sequence[str] = ()) -> Any:
    """Run ``script --variant VARIANT --json`` in a fresh interpreter; return its JSON output."""
    out = subprocess.run(
        [sys.executable, script, "--variant", variant, "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(
    name: str, rows: list[dict[str, Any]], notes: dict[str, Any] | None = None
) -> Path:
    """Write ``rows`` (one per case and variant) to ``bench/results/<name>.json``.

    A row: ``{"case": "pika publish", "variant": "plain", "median_us": …, "min_us": …,
    "max_us": …, "repeats": …, "throughput_per_s": …}``.
    """
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"name": name, "rows": rows, "notes": notes or {}}, indent=2) + "\n")
    return path


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: overhead of each variant over plain, and hoptrace's overhead / OTel's."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["variant"]] = row
    out = []
    for case, variants in by_case.items():
        plain = variants.get("plain")
        if plain is None:
            continue
        base = plain["median_us"]
        entry: dict[str, Any] = {"case": case, "plain_us": base}
        for variant in FLOOR_VARIANTS[1:]:
            if variant in variants:
                entry[f"{variant}_overhead_us"] = variants[variant]["median_us"] - base
                entry[f"{variant}_throughput_ratio"] = base / variants[variant]["median_us"]
        otel = entry.get("otel_overhead_us")
        if otel and otel > 0:
            for variant in ("hoptrace_propagation", "hoptrace_sdk", "floor_sdk"):
                if f"{variant}_overhead_us" in entry:
                    entry[f"{variant}_vs_otel_overhead"] = entry[f"{variant}_overhead_us"] / otel
        out.append(entry)
    return out
