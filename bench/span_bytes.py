"""Bytes per exported span, per client and span kind, and what each attribute costs in them.

Runs the real hop of ``bench/hop_bench.py`` (same clients, same brokers, same variants) for a
few messages under one variant, keeps the spans in memory, and encodes them as OTLP protobuf
the way every exporter does (``encode_spans(...).SerializeToString()``). Bytes per span are
a batch's bytes over its span count, as in ``make bench``: the resource and scope, sent once
per batch, are shared out over the batch.

    .venv/bin/python bench/span_bytes.py                   # hoptrace and OTel contrib, all clients
    .venv/bin/python bench/span_bytes.py --variant hop_fast --clients pika,aio-pika --attributes

Each variant runs in its own interpreter (instrumentations of one client do not mix).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("hop_fast", "otel")
BATCH = 50
#: What the messaging conventions (1.27+) require of these spans (Required, or Conditionally
#: Required and applicable here), plus hoptrace's transaction ID and queue wait: the floor.
REQUIRED = frozenset({
    "messaging.system", "messaging.operation.name", "messaging.operation.type",
    "messaging.destination.name", "messaging.consumer.group.name",
    "messaging.rabbitmq.destination.routing_key", "messaging.rabbitmq.message.delivery_tag",
    "error.type", "hoptrace.transaction.id", "hoptrace.queue_wait_ms",
})


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field_len(size: int) -> int:
    """Bytes a length-delimited field of ``size`` takes (one-byte tag, length, body)."""
    return 1 + _varint_len(size) + size


def _floor_bytes(encoded: Any, spans: int) -> float:
    """Bytes per span of ``encoded`` with only the :data:`REQUIRED` attributes left."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    copy = ExportTraceServiceRequest()
    copy.CopyFrom(encoded)
    for rs in copy.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                kept = [kv for kv in span.attributes if kv.key in REQUIRED]
                del span.attributes[:]
                span.attributes.extend(kept)
    return len(copy.SerializeToString()) / spans


def measure(variant: str, clients: list[str], count: int, root: bool = False) -> dict[str, Any]:
    """Run ``variant`` on ``clients``; per client and span kind: bytes per span, per attribute.

    ``root``: each message is sent inside a root span (``hoptrace.transaction`` / an OTel
    span with the business ID as baggage), as a request or a job would send it.
    """
    import hop_bench
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    scope = hop_bench.setup(variant)
    if root:
        scope = hop_bench.HoptraceTransaction if variant.startswith("hop") else hop_bench.OtelRoot
    memory = InMemorySpanExporter()
    hop_bench.Sink.provider.add_span_processor(SimpleSpanProcessor(memory))
    out: dict[str, Any] = {}
    for client in clients:
        if not hop_bench.applies(variant, client):
            continue
        memory.clear()
        hop_bench.RUNS[client](count, scope, None)
        hop_bench.Sink.provider.force_flush(30_000)
        spans = list(memory.get_finished_spans())
        by_kind: dict[str, list[Any]] = defaultdict(list)
        for span in spans:
            by_kind[span.kind.name.lower()].append(span)
        kinds: dict[str, Any] = {}
        for kind, group in sorted(by_kind.items()):
            batch = group[-BATCH:]
            encoded = encode_spans(batch)
            proto_spans = [s for rs in encoded.resource_spans for ss in rs.scope_spans
                           for s in ss.spans]
            attrs: dict[str, float] = defaultdict(float)
            example: dict[str, Any] = {}
            for proto, sdk_span in zip(proto_spans, batch, strict=True):
                for kv in proto.attributes:
                    attrs[kv.key] += _field_len(kv.ByteSize()) / len(batch)
                example.update({k: v for k, v in (sdk_span.attributes or {}).items()
                                if k not in example})
            sample = proto_spans[0]
            kinds[kind] = {
                "spans": len(group),
                "bytes_per_span": len(encoded.SerializeToString()) / len(batch),
                "floor": _floor_bytes(encoded, len(batch)),
                "span_only": sum(_field_len(s.ByteSize()) for s in proto_spans) / len(batch),
                "name": batch[0].name,
                "name_bytes": _field_len(len(batch[0].name.encode())),
                "links": sum(len(s.links) for s in proto_spans) / len(batch),
                "events": sum(len(s.events) for s in proto_spans) / len(batch),
                "attributes": dict(sorted(attrs.items(), key=lambda kv: -kv[1])),
                "attribute_bytes": sum(attrs.values()),
                "example": {k: (v if isinstance(v, (int, float, bool, str)) else str(v))
                            for k, v in example.items()},
                "fixed": _field_len(sample.ByteSize())
                - sum(_field_len(kv.ByteSize()) for kv in sample.attributes),
            }
        last = spans[-2 * BATCH:]
        total = encode_spans(last)
        out[client] = {
            "bytes_per_span": len(total.SerializeToString()) / len(last),
            "floor": _floor_bytes(total, len(last)),
            "spans_per_msg": len(spans) / count,
            "kinds": kinds,
        }
    return out


def _print(variant: str, result: dict[str, Any], show_attributes: bool) -> None:
    for client, row in result.items():
        print(f"{variant:9} {client:16} {row['bytes_per_span']:6.0f} B/span "
              f"({row['spans_per_msg']:.2f} spans/msg; required attributes only: "
              f"{row['floor']:.0f} B)")
        for kind, info in row["kinds"].items():
            print(f"    {kind:9} {info['bytes_per_span']:6.0f} B  (floor {info['floor']:.0f}; "
                  f"span {info['span_only']:.0f}: "
                  f"fixed {info['fixed']} incl. name {info['name_bytes']} "
                  f"{info['name']!r}, attributes {info['attribute_bytes']:.0f}, "
                  f"links {info['links']:.1f})")
            if show_attributes:
                for key, size in info["attributes"].items():
                    print(f"        {size:5.1f} B  {key} = {info['example'].get(key)!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, help="one variant, in this interpreter")
    parser.add_argument("--clients", default=",".join(
        ("confluent-kafka", "kafka-python", "aiokafka", "kombu", "pika", "aio-pika", "celery")))
    parser.add_argument("--count", type=int, default=60, help="messages per client")
    parser.add_argument("--attributes", action="store_true", help="each attribute's share")
    parser.add_argument("--json", action="store_true", help="one JSON line per variant")
    parser.add_argument("--root", action="store_true",
                        help="send each message inside a root span (a transaction, a request)")
    args = parser.parse_args()
    clients = args.clients.split(",")
    if args.variant:
        result = measure(args.variant, clients, args.count, args.root)
        if args.json:
            print(json.dumps({"variant": args.variant, "clients": result}))
        else:
            _print(args.variant, result, args.attributes)
        return 0
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--clients", args.clients,
               "--count", str(args.count)] + (["--attributes"] if args.attributes else []) \
            + (["--root"] if args.root else [])
        code = subprocess.call(cmd, env=dict(os.environ))
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
