"""Run every benchmark (``bench/*_bench.py``) and print one table with the ratios.

``make bench`` calls this after ``scripts/brokers up``. Each script writes
``bench/results/<name>.json``; this collects them into ``bench/results/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS, ratios

HERE = Path(__file__).resolve().parent


def fmt(value: object, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def throughputs(entry: dict[str, object]) -> str:
    pair = (entry.get("hoptrace_propagation_throughput_ratio"),
            entry.get("hoptrace_sdk_throughput_ratio"))
    if pair == (None, None):
        return "-"
    return f"{fmt(pair[0], '.2f')}, {fmt(pair[1], '.2f')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument(
        "--summary-only", action="store_true", help="only rebuild the table from bench/results"
    )
    parser.add_argument("only", nargs="*", help="names of benchmarks to run (default: all)")
    args = parser.parse_args()
    scripts = [] if args.summary_only else sorted(HERE.glob("*_bench.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removesuffix("_bench") in args.only]
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, cwd=HERE).returncode != 0:
            failed.append(script.stem)
    lines = [
        "| case | plain µs/msg | hoptrace propagation-only overhead µs "
        "| hoptrace spans overhead µs | OTel contrib overhead µs "
        "| hoptrace spans / OTel overhead | SDK span floor / OTel overhead "
        "| throughput / plain: propagation-only, spans |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:
            continue
        for entry in ratios(data["rows"]):
            lines.append(
                f"| {entry['case']} | {fmt(entry['plain_us'])} "
                f"| {fmt(entry.get('hoptrace_propagation_overhead_us'))} "
                f"| {fmt(entry.get('hoptrace_sdk_overhead_us'))} "
                f"| {fmt(entry.get('otel_overhead_us'))} "
                f"| {fmt(entry.get('hoptrace_sdk_vs_otel_overhead'), '.2f')} "
                f"| {fmt(entry.get('floor_sdk_vs_otel_overhead'), '.2f')} "
                f"| {throughputs(entry)} |"
            )
    summary = "\n".join(lines) + "\n"
    (RESULTS / "summary.md").write_text(summary)
    print(summary)
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
