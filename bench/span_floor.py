"""The floors under issue 15's targets 1 and 3, measured with no hoptrace code at all.

``make bench`` compares hoptrace with its peers; this script measures what no implementation
of the same promise can avoid, in CPU time per message (user + system, every thread,
export included), on the same OTLP-encoding sink ``hop_bench.py`` uses:

``sdk_spans``
    The two SDK spans a traced hop makes (a PRODUCER ``send`` span and a CONSUMER
    ``process`` span, with only the messaging semantic conventions' attributes), started with
    ``tracer.start_span``, ended, and exported through a BatchSpanProcessor into the encoder.
    No propagation, no broker. Target 1 asks hoptrace's whole overhead with spans to be at
    most half the cheapest peer's; when half the peer's overhead is below this floor, no
    implementation that records the same two SDK spans can meet it.
``sdk_spans_sampled``
    The same two spans under ``ParentBased(TraceIdRatioBased(0.01))``, each message a new
    root: what the sampled production setup pays for spans nobody records.
``context``
    The least work that gives a handler the sender's trace context and transaction ID as
    OTel sees them: on the send side a new span ID, the ``traceparent`` and ``baggage``
    strings formatted into a header dict; on the consume side the ``traceparent`` split back
    into a ``SpanContext``, a context holding it and the baggage entry, attached and detached
    around the handler. Target 3 asks propagation-only to cost at most the static headers
    + 10 µs: this is the part of that cost no propagation can skip.

Each case runs ``--messages`` times per repetition, repetitions interleaved, in one
interpreter; the median and the spread are printed as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hop_bench

SEND_ATTRS: dict[str, Any] = {
    "messaging.system": "kafka",
    "messaging.destination.name": "orders",
    "messaging.operation.name": "send",
    "messaging.operation.type": "send",
}
PROCESS_ATTRS: dict[str, Any] = {
    "messaging.system": "kafka",
    "messaging.destination.name": "orders",
    "messaging.operation.name": "process",
    "messaging.operation.type": "process",
    "messaging.consumer.group.name": "billing",
    "messaging.destination.partition.id": "0",
    "messaging.kafka.offset": 12345,
}


def spans_case(provider: Any) -> Callable[[int], None]:
    """Two SDK spans per message, the second the first's child (as the handler's would be)."""
    from opentelemetry.trace import SpanKind, set_span_in_context

    tracer = provider.get_tracer("floor")
    start = tracer.start_span

    def run(count: int) -> None:
        for _ in range(count):
            send = start("send orders", kind=SpanKind.PRODUCER, attributes=SEND_ATTRS)
            send.end()
            process = start("process orders", context=set_span_in_context(send),
                            kind=SpanKind.CONSUMER, attributes=PROCESS_ATTRS)
            process.end()

    return run


def context_case() -> Callable[[int], None]:
    """Format the two W3C headers; parse them back into an attached context; detach."""
    from opentelemetry import baggage
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    bits = random.getrandbits
    sampled = TraceFlags(TraceFlags.SAMPLED)

    def run(count: int) -> None:
        trace_id = f"{bits(128):032x}"
        for _ in range(count):
            tx = f"{bits(128):032x}"
            headers = {"traceparent": f"00-{trace_id}-{bits(64):016x}-01",
                       "baggage": f"transaction.id={tx}"}
            _, trace_hex, span_hex, _ = headers["traceparent"].split("-")
            span = NonRecordingSpan(SpanContext(int(trace_hex, 16), int(span_hex, 16), True,
                                                sampled))
            key, _, value = headers["baggage"].partition("=")
            token = attach(baggage.set_baggage(key, value, set_span_in_context(span)))
            detach(token)

    return run


def measure(run: Callable[[int], None], count: int, provider: Any) -> float:
    """CPU µs per message for one repetition, the span export flushed inside the window."""
    gc.collect()
    cpu0 = time.process_time_ns()
    run(count)
    if provider is not None:
        provider.force_flush(30_000)
    return (time.process_time_ns() - cpu0) / count / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--case", choices=("sdk_spans", "sdk_spans_sampled", "context"),
                        required=True)
    args = parser.parse_args()
    provider = None
    if args.case == "context":
        run = context_case()
    else:
        provider = hop_bench.install_sdk(sampled=args.case == "sdk_spans_sampled")
        run = spans_case(provider)
    run(200)  # warm-up
    samples = [measure(run, args.messages, provider) for _ in range(args.repeat)]
    spans, encoded = hop_bench.Sink.totals()
    print(json.dumps({
        "case": args.case, "cpu_us": statistics.median(samples), "samples_us": samples,
        "bytes_per_span": encoded / spans if spans else None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
