"""How fast ``hoptrace view`` / ``stats`` load a big span file (1,000,000 spans; --quick: 100,000).

The file is generated here: 5-span traces shaped like hoptrace's own export (HTTP root,
send, process with queue wait, send, process), one JSON object per line. Cases:

* ``read spans`` — parse every line into span records (what every command does first);
* ``read + group + edge stats`` — the work of ``hoptrace stats`` before printing;
* ``hoptrace stats --json (process)`` — the whole command, as a user runs it.

Variant ``plain`` is the floor: only ``json.loads`` of every line. Results go to
``bench/results/view.json`` (µs per span; ``total_s`` is the whole file).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results

SERVICES = ("web", "worker", "billing")


def generate(path: Path, spans: int, seed: int = 7) -> None:
    """Write ``spans`` spans (5 per trace) in hoptrace's JSONL format to ``path``."""
    rng = random.Random(seed)
    base = 1_700_000_000_000_000_000
    with open(path, "w", encoding="utf-8") as out:
        for n in range(spans // 5):
            trace_id = f"{rng.getrandbits(128):032x}"
            tx = f"{rng.getrandbits(128):032x}"
            ids = [f"{rng.getrandbits(64):016x}" for _ in range(5)]
            t0 = base + n * 1_000_000
            wait1 = rng.randint(1_000_000, 50_000_000)
            wait2 = rng.randint(1_000_000, 200_000_000)
            rows = [
                ("POST /checkout", "SERVER", "web", None, t0, t0 + 2_000_000, {}),
                ("send celery", "PRODUCER", "web", ids[0], t0 + 100_000, t0 + 200_000,
                 {"messaging.destination.name": "celery"}),
                ("process celery", "CONSUMER", "worker", ids[1], t0 + 200_000 + wait1,
                 t0 + 5_000_000 + wait1,
                 {"messaging.destination.name": "celery", "hoptrace.queue_wait_ms": wait1 / 1e6}),
                ("send orders", "PRODUCER", "worker", ids[2], t0 + 1_000_000 + wait1,
                 t0 + 1_100_000 + wait1, {"messaging.destination.name": "orders"}),
                ("process orders", "CONSUMER", "billing", ids[3], t0 + 1_100_000 + wait1 + wait2,
                 t0 + 3_000_000 + wait1 + wait2,
                 {"messaging.destination.name": "orders", "hoptrace.queue_wait_ms": wait2 / 1e6}),
            ]
            for i, (name, kind, service, parent, start, end, attrs) in enumerate(rows):
                attrs = {
                    **attrs,
                    "hoptrace.transaction.id": tx,
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "process" if kind == "CONSUMER" else "send",
                }
                record = {
                    "trace_id": trace_id, "span_id": ids[i], "parent_span_id": parent,
                    "name": name, "kind": kind, "start_ns": start, "end_ns": end,
                    "status": "ERROR" if (kind == "CONSUMER" and n % 50 == 0) else "UNSET",
                    "service": service, "attributes": attrs,
                }
                out.write(json.dumps(record, separators=(",", ":")) + "\n")


def measure(path: Path, case: str, spans: int) -> float:
    """Return the seconds one run of ``case`` takes over the file."""
    from hoptrace.cli.analysis import edge_stats
    from hoptrace.cli.spanfile import group_traces, paused_gc, read_spans

    start = time.perf_counter()
    if case == "plain":
        loads = json.loads
        with open(path, "rb") as stream:
            for line in stream:
                loads(line)
    elif case == "read spans":
        assert len(read_spans(path)) == spans
    elif case == "read + group + edge stats":
        records = read_spans(path)
        with paused_gc():  # as the stats command does
            group_traces(records)
            edge_stats(records)
    elif case == "hoptrace stats --json (process)":
        subprocess.run(
            [sys.executable, "-m", "hoptrace.cli", "stats", str(path), "--json"],
            check=True, capture_output=True,
        )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100,000 spans, fewer repeats")
    parser.add_argument("--spans", type=int, default=None)
    args = parser.parse_args()
    spans = args.spans or (100_000 if args.quick else 1_000_000)
    repeats = 2 if args.quick else 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spans.jsonl"
        generate(path, spans)
        size_mb = os.path.getsize(path) / 1e6
        print(f"{spans} spans, {size_mb:.0f} MB", flush=True)
        for case in ("plain", "read spans", "read + group + edge stats",
                     "hoptrace stats --json (process)"):
            samples = [measure(path, case, spans) for _ in range(repeats)]
            total = statistics.median(samples)
            row = {
                "case": f"load {spans} spans" if case == "plain" else f"{case}, {spans} spans",
                "variant": "plain" if case == "plain" else "hoptrace",
                "median_us": total / spans * 1e6,
                "min_us": min(samples) / spans * 1e6,
                "max_us": max(samples) / spans * 1e6,
                "repeats": repeats,
                "total_s": total,
                "throughput_per_s": spans / total,
            }
            rows.append(row)
            print(f"{case:36s} {total:7.2f} s  ({row['median_us']:.2f} µs/span, "
                  f"min {min(samples):.2f} s, max {max(samples):.2f} s)", flush=True)
    write_results("view", rows, {"spans": spans, "file_mb": round(size_mb), "json": "orjson"
                                 if _has_orjson() else "json"})
    return 0


def _has_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
