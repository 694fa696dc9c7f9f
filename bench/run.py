"""``make bench``: every variant per client side by side, then the kept targets; one table.

Stages (all by default; name some to run only those):

* ``hop`` — ``bench/hop_bench.py``: per client (confluent-kafka, kafka-python, aiokafka,
  kombu, pika, aio-pika, celery), produce + consume under every variant, each variant in its
  own interpreter, the variants interleaved (the order rotates every repetition), five
  repetitions; the median per message and the spread, in CPU time (user + system, every
  thread of the process, span export included: the targets and the main table) and in wall
  time (a second table). Before the repetitions, one short
  propagation-only run reads the headers hoptrace actually wrote on each client; the
  ``static`` variant then sends exactly those header bytes, as constants.
* ``core`` — ``bench/core_bench.py``: hoptrace's inject + extract round trip beside OTel's
  ``propagate`` round trip.
* ``soak`` — ``bench/soak_bench.py``: RSS growth over 100,000 messages per consumer.
* ``metrics`` — ``bench/metrics_bench.py``: metrics on, over spans alone.
* ``instructions`` — ``bench/callgrind_cases.py`` and ``bench/callgrind_amqp.py`` under
  valgrind's callgrind: instructions per message of every client's produce and consume
  paths (the client's own calls replaced by no-op stand-ins), plain (sending the static
  headers) and propagation-only, and on confluent-kafka the 1% sampled setup too; each
  client's propagation-only cases are also timed, for its instructions per µs. Unlike time,
  these counts do not move with the machine's load, so target 3 (every client) and target 2
  (confluent-kafka) get a second, repeatable reading. Skipped, with a message, where
  valgrind is not installed.
* ``peers`` — ``bench/callgrind_peers.py`` under callgrind: target 1 in instructions, every
  span encoded in the foreground (OTLP; ddtrace its own msgpack): on every client, hoptrace
  with spans, each peer that instruments it (OTel contrib, ddtrace), and the floor (the same
  two SDK spans with no hoptrace code; on confluent-kafka also with the attributes
  hoptrace's promise adds). Also skipped without valgrind.

Writes ``bench/results/hop.json`` and ``bench/results/summary.md``, prints the table and,
for each target of issue 15, met or not with the figure.

    python bench/run.py                # the full run (50-70 minutes on 2 busy cores)
    python bench/run.py peers          # target 1 in instructions alone (25 minutes)
    python bench/run.py --quick        # fewer messages, 3 repetitions, soak of 20,000
    python bench/run.py hop --clients pika,kombu --variants plain,static,hop_prop
    python bench/run.py --summary-only # rebuild the table from bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from hop_bench import CLIENTS, VARIANTS, applies  # noqa: E402

STAGES = ("hop", "core", "soak", "metrics", "instructions", "peers")
TIMES = "\u00d7"  # the multiplication sign of the ratios
NONE = "\u2013"  # an en dash: nothing to measure
#: Messages per client and run: each client's run lasts a second or two on a quiet 2-core
#: machine. Five interleaved repetitions of short runs resist a busy machine better than
#: fewer long ones. The AMQP clients get more: their CPU time per message also moves with how
#: the broker batches deliveries, which evens out over more messages.
COUNTS = {"confluent-kafka": 2000, "kafka-python": 800, "aiokafka": 1000, "kombu": 1200,
          "pika": 1200, "aio-pika": 1200, "celery": 400}
QUICK_COUNTS = {client: max(200, n // 4) for client, n in COUNTS.items()}
#: Column titles of the table, in order.
TITLES = {
    "plain": "plain µs/msg",
    "static": "static headers",
    "hop_prop": "hoptrace prop-only",
    "hop_fast": "hoptrace spans",
    "hop_exact": "hoptrace spans, fast_spans=False",
    "otel": "OTel contrib",
    "ddtrace": "ddtrace",
    "s_hop_prop": "1%: hoptrace prop-only",
    "s_hop_fast": "1%: hoptrace spans",
    "s_hop_exact": "1%: hoptrace, fast_spans=False",
    "s_otel": "1%: OTel contrib",
    "s_ddtrace": "1%: ddtrace",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_dd_agent() -> tuple[subprocess.Popen[bytes], str]:
    """Start the stub Datadog agent in its own process; return it and its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "dd_agent_stub.py"), str(port)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # "listening on ..."
    return proc, f"http://127.0.0.1:{port}"


def variant_env(variant: str, agent_url: str) -> dict[str, str]:
    # No DD_*, OTEL_* or hoptrace setting from the caller's shell may change a variant; the
    # broker addresses (and HOPTRACE_PURE_PYTHON, a build choice) stay.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DD_", "OTEL_", "HOPTRACE_"))
           or k.endswith(("_URL", "_BOOTSTRAP")) or k == "HOPTRACE_PURE_PYTHON"}
    env["PYTHONHASHSEED"] = "0"
    if variant.removeprefix("s_") == "ddtrace":
        env.update({
            "DD_TRACE_AGENT_URL": agent_url,
            "DD_SERVICE": "bench",
            # Without it ddtrace writes no header on Kafka records (its default).
            "DD_KAFKA_PROPAGATION_ENABLED": "true",
            # The stub agent answers only traces: no telemetry, no remote configuration.
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        })
        if variant.startswith("s_"):
            env["DD_TRACE_SAMPLING_RULES"] = '[{"sample_rate": 0.01}]'
    return env


def run_hop_variant(variant: str, clients: list[str], counts: dict[str, int],
                    static: dict[str, dict[str, str]], agent_url: str) -> dict[str, Any]:
    todo = [c for c in clients if applies(variant, c)]
    if not todo:
        return {}
    cmd = [sys.executable, str(HERE / "hop_bench.py"), "--variant", variant,
           "--counts", ",".join(f"{c}={counts[c]}" for c in todo),
           "--static", json.dumps(static)]
    for attempt in (1, 2):  # once more after a failure: a broker hiccup, a file mid-edit
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=variant_env(variant, agent_url), timeout=900)
        if out.returncode == 0:
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"   {variant}: attempt {attempt} exited with {out.returncode}:\n"
              f"{out.stderr[-3000:]}{out.stdout[-500:]}", file=sys.stderr, flush=True)
    raise RuntimeError(f"{variant} failed twice")


def hop_stage(clients: list[str], variants: list[str], counts: dict[str, int],
              repeats: int) -> dict[str, Any]:
    """Run every variant on every client, interleaved; return hop.json's content."""
    agent, agent_url = start_dd_agent()
    started = time.time()
    try:
        print("== hop: probing the headers hoptrace writes", flush=True)
        probe = run_hop_variant("hop_prop", clients, {c: 200 for c in clients}, {}, agent_url)
        static = {client: probe[client]["headers"] for client in probe}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        failed: list[str] = []
        for rep in range(repeats):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for variant in order:
                t0 = time.time()
                try:
                    result = run_hop_variant(variant, clients, counts, static, agent_url)
                except Exception as exc:  # one broken variant must not lose the rest
                    print(f"   {variant}: {exc}", file=sys.stderr, flush=True)
                    failed.append(f"{variant} (repetition {rep + 1})")
                    continue
                for client, row in result.items():
                    samples.setdefault(client, {}).setdefault(variant, []).append(row)
                print(f"   repetition {rep + 1}/{repeats} {variant:12} {time.time() - t0:5.1f} s",
                      flush=True)
    finally:
        agent.terminate()
        agent.wait(10)
    table: dict[str, dict[str, Any]] = {}
    for client in clients:
        for variant, rows in samples.get(client, {}).items():
            totals = [r["total_us"] for r in rows]
            cpu = [r["cpu_us"] for r in rows]
            spans = sum(r["spans"] for r in rows)
            table.setdefault(client, {})[variant] = {
                "cpu_median_us": statistics.median(cpu),
                "cpu_min_us": min(cpu),
                "cpu_max_us": max(cpu),
                "cpu_samples_us": [round(x, 2) for x in cpu],
                "cpu_produce_us": statistics.median(r["produce_cpu_us"] for r in rows),
                "cpu_consume_us": statistics.median(r["consume_cpu_us"] for r in rows),
                "median_us": statistics.median(totals),
                "min_us": min(totals),
                "max_us": max(totals),
                "samples_us": [round(x, 2) for x in totals],
                "produce_us": statistics.median(r["produce_us"] for r in rows),
                "consume_us": statistics.median(r["consume_us"] for r in rows),
                "repeats": len(rows),
                "spans_per_msg": spans / sum(r["messages"] for r in rows),
                "bytes_per_span": (sum(r["bytes"] for r in rows) / spans) if spans else None,
                "headers": rows[-1]["headers"],
            }
    return {"counts": counts, "repeats": repeats, "static_headers": static, "table": table,
            "floors": floors(repeats), "bytes_floors": bytes_floors(clients), "failed": failed,
            "seconds": round(time.time() - started), "machine": machine()}


FLOOR_CASES = ("sdk_spans", "sdk_spans_sampled", "context")


def floors(repeats: int) -> dict[str, Any]:
    """bench/span_floor.py's cases: the CPU cost no implementation of the same work avoids."""
    out: dict[str, Any] = {}
    for case in FLOOR_CASES:
        cmd = [sys.executable, str(HERE / "span_floor.py"), "--case", case,
               "--repeat", str(max(repeats, 3))]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"   floor {case} failed:\n{done.stderr[-2000:]}", file=sys.stderr, flush=True)
            continue
        out[case] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"   floor {case:18} {out[case]['cpu_us']:7.1f} µs/msg", flush=True)
    return out


def bytes_floors(clients: list[str]) -> dict[str, float]:
    """Per client, the bytes per hoptrace span beyond what must be there (span_bytes.py).

    What must be there: the messaging conventions' Required attributes (and Conditionally
    Required ones that apply), plus the transaction ID and the queue wait. A hoptrace span
    less these bytes is target 5's floor.
    """
    cmd = [sys.executable, str(HERE / "span_bytes.py"), "--variant", "hop_fast", "--json",
           "--clients", ",".join(clients)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=variant_env("hop_fast", ""))
    if done.returncode != 0:
        print(f"   bytes floor failed:\n{done.stderr[-2000:]}", file=sys.stderr, flush=True)
        return {}
    rows = json.loads(done.stdout.strip().splitlines()[-1])["clients"]
    # What the other attributes add, in that run's batches; the hop stage's batches share the
    # resource out over more spans, so the floor is its figure minus these bytes.
    return {client: float(row["bytes_per_span"] - row["floor"]) for client, row in rows.items()}


def floor_us(hop: dict[str, Any], case: str) -> float | None:
    found = hop.get("floors", {}).get(case)
    return float(found["cpu_us"]) if found else None


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in load]}


# --------------------------------------------------------------------------------------------
# Figures and targets


#: The two measures of a hop. ``cpu``: CPU time (user + system, every thread of the process
#: running the variant, span export included), the main table and the targets; ``wall``: wall
#: time, which also counts waiting for the broker and whatever else the two cores run.
MEASURES = ("cpu", "wall")
MEASURE_TITLES = {"cpu": "CPU time", "wall": "wall time"}


def _key(measure: str, stat: str) -> str:
    return f"cpu_{stat}_us" if measure == "cpu" else f"{stat}_us"


def measures_of(hop: dict[str, Any]) -> list[str]:
    """The measures a hop.json holds (one written before the CPU measure has only wall)."""
    rows = [row for variants in hop["table"].values() for row in variants.values()]
    return list(MEASURES) if rows and all("cpu_median_us" in r for r in rows) else ["wall"]


def overheads(table: dict[str, Any], measure: str = "cpu") -> dict[str, dict[str, float]]:
    """Per client and variant: median µs per message over plain's median."""
    out: dict[str, dict[str, float]] = {}
    median = _key(measure, "median")
    for client, variants in table.items():
        plain = variants.get("plain")
        if plain is None:
            continue
        out[client] = {v: row[median] - plain[median] for v, row in variants.items()
                       if v != "plain"}
    return out


def spread(rows: dict[str, Any], variant: str, measure: str) -> tuple[float, float]:
    """A variant's lowest and highest figure minus plain's median: its overhead's spread."""
    base = rows["plain"][_key(measure, "median")]
    row = rows[variant]
    return row[_key(measure, "min")] - base, row[_key(measure, "max")] - base


def fmt(value: float | None, spec: str = ".1f") -> str:
    return NONE if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def cheapest_peer(o: dict[str, float]) -> tuple[str, float] | None:
    peers = [(p, o[p]) for p in ("otel", "ddtrace") if p in o]
    return min(peers, key=lambda item: item[1]) if peers else None


def _overhead_cell(table: dict[str, Any], client: str, variant: str, measure: str) -> str:
    row = table[client].get(variant)
    if row is None:
        return NONE
    median = _key(measure, "median")
    base = table[client]["plain"][median]
    if variant == "plain":  # absolute, with its own spread: the noise every overhead carries
        return (f"{base:.1f} ({row[_key(measure, 'min')]:.0f}.."
                f"{row[_key(measure, 'max')]:.0f})")
    low, high = spread(table[client], variant, measure)
    return f"{row[median] - base:.1f} ({low:.0f}..{high:.0f})"


def _bytes_cell(row: dict[str, Any] | None) -> str:
    if row is None or not row["spans_per_msg"] or not row["bytes_per_span"]:
        return NONE
    per_span, spans = row["bytes_per_span"], row["spans_per_msg"]
    return f"{per_span:.0f} B {TIMES} {spans:.2f} = {per_span * spans:.0f} B/msg"


SPANLESS = ("plain", "static", "hop_prop", "s_hop_prop")


def relative_spreads(table: dict[str, Any], measure: str) -> list[float]:
    """(max - min) / median of every cell: how far a figure moves between repetitions."""
    out = []
    for variants in table.values():
        for row in variants.values():
            median = row[_key(measure, "median")]
            if median > 0 and row.get("repeats", 0) > 1:
                out.append((row[_key(measure, "max")] - row[_key(measure, "min")]) / median)
    return out


def noise_line(table: dict[str, Any], measures: list[str]) -> str:
    parts = []
    for measure in measures:
        spreads = relative_spreads(table, measure)
        if spreads:
            parts.append(f"{MEASURE_TITLES[measure]} {statistics.median(spreads) * 100:.0f}% "
                         f"(worst {max(spreads) * 100:.0f}%)")
    return ("Noise: a cell's spread (highest minus lowest repetition) over its median, median "
            "of all cells: " + ", ".join(parts) + ".")


def _overhead_table(hop: dict[str, Any], clients: list[str], variants: list[str],
                    measure: str) -> list[str]:
    table = hop["table"]
    over = overheads(table, measure)
    lines = [
        "| client | " + " | ".join(TITLES[v] for v in variants) + " | hoptrace / peer |",
        "|---|" + "---|" * (len(variants) + 1),
    ]
    for client in clients:
        peer = cheapest_peer(over[client])
        r = ratio(over[client].get("hop_fast"), peer[1]) if peer else None
        cells = [_overhead_cell(table, client, v, measure) for v in variants]
        last = NONE if r is None else f"{r:.2f}{TIMES}"
        lines.append(f"| {client} | " + " | ".join(cells) + f" | {last} |")
    return lines


def table_markdown(hop: dict[str, Any]) -> list[str]:
    """The CPU and wall overhead tables, bytes per span and the headers on the wire."""
    table = hop["table"]
    measures = measures_of(hop)
    clients = [c for c in CLIENTS if c in table and "plain" in table[c]]
    variants = [v for v in TITLES if any(v in table[c] for c in clients)]
    lines: list[str] = []
    for measure in measures:
        if measure == "cpu":
            lines += [
                "CPU time per message (produce + consume) over plain, µs: user + system time "
                "of every thread of the process doing the work (client threads, span export "
                "and encoding included), median of "
                f"{hop['repeats']} interleaved repetitions. Plain: its median (lowest..highest"
                "); other columns: the overhead over plain's median (the variant's lowest..highest"
                " minus plain's median). The targets below read this table. Last column: "
                "hoptrace spans (`fast_spans=True`) over the cheapest peer.",
                "",
            ]
        elif len(measures) == 1:
            lines += [
                "Wall time per message (produce + consume) over plain, µs, median of "
                f"{hop['repeats']} interleaved repetitions (lowest..highest in brackets); "
                "these results predate the CPU measure, so the targets read wall time.",
                "",
            ]
        else:
            lines += [
                "Wall time per message (produce + consume) over plain, µs, the same runs and "
                "layout: this also counts waiting for the brokers, which share the two cores "
                "with everything else, so read it for latency, not for the targets.",
                "",
            ]
        lines += [*_overhead_table(hop, clients, variants, measure), ""]
    lines += [noise_line(table, measures)]
    lines += floor_lines(hop)
    spanful = [v for v in variants if v not in SPANLESS]
    lines += ["", "Bytes per exported span (OTLP protobuf, batch-encoded; ddtrace: its own "
              "msgpack to the agent) times spans per message:", "",
              "| client | " + " | ".join(TITLES[v] for v in spanful) + " |",
              "|---|" + "---|" * len(spanful)]
    for client in clients:
        cells = [_bytes_cell(table[client].get(v)) for v in spanful]
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    lines += ["", "Headers on the wire (the last message consumed; name: value bytes):", ""]
    for client in clients:
        for v in ("hop_prop", "otel", "ddtrace"):
            row = table[client].get(v)
            if row:
                sizes = ", ".join(f"{k}: {len(val)}" for k, val in row["headers"].items())
                lines.append(f"- {client}, {TITLES[v]}: {sizes or '(none seen)'}")
    return lines


def floor_lines(hop: dict[str, Any]) -> list[str]:
    """The floors (bench/span_floor.py) as one paragraph, when the run measured them."""
    spans, sampled, ctx = (floor_us(hop, case) for case in FLOOR_CASES)
    if spans is None or sampled is None or ctx is None:
        return []
    per_span = hop["floors"]["sdk_spans"].get("bytes_per_span") or 0
    return ["", f"Floors, CPU µs per message with no hoptrace code (`bench/span_floor.py`, "
            f"no broker): two SDK spans (send + process, the conventions' attributes only, "
            f"{per_span:.0f} B each) exported through the same sink: **{spans:.1f}**; the same "
            f"two spans under the 1% sampler, a new root per message: **{sampled:.1f}**; "
            f"formatting `traceparent` and `baggage`, parsing them back and attaching the "
            f"context around the handler: **{ctx:.1f}**."]


Target = tuple[str, "bool | None", str]


def _verdict(value: float | None, low: float | None, high: float | None, limit: float,
             spec: str) -> tuple[bool, str]:
    """Met at the medians? And the figure's spread, flagged when it straddles the limit."""
    met = value is not None and value <= limit
    if low is None or high is None:
        return met, ""
    low, high = min(low, high), max(low, high)
    flag = ", straddles the limit: within noise" if low <= limit < high else ""
    return met, f" (spread {format(low, spec)}..{format(high, spec)}{flag})"


def _ratio_target(name: str, rows: dict[str, Any], o: dict[str, float], a: str, b: str,
                  limit: float, measure: str, b_label: str = "") -> Target:
    (alo, ahi), (blo, bhi) = spread(rows, a, measure), spread(rows, b, measure)
    r = ratio(o[a], o[b])
    met, extra = _verdict(r, ratio(alo, bhi), ratio(ahi, blo), limit, ".2f")
    return (name, met, f"{o[a]:.1f} vs {b_label}{o[b]:.1f} µs = {fmt(r, '.2f')}{TIMES}{extra}")


def _with_floor(target: Target, note: str) -> Target:
    return (target[0], target[1], f"{target[2]}; {note}") if note else target


def _recorder_target(client: str, o: dict[str, float]) -> Target:
    """Target 4, after its rule removed the lean recorder: what fast_spans still changes."""
    figure = (f"every span sampled: {o['hop_fast']:.1f} vs {o['hop_exact']:.1f} µs, the same "
              "code since the recorder went (the difference is noise)")
    if "s_hop_fast" in o and "s_hop_exact" in o and o["s_hop_exact"] > 0:
        saving = 1 - o["s_hop_fast"] / o["s_hop_exact"]
        figure += (f"; 1% sampled, the drop shortcuts: {o['s_hop_fast']:.1f} vs "
                   f"{o['s_hop_exact']:.1f} µs, {saving * 100:.0f}% saved")
    return (f"4 {client}: the lean recorder saved < 25%, so it is removed; fast_spans "
            "True vs False", None, figure)


def _bytes_target(client: str, rows: dict[str, Any], extra: float | None) -> Target | None:
    """Target 5: bytes per span against contrib's, per message too, and hoptrace's floor.

    ``extra``: what a hoptrace span carries beyond the conventions' required attributes, the
    transaction ID and the queue wait (:func:`bytes_floors`).
    """
    x = TIMES
    fast = rows.get("hop_fast", {}).get("bytes_per_span")
    contrib = rows.get("otel", {}).get("bytes_per_span")
    if not fast or not contrib:
        return None
    r = fast / contrib
    # Per message too: the peers do not all make the same number of spans per hop.
    per_msg = [rows[v]["bytes_per_span"] * rows[v]["spans_per_msg"] for v in ("hop_fast", "otel")]
    note = ""
    if extra is not None:
        least = fast - extra
        note = (f"; floor: the conventions' required attributes, the transaction ID and the "
                f"queue wait alone {least:.0f} B = {least / contrib:.2f}{x}"
                + (": out of reach for spans that carry them" if least > 1.25 * contrib else ""))
    return (f"5 {client}: bytes per span ≤ 1.25{x} contrib's", r <= 1.25,
            f"{fast:.0f} vs {contrib:.0f} B = {r:.2f}{x}; per message (the hop's spans "
            f"together) {per_msg[0]:.0f} vs {per_msg[1]:.0f} B = {per_msg[0] / per_msg[1]:.2f}{x}"
            f"{note}")


def _client_targets(client: str, o: dict[str, float], rows: dict[str, Any],
                    measure: str, floor: dict[str, float | None],
                    bytes_floor: dict[str, float]) -> list[Target]:
    out: list[Target] = []
    x = TIMES
    peer = cheapest_peer(o)
    if "hop_fast" in o and peer:
        spans_floor = floor.get("sdk_spans")
        note = "" if spans_floor is None or measure != "cpu" else (
            f"floor: two SDK spans alone {spans_floor:.1f} µs, half the peer "
            f"{peer[1] / 2:.1f} µs" + (": out of reach for any instrumentation that records "
                                       "them" if spans_floor >= peer[1] / 2 else ""))
        out.append(_with_floor(_ratio_target(
            f"1 {client}: spans ≤ 0.5{x} the cheapest peer", rows, o, "hop_fast", peer[0],
            0.5, measure, f"{peer[0]} "), note))
    if "s_hop_fast" in o and "s_hop_prop" in o:
        out.append(_ratio_target(f"2 {client}: 1% sampled spans ≤ 1.25{x} its propagation-only",
                                 rows, o, "s_hop_fast", "s_hop_prop", 1.25, measure))
    if "s_hop_fast" in o and "s_otel" in o:
        out.append(_ratio_target(f"2 {client}: 1% sampled spans ≤ 0.5{x} OTel contrib's",
                                 rows, o, "s_hop_fast", "s_otel", 0.5, measure))
    if "hop_prop" in o and "static" in o:
        gap = o["hop_prop"] - o["static"]
        (plo, phi), (slo, shi) = spread(rows, "hop_prop", measure), spread(rows, "static",
                                                                            measure)
        met, extra = _verdict(gap, plo - shi, phi - slo, 10, "+.1f")
        ctx = floor.get("context")
        note = "" if ctx is None or measure != "cpu" else (
            f"floor: formatting, parsing and attaching the context alone {ctx:.1f} µs")
        out.append(_with_floor((f"3 {client}: propagation-only ≤ static headers + 10 µs", met,
                                f"{o['hop_prop']:.1f} vs {o['static']:.1f} µs: "
                                f"{gap:+.1f} µs{extra}"), note))
    if "hop_fast" in o and "hop_exact" in o:
        out.append(_recorder_target(client, o))
    bytes_target = _bytes_target(client, rows, bytes_floor.get(client))
    if bytes_target is not None:
        out.append(bytes_target)
    return out


def hop_targets(hop: dict[str, Any]) -> list[Target]:
    """(target, met?, figure) for targets 1-5 of issue 15, per client, on CPU time."""
    measure = measures_of(hop)[0]
    over = overheads(hop["table"], measure)
    out: list[Target] = []
    floor = {case: floor_us(hop, case) for case in FLOOR_CASES}
    for client in CLIENTS:
        if over.get(client):
            out += _client_targets(client, over[client], hop["table"][client], measure, floor,
                                   hop.get("bytes_floors", {}))
    out += instruction_targets() + peer_targets()
    return sorted(out, key=lambda t: t[0].split(" ", 1)[0])


def kept_targets() -> list[Target]:
    out: list[Target] = []
    core = RESULTS / "core.json"
    if core.exists():
        data = json.loads(core.read_text())
        r = data.get("ratios", {}).get("propagation_only_vs_otel_propagate")
        if r is not None:
            out.append((f"6 core round trip ≤ 0.45{TIMES} OTel's propagate round trip",
                        r <= 0.45,
                        f"{data['propagation_only_round_trip']['median_us']:.2f} vs "
                        f"{data['otel_propagate_round_trip']['median_us']:.2f} µs = "
                        f"{r:.2f}{TIMES}"))
    soak = RESULTS / "soak.json"
    if soak.exists():
        rows = json.loads(soak.read_text()).get("rows", [])
        growths = [r["rss_growth_mb"] for r in rows if "rss_growth_mb" in r]
        if growths:
            worst = max(rows, key=lambda r: r.get("rss_growth_mb", -1e9))
            out.append(("6 memory growth < 5 MB over 100,000 messages", max(growths) < 5,
                        f"worst {max(growths):.2f} MB ({worst['case']}, {worst['variant']}; "
                        f"{worst.get('messages')} messages)"))
    metrics = RESULTS / "metrics.json"
    if metrics.exists():
        data = json.loads(metrics.read_text())
        found = _metrics_figure(data)
        if found is not None:
            out.append(("6 metrics on ≤ +10% over spans alone", *found))
    return out


def _metrics_figure(data: Any) -> tuple[bool | None, str] | None:
    """bench/metrics_bench.py's verdict and figure: metrics over spans alone, in instructions
    per message when it counted them (else in time), beside the floor: the SDK's least work
    for the same records (``floor``), which says whether +10 % can be reached at all."""
    if not isinstance(data, dict):
        return None
    targets = data.get("targets")
    met = all(bool(v) for v in targets.values()) if isinstance(targets, dict) and targets \
        else None
    over = data.get("overheads", {})
    pct = over.get("metrics_over_spans_pct") if isinstance(over, dict) else None
    timed = (f"+{pct:.0f}% over spans alone in time ({over.get('metrics_over_spans_us', 0):.1f} "
             f"µs per hop, {data.get('case', '')})" if isinstance(pct, (int, float))
             else "see bench/results/metrics.json")
    counted = data.get("instructions_over_spans_pct")  # (--callgrind: load-independent)
    floor = data.get("floor")
    if not (isinstance(counted, dict) and isinstance(counted.get("spans_metrics"), (int, float))
            and isinstance(floor, dict)):
        return met, timed
    hop = counted["spans_metrics"]
    figure = f"instructions per message +{hop:.1f}% over spans alone (the default metrics"
    pathway = counted.get("spans_metrics_pathway")
    figure += (f"; with the opt-in pathway on too: +{pathway:.1f}%)"
               if isinstance(pathway, (int, float)) else ")")
    if floor.get("reachable"):
        figure += (f"; the floor (the SDK's aggregation steps alone for the same records, "
                   f"attribute sets and exemplars) is +{floor['floor_over_spans_pct']:.1f}%, "
                   f"so +10% is within reach: hoptrace is "
                   f"{floor['hoptrace_over_floor_pct_of_spans']:.1f} points above the floor")
    else:
        figure += (f"; OUT OF REACH: the floor alone (the SDK's aggregation steps for the same "
                   f"records, attribute sets and exemplars) is "
                   f"+{floor['floor_over_spans_pct']:.1f}%")
    if isinstance(counted.get("sdk_api"), (int, float)):
        figure += f"; the same metrics through the OTel SDK's API: +{counted['sdk_api']:.0f}%"
    return hop <= 10, f"{figure}; {timed}"


def summary(hop: dict[str, Any] | None) -> str:
    lines = ["# `make bench` summary", ""]
    if hop is not None:
        m = hop.get("machine", {})
        lines += [
            f"Python {m.get('python')}, {m.get('cpus')} CPUs (brokers on the same machine), "
            f"load average at the end {m.get('loadavg_at_end')}; "
            f"messages per client and run: {hop['counts']}; {hop['seconds']} s.", "",
        ]
        lines += table_markdown(hop)
        if hop.get("failed"):
            lines += ["", "Failed runs: " + ", ".join(hop["failed"])]
    targets = (hop_targets(hop) if hop else []) + kept_targets()
    lines += ["", "## Targets (issue 15)", "", "| target | met | figure |", "|---|---|---|"]
    for name, met, figure in targets:
        lines.append(f"| {name} | {'n/a' if met is None else ('met' if met else 'NOT MET')} "
                     f"| {figure} |")
    return "\n".join(lines) + "\n"


def update_docs(text: str) -> None:
    """Put the summary (without its title) between the markers of docs/performance.md."""
    doc = HERE.parent / "docs" / "performance.md"
    begin, end = "<!-- summary:begin -->", "<!-- summary:end -->"
    page = doc.read_text()
    if begin not in page or end not in page:
        print(f"{doc}: no summary markers, not updated", file=sys.stderr)
        return
    body = text.split("\n", 2)[2].replace("## Targets (issue 15)", "### Targets")
    head, rest = page.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}")


def peer_targets() -> list[Target]:
    """Target 1 read in instructions (results/peers_instructions.json), with its floor.

    One row per client: hoptrace and the floor (the same two SDK spans and the least
    propagation, no hoptrace code) over the cheapest peer counted on that client; "out of
    reach" when the floor alone is over half that peer.
    """
    path = RESULTS / "peers_instructions.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    over = data["over_plain"]
    out: list[Target] = []
    for key, client in data.get("clients", {}).items():
        hop = over.get(f"hop_{key}")
        peers = [(p, over[f"{p}_{key}"]) for p in ("otel", "ddtrace") if f"{p}_{key}" in over]
        if hop is None or not peers:
            continue
        peer, base = min(peers, key=lambda item: item[1])
        ratio = hop / base
        figure = (f"hoptrace {hop / 1000:.0f}k vs {peer} {base / 1000:.0f}k instructions per "
                  f"message over plain, span encoding counted = {ratio:.2f}{TIMES}")
        floor = over.get(f"floor_{key}")
        if floor is not None:
            figure += (f"; floor (the same two SDK spans and the least propagation, no "
                       f"hoptrace code) {floor / 1000:.0f}k = {floor / base:.2f}{TIMES}")
            promise = over.get(f"floor_promise_{key}")
            if promise is not None:
                figure += (f" ({promise / base:.2f}{TIMES} with the transaction ID and the "
                           "queue wait)")
            if floor > 0.5 * base:
                figure += ": OUT OF REACH for any implementation recording these spans"
        out.append((f"1 {client}, in instructions: spans ≤ 0.5{TIMES} the cheapest peer's",
                    ratio <= 0.5, figure))
    return out + sampled_peer_targets(data)


def sampled_peer_targets(data: dict[str, Any]) -> list[Target]:
    """Target 2 (b) read in instructions (the ``sampled`` part of peers_instructions.json).

    One row per client OTel contrib instruments: hoptrace's 1% setup over contrib's, both
    recording the same messages (the same seeded root trace IDs), the mean over the seeds
    with each seed's ratio, and hoptrace propagation-only in the same setup beside it; then,
    without a verdict, hoptrace with the SDK's default ID generator over propagation-only
    (:func:`_default_ids_row`).
    """
    sampled = data.get("sampled") or {}
    names = data.get("clients", {})
    recorded = sampled.get("recorded_messages", {})
    out: list[Target] = []
    for key, entry in sampled.get("clients", {}).items():
        hop, otel, ratio = entry["s_hop"], entry["s_otel"], entry["ratio"]
        seeds = ", ".join(f"{r:.3f}{TIMES} ({recorded.get(seed, '?')} recorded)"
                          for seed, r in zip(entry["per_seed"], entry["ratios"], strict=True))
        figure = (f"hoptrace {hop / 1000:.1f}k vs otel {otel / 1000:.1f}k instructions per "
                  f"message over plain = {ratio:.2f}{TIMES}, the mean over {sampled['calls']} "
                  f"messages at each seed, both recording the same messages (per seed: "
                  f"{seeds})")
        out.append((f"2 {names.get(key, key)}, in instructions: 1% sampled spans ≤ "
                    f"0.5{TIMES} OTel contrib's", ratio <= 0.5, figure))
        prop = entry.get("s_prop")
        if prop:  # target 2 (a), the recorded 1% encoded as every variant's are
            out.append((
                f"2 {names.get(key, key)}, in instructions: 1% sampled spans ≤ 1.25{TIMES} "
                "its propagation-only", hop <= 1.25 * prop,
                f"hoptrace {hop / 1000:.1f}k vs propagation-only {prop / 1000:.1f}k instructions "
                f"per message over plain = {hop / prop:.2f}{TIMES}, the recorded 1% encoded "
                f"(OTLP) in the count, the mean over the seeds"))
        if prop and entry.get("s_hopd"):
            out.append(_default_ids_row(names.get(key, key), entry, sampled["calls"]))
    return out


def _default_ids_row(client: str, entry: dict[str, Any], calls: int) -> Target:
    """Target 2 (a)'s figure with the SDK's default ``RandomIdGenerator`` (``s_hopd``), no
    verdict: hoptrace's C paths draw the IDs from it as production does, but the messages it
    records are its own, not the seeded ones contrib records too (the verdict rows')."""
    hopd, prop = entry["s_hopd"], entry["s_prop"]
    got = entry.get("s_hopd_recorded") or {}
    per_seed = "; ".join(
        f"seed {seed} {figures['s_hopd'] / 1000:.1f}k, {got.get(seed, '?')} recorded"
        for seed, figures in entry["per_seed"].items() if "s_hopd" in figures)
    recorded = "/".join(str(got.get(seed, "?")) for seed in entry["per_seed"])
    figure = (
        f"hoptrace {hopd / 1000:.1f}k vs propagation-only {prop / 1000:.1f}k instructions per "
        f"message over plain = {hopd / prop:.2f}{TIMES}, {recorded} of {calls} messages "
        f"recorded per seed (its own: the global random seeded, not the seeded IDs; the "
        f"mean over the seeds; per seed: {per_seed}; with the seeded IDs "
        f"{entry['s_hop'] / prop:.2f}{TIMES})")
    at_seeded = entry.get("s_hopd_at_seeded")
    if at_seeded:  # the same recorded share as the seeded rows: the comparable figure
        figure = (
            f"hoptrace {at_seeded / 1000:.1f}k = {at_seeded / prop:.2f}{TIMES} at the seeded "
            f"rows' recorded counts (one recorded message "
            f"{entry['recorded_cost'] / 1000:.0f}k, from the seeded rows' counts); as counted, "
            + figure)
    return (f"2 {client}, in instructions, the SDK's default ID generator: 1% sampled spans "
            "over its propagation-only", None, figure)


def run_script(name: str, args: list[str]) -> bool:
    script = HERE / name
    if not script.exists():
        print(f"== {name}: not there, skipped", flush=True)
        return True
    print(f"== {name} {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, str(script), *args], cwd=HERE).returncode == 0


#: The ``instructions`` stage, per client: the callgrind script, its produce and consume
#: paths (case names without the mode), each counted ``plain`` (the client's stand-in sending
#: three static header pairs) and ``prop`` (hoptrace propagation-only), and the modules every
#: one of its cases imports (imported once under valgrind, before the cases fork).
INSTRUCTION_CLIENTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "confluent-kafka": ("callgrind_cases.py", "produce", "consume",
                        ("hoptrace.confluent_kafka",)),
    "kafka-python": ("callgrind_cases.py", "kpsend", "next",
                     ("hoptrace.confluent_kafka", "hoptrace.aiokafka", "hoptrace.kafka_python")),
    "aiokafka": ("callgrind_cases.py", "aiosend", "getone",
                 ("hoptrace.confluent_kafka", "hoptrace.aiokafka", "hoptrace.kafka_python")),
    "kombu": ("callgrind_amqp.py", "kombu_publish", "kombu_consume",
              ("hoptrace", "pika.data", "kombu.entity", "hoptrace.kombu")),
    "pika": ("callgrind_amqp.py", "pika_publish", "pika_consume",
             ("hoptrace", "pika", "hoptrace.pika")),
    "aio-pika": ("callgrind_amqp.py", "aiopika_publish", "aiopika_consume",
                 ("hoptrace", "pika.data", "aio_pika", "hoptrace.aio_pika")),
    "celery": ("callgrind_amqp.py", "celery_publish", "celery_run",
               ("hoptrace", "pika.data", "celery", "hoptrace.celery")),
}
#: confluent-kafka only, after its plain and prop cases (sfast installs an SDK): the 1%
#: sampled setup of target 2.
SAMPLED_CASES = ("sprop_produce", "sprop_consume", "sfast_produce", "sfast_consume")
#: Calls per case (callgrind_cases.CALLS, as ``python bench/callgrind_cases.py`` counts).
INSTRUCTION_CALLS = 2000


def instruction_cases(client: str) -> list[str]:
    """The cases counted for ``client``, in the order they run: plain before traced."""
    _, produce, consume, _ = INSTRUCTION_CLIENTS[client]
    cases = [f"{mode}_{path}" for mode in ("plain", "prop") for path in (produce, consume)]
    return cases + list(SAMPLED_CASES) if client == "confluent-kafka" else cases


def instructions_stage() -> bool:
    """Count every client's cases under callgrind into results/instructions.json."""
    if shutil.which("valgrind") is None:
        print("== instructions: valgrind is not installed, skipped "
              "(apt-get install valgrind)", flush=True)
        return True
    import callgrind_cases

    print("== instructions: callgrind, each client's calls replaced by no-op stand-ins",
          flush=True)
    started = time.monotonic()
    clients: dict[str, Any] = {}
    ok = True
    for client, (script, produce, consume, preload) in INSTRUCTION_CLIENTS.items():
        cases = instruction_cases(client)
        try:
            counts = callgrind_cases.count_many(str(HERE / script), cases, INSTRUCTION_CALLS,
                                                preload)
        except Exception as exc:
            print(f"   {client} failed: {exc}", file=sys.stderr, flush=True)
            ok = False
            continue
        for case in cases:
            print(f"   {client:16} {case:22} {counts[case] / 1000:7.1f}k instructions per "
                  "message", flush=True)
        clients[client] = {"script": script, "produce": produce, "consume": consume,
                           "instructions_per_message": counts}
    # Each client's rate, timed in RATE_ROUNDS rounds that take every client in turn, so that
    # a busy moment of the machine slows every client alike rather than the one timed then;
    # each client's fastest round is its rate (other work only slows a run).
    rounds: dict[str, list[float]] = {client: [] for client in clients}
    for _ in range(RATE_ROUNDS):
        for client, entry in clients.items():
            rate = instruction_rate(client, entry)
            if rate is not None:
                rounds[client].append(rate)
    for client, entry in clients.items():
        entry["instructions_per_us"] = max(rounds[client]) if rounds[client] else None
        entry["rate_rounds"] = [round(rate) for rate in rounds[client]]
        entry["rate_from"] = client
    own = clients.get("confluent-kafka", {}).get("instructions_per_us")
    for client, entry in clients.items():
        if entry["instructions_per_us"] is None and own is not None:
            print(f"   {client}: its rate could not be timed; confluent-kafka's is used",
                  file=sys.stderr, flush=True)
            entry["instructions_per_us"], entry["rate_from"] = own, "confluent-kafka"
    (RESULTS / "instructions.json").write_text(json.dumps(
        {"python": sys.version.split()[0], "calls": INSTRUCTION_CALLS,
         "seconds": round(time.monotonic() - started), "clients": clients}, indent=2) + "\n")
    print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    return ok


#: How many times each client's rate is timed (see :func:`instruction_rate`), in rounds.
RATE_ROUNDS = 3
#: Times the propagation-only cases of one script outside valgrind, in one interpreter as
#: under valgrind: CPU ns per call, the fastest of 5 x 20,000.
_RATE_SCRIPT = """
import collections, contextvars, importlib, itertools, json, sys, time
cases = importlib.import_module(sys.argv[1])
def timed(case):
    one = cases.build(case)
    for _ in range(2000):
        one()
    runs = []
    for _ in range(5):
        t0 = time.process_time_ns()
        collections.deque(itertools.starmap(one, itertools.repeat((), 20000)), maxlen=0)
        runs.append((time.process_time_ns() - t0) / 20000)
    return min(runs)
print(json.dumps({case: contextvars.Context().run(timed, case) for case in sys.argv[2:]}))
"""


def instruction_rate(client: str, entry: dict[str, Any]) -> float | None:
    """This machine's instructions per µs of CPU on ``client``'s propagation-only path.

    Its two propagation-only cases, counted and timed (one interpreter, as under valgrind),
    so its count converts to µs for target 3; the rate moves with the machine's load, the
    counts do not. The fastest of five timings is taken: other work on the machine only
    slows a run, so the fastest is the nearest to the rate this code runs at on its own.
    None when they could not be timed.
    """
    cases = [f"prop_{entry['produce']}", f"prop_{entry['consume']}"]
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RATE_SCRIPT, entry["script"].removesuffix(".py"), *cases],
            cwd=HERE, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        ns = json.loads(done.stdout.strip().splitlines()[-1])
    except Exception as exc:
        print(f"   timing {client} failed: {exc}", file=sys.stderr, flush=True)
        return None
    counts: dict[str, int] = entry["instructions_per_message"]
    cpu_us = float(sum(ns[case] for case in cases)) / 1000
    return sum(counts[case] for case in cases) / cpu_us


def _instruction_clients(data: dict[str, Any]) -> dict[str, Any]:
    """Per client figures of results/instructions.json; the format before every client was
    counted holds confluent-kafka's alone."""
    if "clients" in data:
        return dict(data["clients"])
    return {"confluent-kafka": {"produce": "produce", "consume": "consume",
                                "instructions_per_message": data["instructions_per_message"],
                                "instructions_per_us": data.get("instructions_per_us"),
                                "rate_from": "confluent-kafka"}}


def _target3_row(client: str, entry: dict[str, Any]) -> Target:
    """Target 3 on ``client`` in instructions: prop over plain, in µs at its rate."""
    n, produce, consume = entry["instructions_per_message"], entry["produce"], entry["consume"]
    prop = float(n[f"prop_{produce}"] + n[f"prop_{consume}"]
                 - n[f"plain_{produce}"] - n[f"plain_{consume}"]) / 1000
    rate: float | None = entry.get("instructions_per_us")
    gap_us = prop * 1000 / rate if rate else None
    whose = ("that path" if entry.get("rate_from", client) == client
             else f"{entry['rate_from']}'s path ({client}'s could not be timed)")
    consumed = "poll" if client == "confluent-kafka" else "consume"
    return (
        f"3 {client}, in instructions: propagation-only ≤ static headers + 10 µs",
        None if gap_us is None else gap_us <= 10,
        f"+{prop:.1f}k instructions per message"
        + ("" if gap_us is None or not rate else f", +{gap_us:.1f} µs at this machine's "
           f"{rate / 1000:.1f}k instructions per µs on {whose}")
        + f" (produce {n[f'prop_{produce}'] / 1000:.1f}k, {consumed} "
        f"{n[f'prop_{consume}'] / 1000:.1f}k, against {n[f'plain_{produce}'] / 1000:.1f}k and "
        f"{n[f'plain_{consume}'] / 1000:.1f}k for the plain client sending static headers)",
    )


def instruction_targets() -> list[Target]:
    """Target 2 on confluent-kafka and target 3 on every client counted, read in
    instructions (results/instructions.json)."""
    path = RESULTS / "instructions.json"
    if not path.exists():
        return []
    clients = _instruction_clients(json.loads(path.read_text()))
    out: list[Target] = []
    n = clients.get("confluent-kafka", {}).get("instructions_per_message", {})
    if all(case in n for case in ("plain_produce", "plain_consume", *SAMPLED_CASES)):
        def over(mode: str) -> float:  # produce + poll, over the plain client's
            return float(n[f"{mode}_produce"] + n[f"{mode}_consume"]
                         - n["plain_produce"] - n["plain_consume"]) / 1000

        sprop, sfast = over("sprop"), over("sfast")
        out.append((  # (no verdict: the recorded 1% are not encoded here; see the peers rows)
            "2 confluent-kafka, in instructions, the recorded 1% not encoded: 1% sampled "
            "spans over its propagation-only", None,
            f"{sfast:.1f}k vs {sprop:.1f}k instructions per message over plain = "
            f"{sfast / sprop:.2f}{TIMES} (callgrind: produce {n['sfast_produce'] / 1000:.1f}k + "
            f"poll {n['sfast_consume'] / 1000:.1f}k against {n['sprop_produce'] / 1000:.1f}k + "
            f"{n['sprop_consume'] / 1000:.1f}k)"))
    order = [c for c in CLIENTS if c in clients] + [c for c in clients if c not in CLIENTS]
    out += [_target3_row(client, clients[client]) for client in order]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", help=f"some of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of the messages, 3 repetitions, soak of 20,000")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild the table from bench/results")
    parser.add_argument("--update-docs", action="store_true",
                        help="also put the summary into docs/performance.md")
    args = parser.parse_args()
    stages = args.stages or list(STAGES)
    if set(stages) - set(STAGES):
        parser.error(f"unknown stage(s) {sorted(set(stages) - set(STAGES))}; known: {STAGES}")
    RESULTS.mkdir(exist_ok=True)
    ok = True
    hop_path = RESULTS / "hop.json"
    if not args.summary_only:
        if "hop" in stages:
            counts = QUICK_COUNTS if args.quick else COUNTS
            repeats = args.repeats or (3 if args.quick else 5)
            hop = hop_stage(args.clients.split(","), args.variants.split(","), counts, repeats)
            hop_path.write_text(json.dumps(hop, indent=2) + "\n")
            ok = ok and not hop["failed"]
        quick = ["--quick"] if args.quick else []
        if "core" in stages:
            ok = run_script("core_bench.py", quick) and ok
        if "soak" in stages:
            ok = run_script("soak_bench.py", quick) and ok
        if "metrics" in stages:
            # Instruction counts too where valgrind is there: the timed figure is noisy.
            counted = ["--callgrind"] if shutil.which("valgrind") else []
            ok = run_script("metrics_bench.py", quick + counted) and ok
        if "instructions" in stages:
            ok = instructions_stage() and ok
        if "peers" in stages:
            if shutil.which("valgrind") is None:
                print("== peers: valgrind is not installed, skipped", flush=True)
            else:
                ok = run_script("callgrind_peers.py", []) and ok
    hop_data = json.loads(hop_path.read_text()) if hop_path.exists() else None
    text = summary(hop_data)
    (RESULTS / "summary.md").write_text(text)
    print(text)
    if args.update_docs:
        update_docs(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
