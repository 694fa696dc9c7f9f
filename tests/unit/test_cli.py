"""``hoptrace view`` and ``hoptrace stats`` on span files recorded by real hoptrace hops."""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import statistics
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import hoptrace
from hoptrace.cli import main
from hoptrace.cli.analysis import critical_path, edge_stats
from hoptrace.cli.spanfile import group_traces, read_spans
from hoptrace.cli.waterfall import format_ms
from hoptrace.core import semconv
from hoptrace.export import JsonLinesSpanExporter


class Services:
    """One SDK provider per service name, all exporting to the same JSONL file."""

    def __init__(self, path) -> None:
        self.path = path
        self.providers: dict[str, TracerProvider] = {}

    @contextlib.contextmanager
    def service(self, name: str) -> Iterator[None]:
        provider = self.providers.get(name)
        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": name}))
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(self.path)))
            self.providers[name] = provider
        previous = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = provider
        try:
            yield
        finally:
            trace._TRACER_PROVIDER = previous

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


def held(headers: dict, wait_ms: int) -> dict:
    """The headers, after the message has sat in the queue ``wait_ms``.

    Really waited: a send time moved back instead would put the wait before its send span,
    which ``view`` and ``stats`` do not draw or count.
    """
    time.sleep(wait_ms / 1000)
    return headers


def checkout(services: Services, *, wait_ms: int, fail_billing: bool = False) -> str:
    """web → celery → worker → orders → billing; returns the transaction ID."""
    with services.service("web"), hoptrace.transaction("POST /checkout") as tx:
        with hoptrace.produce_scope({}, "celery", "celery") as send:
            task_headers = send.carrier
    with services.service("worker"):
        with hoptrace.consume_scope(held(task_headers, wait_ms), "celery", "celery"):
            with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
                order_headers = send.carrier
    with services.service("billing"), contextlib.suppress(RuntimeError):
        with hoptrace.consume_scope(held(order_headers, wait_ms * 3), "orders", "rabbitmq"):
            if fail_billing:
                raise RuntimeError("card declined")
    return tx.transaction_id


@pytest.fixture
def span_file(tmp_path):
    """A JSONL file of 4 checkouts (the last one fails in billing); yields (path, tx IDs)."""
    # The queue waits are 20-240 ms: long enough that a busy machine cannot make a hop's own
    # work outweigh the billing queue wait the tests name dominant. One-time costs must not
    # land inside the spans and waits the tests compare either: under OTel 1.20 the first
    # propagation imports opentelemetry.propagate and every TracerProvider's Resource.create runs the resource detectors, each scanning every
    # installed distribution's entry points (20-45 ms here, more on a loaded machine): so one
    # warm-up checkout to a file the tests never read, and every service's provider made
    # before the first checkout rather than inside its first queue wait.
    warm_up = Services(tmp_path / "warm-up.jsonl")
    try:
        checkout(warm_up, wait_ms=0)
    finally:
        warm_up.shutdown()
    path = tmp_path / "spans.jsonl"
    services = Services(path)
    for name in ("web", "worker", "billing"):
        with services.service(name):
            pass
    try:
        txs = [checkout(services, wait_ms=20 * (i + 1), fail_billing=i == 3) for i in range(4)]
    finally:
        services.shutdown()
    return path, txs


def run(*args: str, columns: int | None = None):
    """Invoke the CLI, its output piped: COLUMNS wide, else the default for pipes (160)."""
    env = {"COLUMNS": str(columns) if columns else None}
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


def test_view_draws_a_waterfall_tree_per_trace_with_queue_wait_and_errors(span_file):
    path, txs = span_file
    result = run("view", str(path), "--width", "30")
    assert result.exit_code == 0, result.output
    out = result.output
    traces = group_traces(read_spans(path))
    assert out.count("trace ") >= len(traces)
    for trace_obj in traces.values():
        assert trace_obj.trace_id in out
    for tx in txs:
        assert f"transaction {tx}" in out
    lines = out.splitlines()
    root = next(line for line in lines if "POST /checkout" in line)
    process = next(line for line in lines if "process orders" in line)
    # The tree: the billing consumer is four levels below the HTTP root.
    indent = lambda line: len(line) - len(line.lstrip())  # noqa: E731
    assert indent(process) - indent(root) == 8
    assert "billing" in process and "░" in process and "█" in process
    assert out.count("✗ process orders") == 1  # one failed checkout, marked


def test_view_one_trace_by_transaction_id_and_write_html(span_file, tmp_path):
    path, txs = span_file
    html = tmp_path / "report.html"
    result = run("view", str(path), "--trace", txs[1], "--html", str(html))
    assert result.exit_code == 0, result.output
    assert txs[1] in result.output and txs[0] not in result.output
    page = html.read_text()
    # The ID is on each process's entry span (the sends inside leave it out): the trace is
    # found by it all the same, with every span in it.
    (found,) = [t for t in group_traces(read_spans(path)).values() if t.transaction_id == txs[1]]
    assert page.count('class="span-bar') == len(found.spans) == 5
    assert sum(semconv.TRANSACTION_ID in s.attributes for s in found.spans) < len(found.spans)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "<link" not in page and "src=" not in page


def test_view_unknown_trace_and_malformed_file_exit_with_a_clear_error(span_file, tmp_path):
    path, _ = span_file
    result = CliRunner().invoke(main, ["view", str(path), "--trace", "nope"])
    assert result.exit_code == 1
    assert "no trace or transaction 'nope'" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + "{oops\n")
    lines = len(path.read_text().splitlines())
    result = CliRunner().invoke(main, ["stats", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:{lines + 1}: invalid JSON" in result.output


def test_stats_json_gives_per_edge_percentiles_error_rate_slowest_and_critical_path(span_file):
    path, _ = span_file
    result = run("stats", str(path), "--json", "--top", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    spans = read_spans(path)
    billing = [s for s in spans if s.name == "process orders"]
    waits = [s.attributes[semconv.QUEUE_WAIT_MS] for s in billing]
    edges = {(e["producer_service"], e["destination"], e["consumer_service"]): e for e in report["edges"]}
    assert set(edges) == {("web", "celery", "worker"), ("worker", "orders", "billing")}
    edge = edges[("worker", "orders", "billing")]
    assert edge["count"] == len(billing) == 4
    assert edge["errors"] == 1 and edge["error_rate"] == 0.25
    cuts = statistics.quantiles(waits, n=100, method="inclusive")
    assert edge["queue_wait_ms"] == {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}
    assert edge["processing_ms"]["p50"] == pytest.approx(statistics.median(s.duration_ms for s in billing))
    assert report["spans"] == len(spans) and report["traces"] == 4
    durations = sorted((t.duration_ms for t in group_traces(spans).values()), reverse=True)
    assert [t["duration_ms"] for t in report["slowest_traces"]] == durations[:2]
    path_report = report["critical_path"]
    assert path_report["trace_id"] == report["slowest_traces"][0]["trace_id"]
    assert [s["name"] for s in path_report["steps"]] == [
        "POST /checkout", "send celery", "process celery", "send orders", "process orders"
    ]
    # The largest single share of the slowest trace is the billing queue wait.
    assert path_report["dominant"]["what"] == "queue_wait"
    assert path_report["dominant"]["span"] == "process orders"


def test_stats_table_names_edges_and_the_dominant_hop(span_file):
    path, _ = span_file
    result = run("stats", str(path))
    assert result.exit_code == 0, result.output
    assert re.search(r"worker\s.*orders\s.*billing\s.*4\s", result.output)
    assert "25.0%" in result.output
    assert "dominant:" in result.output and "waiting in the queue before 'process orders'" in result.output


def test_critical_path_queue_waits_and_own_time_add_up_to_the_trace(span_file):
    path, _ = span_file
    for trace_obj in group_traces(read_spans(path)).values():
        steps = critical_path(trace_obj).steps
        consumers = [s for s in steps if s.span.kind == "CONSUMER"]
        covered = sum(s.self_ms + (s.queue_wait_ms or 0.0) for s in steps)
        # Each hop's wait on the path is its recorded wait (these sends start before it).
        assert [s.queue_wait_ms for s in consumers] == [
            pytest.approx(s.span.attributes[semconv.QUEUE_WAIT_MS]) for s in consumers
        ]
        assert len(consumers) == 2
        # The chain runs from the HTTP request's start to the billing consumer's end, and
        # counts each instant once: it covers the whole trace.
        assert covered == pytest.approx(trace_obj.duration_ms)
        assert covered <= trace_obj.duration_ms + 1e-6


def test_view_fits_80_columns_without_cutting_a_figure(span_file):
    path, _ = span_file
    out = run("view", str(path), columns=80).output
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = [line for line in out.splitlines() if "█" in line and "queue wait" not in line]
    spans = read_spans(path)
    assert len(rows) == len(spans)
    durations = []
    for row in rows:  # span names may be cut with …; the figures after the bar never are
        tail = row[row.rindex("█") + 1:]
        match = re.fullmatch(r"\s+([\d.]+ m?s)(?:\s+[\d.]+ m?s)?\s*", tail)
        assert match, row
        durations.append(match.group(1))
    assert sorted(durations) == sorted(format_ms(span.duration_ms) for span in spans)


def test_link_mode_edges_are_found_through_links(tmp_path):
    path = tmp_path / "link.jsonl"
    services = Services(path)
    hoptrace.configure(link_mode="link")
    try:
        with services.service("api"), hoptrace.transaction("t"):
            with hoptrace.produce_scope({}, "jobs", "kafka") as send:
                headers = send.carrier
        with services.service("jobs-worker"), hoptrace.consume_scope(headers, "jobs", "kafka"):
            pass
    finally:
        services.shutdown()
    spans = read_spans(path)
    assert len(group_traces(spans)) == 2  # link mode: a new trace per hop
    (edge,) = edge_stats(spans)
    assert (edge.producer_service, edge.destination, edge.consumer_service) == ("api", "jobs", "jobs-worker")


def test_python_dash_m_and_console_script_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hoptrace.cli", "--help"], capture_output=True, text=True, check=True)
    assert "view" in out.stdout and "stats" in out.stdout and "demo" in out.stdout


def test_long_read_shows_a_progress_bar_on_a_terminal(span_file, tmp_path):
    import io

    from rich.console import Console

    from hoptrace.cli import load_spans

    path, _ = span_file
    big = tmp_path / "big.jsonl"
    text = path.read_text()
    copies = (5 << 20) // len(text) + 1  # over the 4 MB threshold
    big.write_text(text * copies)
    screen = io.StringIO()
    spans = load_spans(str(big), Console(file=screen, force_terminal=True, width=100))
    assert len(spans) == copies * len(text.splitlines())
    assert "reading big.jsonl" in screen.getvalue()
    quiet = io.StringIO()
    load_spans(str(big), Console(file=quiet, force_terminal=False))
    assert quiet.getvalue() == ""  # no bar when the output is not a terminal


def test_view_and_stats_read_an_otlp_collector_file(tmp_path):
    def span(span_id, parent, name, kind, start, end, status=None):
        return {
            "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": span_id, "parentSpanId": parent,
            "name": name, "kind": kind, "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
            "attributes": [{"key": "messaging.destination.name", "value": {"stringValue": "invoices"}}],
            "status": status or {},
        }

    document = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeSpans": [{"spans": [
            span("eee19b7ec3c1b174", "", "send invoices", 4, 1_000, 2_000),
            span("eee19b7ec3c1b175", "eee19b7ec3c1b174", "process invoices", "SPAN_KIND_CONSUMER", 3_000, 9_000,
                 {"code": 2, "message": "boom"}),
        ]}],
    }]}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(document) + "\n")
    result = run("view", str(path))
    assert result.exit_code == 0, result.output
    assert "trace 5b8efff798038103d269b633813fc60c" in result.output
    assert "✗ process invoices" in result.output and "billing" in result.output
    report = json.loads(run("stats", str(path), "--json").output)
    (edge,) = report["edges"]
    assert (edge["producer_service"], edge["destination"], edge["consumer_service"]) == ("billing", "invoices", "billing")
    assert edge["error_rate"] == 1.0 and edge["queue_wait_ms"]["p50"] is None


def test_stats_critical_path_of_a_chosen_trace(span_file):
    path, txs = span_file
    report = json.loads(run("stats", str(path), "--json", "--trace", txs[0]).output)
    chosen = next(t for t in group_traces(read_spans(path)).values() if t.transaction_id == txs[0])
    assert report["critical_path"]["trace_id"] == chosen.trace_id
    assert report["critical_path"]["transaction_id"] == txs[0]
    assert len(report["critical_path"]["steps"]) == 5


def test_html_report_escapes_names_and_attribute_values():
    from hoptrace.cli.html_report import render_html
    from hoptrace.cli.spanfile import SpanRecord, Trace

    hostile = "<img src=x onerror=alert(1)>"
    record = SpanRecord(
        "a" * 32, "b" * 16, None, hostile, "SERVER", 1_000, 5_000,
        service="</script><script>alert(2)</script>", attributes={"note": "</script>" + hostile},
    )
    page = render_html([Trace("a" * 32, [record])])
    assert "<img" not in page
    assert page.count("</script>") == 2  # the JSON data block and the page script, nothing else
    assert page.count('class="span-bar') == 1


MS = 1_000_000
T0 = 1_700_000_000_000 * MS  # on a millisecond boundary


def kafka_hop(trace_id: str, ids: str, send_at_ns: int, process_at_ns: int, *, link: bool = False) -> list[dict]:
    """HTTP root → send → process, the wait recorded as a Kafka consumer does: from the
    record's timestamp, the send time cut to the millisecond. With ``link``, the consumer is
    a new trace that links to the send (link mode)."""
    root, send, process = ((f"{ids}{n}" * 16)[:16] for n in "123")
    create_time_ns = send_at_ns // MS * MS
    consumer_trace = ("f" * 32) if link else trace_id
    return [
        {"trace_id": trace_id, "span_id": root, "name": "POST /checkout", "kind": "SERVER",
         "start_ns": T0, "end_ns": send_at_ns + MS, "service": "web"},
        {"trace_id": trace_id, "span_id": send, "parent_span_id": root, "name": "send orders",
         "kind": "PRODUCER", "start_ns": send_at_ns, "end_ns": send_at_ns + MS // 5, "service": "web",
         "attributes": {semconv.MESSAGING_DESTINATION_NAME: "orders"}},
        {"trace_id": consumer_trace, "span_id": process, "parent_span_id": None if link else send,
         "name": "process orders", "kind": "CONSUMER", "start_ns": process_at_ns,
         "end_ns": process_at_ns + 2 * MS, "service": "billing",
         "links": [{"trace_id": trace_id, "span_id": send, "attributes": {}}] if link else [],
         "attributes": {semconv.MESSAGING_DESTINATION_NAME: "orders",
                        semconv.QUEUE_WAIT_MS: (process_at_ns - create_time_ns) / MS}},
    ]


@pytest.fixture
def coarse_file(tmp_path):
    """One hop whose ms-cut wait would begin 0.4 ms before its send span (parent mode), one
    the same in link mode, and one whose wait begins after its send span started."""
    records = (
        kafka_hop("a" * 32, "1a", T0 + 1_400_000, T0 + 3_400_000)
        + kafka_hop("b" * 32, "2b", T0 + 1_400_000, T0 + 3_400_000, link=True)
        + kafka_hop("c" * 32, "3c", T0 + 1_000_000, T0 + 3_400_000)
    )
    path = tmp_path / "coarse.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, {r["span_id"]: r for r in records}


def test_queue_wait_bars_never_begin_before_their_send_span(coarse_file):
    from hoptrace.cli.html_report import trace_svg
    from hoptrace.cli.waterfall import format_ms, timeline_bar

    path, _ = coarse_file
    traces = group_traces(read_spans(path))
    trace_obj = traces["a" * 32]
    by_name = {s.name: s for s in trace_obj.spans}
    send, process = by_name["send orders"], by_name["process orders"]
    recorded = process.attributes[semconv.QUEUE_WAIT_MS]
    assert process.start_ns - recorded * MS < send.start_ns  # as recorded: before the send
    trace_obj.link_sends()  # as view, trace_table and trace_svg do
    total = trace_obj.end_ns - trace_obj.start_ns
    send_bar = timeline_bar(send, trace_obj.start_ns, total, 60).plain
    wait_bar = timeline_bar(process, trace_obj.start_ns, total, 60).plain
    assert wait_bar.index("░") == send_bar.index("█")
    assert wait_bar.index("█") > wait_bar.index("░")  # the wait is still drawn

    out = run("view", str(path), "--trace", "a" * 32, "--width", "60").output
    lines = out.splitlines()
    send_line = next(line for line in lines if "send orders" in line)
    process_line = next(line for line in lines if "process orders" in line)
    assert process_line.index("░") == send_line.index("█")

    fresh = group_traces(read_spans(path))["a" * 32]  # not linked yet: trace_svg links it
    svg = trace_svg(fresh)
    wait_x = re.search(r'<rect class="wait-bar" x="([\d.]+)"', svg).group(1)
    send_x = re.search(rf'data-span-id="{send.span_id}" x="([\d.]+)"', svg).group(1)
    assert wait_x == send_x

    # Link mode: the send span is in another trace of the file; the wait shown is clamped.
    (linked,) = traces["f" * 32].spans
    link_send = next(s for s in traces["b" * 32].spans if s.kind == "PRODUCER")
    out = run("view", str(path), "--trace", "f" * 32).output
    since_send = (linked.start_ns - link_send.start_ns) / MS
    assert since_send < linked.attributes[semconv.QUEUE_WAIT_MS]
    row = next(line for line in out.splitlines() if "process orders" in line)
    assert row.rstrip().endswith(" " + format_ms(since_send))  # the queue wait column


def test_stats_count_the_queue_wait_from_the_send_span_at_the_earliest(coarse_file):
    path, records = coarse_file
    consumers = [s for s in read_spans(path) if s.kind == "CONSUMER"]
    report = json.loads(run("stats", str(path), "--json", "--trace", "a" * 32).output)
    (edge,) = report["edges"]
    assert (edge["producer_service"], edge["destination"], edge["consumer_service"]) == ("web", "orders", "billing")
    recorded, expected = [], []
    for span in consumers:
        send = records[span.parent_span_id or span.links[0]["span_id"]]
        recorded.append(span.attributes[semconv.QUEUE_WAIT_MS])
        expected.append(min(recorded[-1], (span.start_ns - send["start_ns"]) / MS))
    # Two hops are clamped (parent mode, link mode); one began after its send and is kept.
    assert [r != e for r, e in zip(recorded, expected, strict=True)].count(True) == 2
    cuts = statistics.quantiles(expected, n=100, method="inclusive")
    assert edge["queue_wait_ms"] == {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}
    (step,) = [s for s in report["critical_path"]["steps"] if s["name"] == "process orders"]
    (process,) = [s for s in consumers if s.trace_id == "a" * 32]
    assert step["queue_wait_ms"] == (process.start_ns - records[process.parent_span_id]["start_ns"]) / MS
    assert step["queue_wait_ms"] < process.attributes[semconv.QUEUE_WAIT_MS]
    # critical_path on its own (no edge_stats first) clamps the same way.
    fresh = group_traces(read_spans(path))["a" * 32]
    (own,) = [s for s in critical_path(fresh).steps if s.span.kind == "CONSUMER"]
    assert own.queue_wait_ms == step["queue_wait_ms"]


def test_view_and_stats_survive_a_span_that_is_its_own_parent(tmp_path: pathlib.Path) -> None:
    """Repeated span IDs can form a parent cycle: view and stats must finish, not hang."""
    from hoptrace.cli.analysis import critical_path
    from hoptrace.cli.spanfile import group_traces, read_spans

    trace_id = "ab" * 16
    lines = [
        {"name": "root", "trace_id": trace_id, "span_id": "01" * 8, "parent_span_id": None,
         "kind": "INTERNAL", "start_ns": 1_000, "end_ns": 9_000, "attributes": {}},
        {"name": "loop", "trace_id": trace_id, "span_id": "02" * 8, "parent_span_id": "02" * 8,
         "kind": "CONSUMER", "start_ns": 2_000, "end_ns": 3_000, "attributes": {}},
        {"name": "loop again", "trace_id": trace_id, "span_id": "02" * 8,
         "parent_span_id": "01" * 8, "kind": "CONSUMER", "start_ns": 2_500,
         "end_ns": 4_000, "attributes": {}},
    ]
    path = tmp_path / "cycle.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    trace = group_traces(read_spans(path))[trace_id]
    walked = list(trace.walk())
    assert len(walked) == len({id(span) for span, _ in walked})
    assert critical_path(trace).steps
