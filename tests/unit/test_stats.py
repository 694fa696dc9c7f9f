"""``hoptrace stats``: the critical path as the longest causal chain, edges paired by parent
and by link, throughput and unpaired sends, and tables that fit 80 and 120 columns.

Span files come from hoptrace's own exporter where hoptrace can make the case, and from
hand-built OTLP JSON where exact overlaps are needed. Expected figures are derived here from
the spans themselves.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from rich.cells import cell_len

import hoptrace
from hoptrace.cli import main
from hoptrace.cli.analysis import critical_path, edge_stats
from hoptrace.cli.spanfile import group_traces, read_spans
from hoptrace.cli.waterfall import format_ms
from hoptrace.core import semconv
from hoptrace.export import JsonLinesSpanExporter

MS = 1_000_000
T0 = 1_700_000_000_000 * MS
TRACE = "5b8efff798038103d269b633813fc60c"


# ---------------------------------------------------------------- hand-built OTLP JSON ---

def otlp_span(span_id: str, name: str, kind: int, start_ms: float, end_ms: float, *,
              parent: str = "", trace_id: str = TRACE, wait_ms: float | None = None,
              destination: str | None = None, links: list[tuple[str, str]] = (),
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One OTLP JSON span; times in ms after T0; ``links`` as (trace ID, span ID)."""
    attributes: dict[str, Any] = dict(extra or {})
    if destination is not None:
        attributes[semconv.MESSAGING_DESTINATION_NAME] = destination
    if wait_ms is not None:
        attributes[semconv.QUEUE_WAIT_MS] = wait_ms
    return {
        "traceId": trace_id, "spanId": span_id, "parentSpanId": parent, "name": name,
        "kind": kind, "startTimeUnixNano": str(T0 + int(start_ms * MS)),
        "endTimeUnixNano": str(T0 + int(end_ms * MS)),
        "attributes": [
            {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else
             {"doubleValue": v} if isinstance(v, float) else {"stringValue": v}}
            for k, v in attributes.items()
        ],
        "links": [{"traceId": t, "spanId": s} for t, s in links],
    }


def otlp_file(tmp_path, name: str, by_service: dict[str, list[dict[str, Any]]]):
    document = {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
         "scopeSpans": [{"spans": spans}]}
        for service, spans in by_service.items()
    ]}
    path = tmp_path / name
    path.write_text(json.dumps(document) + "\n")
    return path


SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = 2, 3, 4, 5, 1

# The web request keeps running while the worker does the job (the case where the old walk
# listed about twice the trace's duration and named the web request as dominant).
WEB = otlp_span("a000000000000001", "POST /checkout", SERVER, 0, 80)
SEND = otlp_span("a000000000000002", "send tasks", PRODUCER, 2, 3, parent=WEB["spanId"],
                 destination="tasks")
WORK = otlp_span("a000000000000003", "process tasks", CONSUMER, 10, 50, parent=SEND["spanId"],
                 destination="tasks", wait_ms=8.0)
QUERY = otlp_span("a000000000000004", "SELECT orders", CLIENT, 12, 30, parent=WORK["spanId"])
SEND2 = otlp_span("a000000000000005", "send emails", PRODUCER, 40, 41, parent=WORK["spanId"],
                  destination="emails")
MAIL = otlp_span("a000000000000006", "process emails", CONSUMER, 60, 84, parent=SEND2["spanId"],
                 destination="emails", wait_ms=20.0)


def ns(span: dict[str, Any], key: str) -> int:
    return int(span[f"{key}TimeUnixNano"])


def wait_ns(span: dict[str, Any]) -> int:
    (value,) = [a["value"]["doubleValue"] for a in span["attributes"] if a["key"] == semconv.QUEUE_WAIT_MS]
    return int(value * MS)


@pytest.fixture
def overlap_file(tmp_path):
    return otlp_file(tmp_path, "overlap.json", {
        "web": [WEB, SEND], "worker": [WORK, QUERY, SEND2], "mailer": [MAIL],
    })


def path_of(path_file, trace_id: str = TRACE):
    return critical_path(group_traces(read_spans(path_file))[trace_id])


def test_critical_path_is_the_longest_causal_chain_and_adds_up_to_the_trace(overlap_file):
    path = path_of(overlap_file)
    duration = (max(ns(s, "end") for s in (WEB, SEND, WORK, QUERY, SEND2, MAIL))
                - min(ns(s, "start") for s in (WEB, SEND, WORK, QUERY, SEND2, MAIL))) / MS
    assert path.trace.duration_ms == duration
    steps = {step.span.name: step for step in path.steps}
    covered = sum(step.self_ms + (step.queue_wait_ms or 0.0) for step in path.steps)
    assert covered <= duration + 1e-9

    # The chain, walked back from the span that ends last: the e-mail consumer, its queue
    # wait back into its send span, the worker up to that send, the query the worker waited
    # on, the task's queue wait, its send, and the web request up to that send. The web
    # request's time after the send ran beside the worker: it is not on the path.
    mail_wait_start = ns(MAIL, "start") - wait_ns(MAIL)
    work_wait_start = ns(WORK, "start") - wait_ns(WORK)
    expected = {  # name: (queue wait ns, own ns)
        "process emails": (wait_ns(MAIL), ns(MAIL, "end") - ns(MAIL, "start")),
        "send emails": (None, mail_wait_start - ns(SEND2, "start")),
        "process tasks": (wait_ns(WORK), (ns(SEND2, "start") - ns(QUERY, "end"))
                          + (ns(QUERY, "start") - ns(WORK, "start"))),
        "SELECT orders": (None, ns(QUERY, "end") - ns(QUERY, "start")),
        "send tasks": (None, work_wait_start - ns(SEND, "start")),
        "POST /checkout": (None, ns(SEND, "start") - ns(WEB, "start")),
    }
    assert set(steps) == set(expected)
    for name, (wait, own) in expected.items():
        assert steps[name].self_ms == pytest.approx(own / MS), name
        if wait is None:
            assert steps[name].queue_wait_ms is None, name
        else:
            assert steps[name].queue_wait_ms == pytest.approx(wait / MS), name
    # Nothing overlaps and the chain begins at the trace's start: it covers the trace.
    assert covered == pytest.approx(duration)
    assert [s.span.name for s in path.steps] == sorted(steps, key=lambda n: steps[n].span.start_ns)
    what, step = path.dominant
    assert (what, step.span.name, step.span.service) == ("processing", "process emails", "mailer")


def test_critical_path_counts_concurrent_children_once(tmp_path):
    """A job with two queries in parallel: the one still running later is on the path."""
    job = otlp_span("b000000000000001", "process jobs", CONSUMER, 0, 50, destination="jobs")
    first = otlp_span("b000000000000002", "GET /a", CLIENT, 5, 30, parent=job["spanId"])
    second = otlp_span("b000000000000003", "GET /b", CLIENT, 10, 45, parent=job["spanId"])
    path = path_of(otlp_file(tmp_path, "fanout.json", {"worker": [job, first, second]}))
    steps = {step.span.name: step for step in path.steps}
    # Back from the job's end: the job alone, then GET /b back to its start, then GET /a
    # (still running when GET /b started) back to its own start, then the job alone again.
    assert steps["process jobs"].self_ms == pytest.approx(
        ((ns(job, "end") - ns(second, "end")) + (ns(first, "start") - ns(job, "start"))) / MS)
    assert steps["GET /b"].self_ms == pytest.approx((ns(second, "end") - ns(second, "start")) / MS)
    assert steps["GET /a"].self_ms == pytest.approx((ns(second, "start") - ns(first, "start")) / MS)
    assert sum(s.self_ms for s in path.steps) == pytest.approx(path.trace.duration_ms)


def test_a_consumer_that_ran_inside_another_span_is_reached_through_its_link(tmp_path):
    """The consumer's parent is the loop it ran in; its message is a link to the send span.
    The path goes back through the link (the queue wait), and the edge is paired by it."""
    web = otlp_span("c000000000000001", "POST /jobs", SERVER, 0, 10)
    send = otlp_span("c000000000000002", "send jobs", PRODUCER, 2, 3, parent=web["spanId"],
                     destination="jobs")
    loop = otlp_span("c000000000000003", "poll loop", INTERNAL, 1, 40)
    process = otlp_span("c000000000000004", "process jobs", CONSUMER, 20, 38,
                        parent=loop["spanId"], destination="jobs", wait_ms=17.0,
                        links=[(TRACE, send["spanId"])])
    path_file = otlp_file(tmp_path, "ambient.json", {"web": [web, send], "worker": [loop, process]})
    path = path_of(path_file)
    steps = {step.span.name: step for step in path.steps}
    wait_start = max(ns(process, "start") - wait_ns(process), ns(send, "start"))
    assert steps["process jobs"].queue_wait_ms == pytest.approx((ns(process, "start") - wait_start) / MS)
    assert steps["send jobs"].self_ms == pytest.approx((wait_start - ns(send, "start")) / MS)
    assert steps["POST /jobs"].self_ms == pytest.approx((ns(send, "start") - ns(web, "start")) / MS)
    assert steps["poll loop"].self_ms == pytest.approx((ns(loop, "end") - ns(process, "end")) / MS)
    assert path.total_ms == pytest.approx(path.trace.duration_ms)

    (edge,) = [e for e in edge_stats(read_spans(path_file)) if e.consumer_service is not None]
    assert (edge.producer_service, edge.destination, edge.consumer_service) == ("web", "jobs", "worker")
    assert edge.sent == 1 and edge.unpaired == 0


# ------------------------------------------------------------- spans made by hoptrace ---

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


LONG_QUEUE = "amq.default:shipping-notifications-eu-west-1:shipping-notifications-eu-west-1"


@pytest.fixture
def traffic(tmp_path):
    """api sends 5 orders (billing handles 3, one of them fails), 2 audit records nobody
    consumes, and 4 messages to a long-named queue that the notifier handles."""
    path = tmp_path / "traffic.jsonl"
    services = Services(path)
    try:
        pending = []
        for n in range(5):
            with services.service("api"), hoptrace.transaction(f"order {n}"):
                with hoptrace.produce_scope({}, "orders", "kafka") as send:
                    pending.append(send.carrier)
                if n < 2:
                    with hoptrace.produce_scope({}, "audit", "kafka"):
                        pass
        for n, headers in enumerate(pending[:3]):
            with services.service("billing"), contextlib.suppress(RuntimeError):
                with hoptrace.consume_scope(headers, "orders", "kafka"):
                    if n == 2:
                        raise RuntimeError("card declined")
        for n in range(4):
            with services.service("shipping-notifications"), hoptrace.transaction(f"ship {n}"):
                with hoptrace.produce_scope({}, LONG_QUEUE, "rabbitmq") as send:
                    headers = send.carrier
            with services.service("notifier"), hoptrace.consume_scope(headers, LONG_QUEUE, "rabbitmq"):
                pass
    finally:
        services.shutdown()
    return path


def test_throughput_and_unpaired_sends_per_edge(traffic):
    spans = read_spans(traffic)
    edges = {(e.producer_service, e.destination, e.consumer_service): e for e in edge_stats(spans)}
    sends = [s for s in spans if s.kind == "PRODUCER"]
    billing = [s for s in spans if s.kind == "CONSUMER" and s.service == "billing"]
    orders = edges[("api", "orders", "billing")]
    assert orders.count == len(billing)
    assert orders.sent == sum(1 for s in sends if s.destination == "orders")
    assert orders.unpaired == orders.sent - len(billing) > 0
    window = (max(s.end_ns for s in billing) - min(s.start_ns for s in billing)) / 1e9
    assert orders.window_s == window
    assert orders.throughput_per_s == pytest.approx(len(billing) / window)
    assert orders.errors == sum(1 for s in billing if s.is_error) == 1
    # Nobody consumed the audit records: a row of their own, every send unpaired.
    audit = edges[("api", "audit", None)]
    assert audit.count == 0 and audit.sent == audit.unpaired == sum(1 for s in sends if s.destination == "audit")
    report = json.loads(CliRunner().invoke(main, ["stats", str(traffic), "--json"]).output)
    (row,) = [e for e in report["edges"] if e["destination"] == "orders"]
    assert row["unpaired_sends"] == orders.unpaired and row["sent"] == orders.sent
    assert row["throughput_per_s"] == pytest.approx(orders.throughput_per_s)
    (row,) = [e for e in report["edges"] if e["destination"] == "audit"]
    assert row["consumer_service"] is None and row["unpaired_sends"] == audit.sent


def test_batch_sends_and_redeliveries_count_messages_not_spans(tmp_path):
    """A batch send of 3 handled twice is 1 unpaired; one send handled twice (a redelivery)
    is none, never a negative count."""
    batch = otlp_span("d000000000000001", "send events", PRODUCER, 0, 1, destination="events",
                      extra={semconv.MESSAGING_BATCH_MESSAGE_COUNT: 3})
    single = otlp_span("d000000000000002", "send events", PRODUCER, 2, 3, destination="events")
    consumers = [
        otlp_span(f"d00000000000001{n}", "process events", CONSUMER, 5 + n, 6 + n,
                  parent=parent["spanId"], destination="events")
        for n, parent in enumerate([batch, batch, single, single])
    ]
    path = otlp_file(tmp_path, "batch.json", {"producer": [batch, single], "consumer": consumers})
    (edge,) = edge_stats(read_spans(path))
    batch_size = 3
    assert edge.sent == batch_size + 1
    assert edge.unpaired == (batch_size - 2) + max(0, 1 - 2)


def test_link_mode_consumers_make_edges_and_their_wait_is_named(tmp_path):
    """Link mode, as hoptrace records it: the consumer starts a new trace that links to the
    send span. The edge is counted; the consumer trace's path says the wait came before it."""
    path = tmp_path / "link.jsonl"
    services = Services(path)
    hoptrace.configure(link_mode="link")
    try:
        for n in range(3):
            with services.service("api"), hoptrace.transaction(f"t{n}"):
                with hoptrace.produce_scope({}, "jobs", "kafka") as send:
                    headers = send.carrier
            with services.service("jobs-worker"), hoptrace.consume_scope(headers, "jobs", "kafka"):
                pass
    finally:
        services.shutdown()
    spans = read_spans(path)
    consumers = [s for s in spans if s.kind == "CONSUMER"]
    sends = {s.span_id: s for s in spans if s.kind == "PRODUCER"}
    assert all(s.parent_span_id is None and s.links[0]["span_id"] in sends for s in consumers)
    (edge,) = edge_stats(spans)
    assert (edge.producer_service, edge.destination, edge.consumer_service) == ("api", "jobs", "jobs-worker")
    assert edge.count == len(consumers) and edge.unpaired == 0
    # edge_stats gave each consumer its send span's start (another trace): the wait is clamped.
    consumer = consumers[0]
    path_obj = critical_path(group_traces(spans)[consumer.trace_id])
    assert path_obj.waited_before_ms == consumer.queue_wait_ms is not None
    assert path_obj.total_ms <= path_obj.trace.duration_ms


# ------------------------------------------------------------------ the text at a width ---

def stats_text(path, columns: int, *args: str) -> str:
    result = CliRunner().invoke(main, ["stats", str(path), *args], env={"COLUMNS": str(columns)},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def figures(edge: dict[str, Any], wide: bool) -> list[str]:
    """The cells of an edge's row, formatted from the JSON report's numbers."""
    def ms(value):
        return format_ms(value) if value is not None else "-"

    wait, proc = edge["queue_wait_ms"], edge["processing_ms"]
    rate = edge["throughput_per_s"]
    cells = [str(edge["count"]), "-" if rate is None else
             f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}",
             ms(wait["p50"]), ms(wait["p95"])]
    if wide:
        cells.append(ms(wait["p99"]))
    cells.append(ms(proc["p50"]))
    if wide:
        cells += [ms(proc["p95"]), ms(proc["p99"])]
    cells.append(f"{edge['error_rate']:.1%}" if edge["consumer_service"] is not None else "-")
    if wide:
        cells.append(str(edge["sent"]))
    cells.append(str(edge["unpaired_sends"]))
    return cells


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("wide", [False, True])
def test_stats_fits_the_width_and_never_cuts_a_figure(traffic, columns, wide):
    args = ("--wide",) if wide else ()
    text = stats_text(traffic, columns, *args)
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= columns
    assert "…" not in text
    report = json.loads(stats_text(traffic, columns, "--json"))
    for edge in report["edges"]:
        # Each figure whole, in order, on one line: the edge's line, or the line(s) below its name.
        cells = figures(edge, wide)
        row = re.compile(r"(?:^|\s)" + r"\s+".join(re.escape(c) for c in cells) + r"$")
        if not wide or columns >= 120:
            assert any(row.search(line) for line in lines), (cells, text)
        else:  # --wide at 80: the figures continue on a second line
            pairs = [a + " " + b for a, b in itertools.pairwise(lines)]
            assert any(row.search(pair) for pair in pairs), (cells, text)
    for t in report["slowest_traces"]:
        assert t["trace_id"] in text and t["transaction_id"] in text
        assert re.search(rf"{re.escape(format_ms(t['duration_ms']))}\s+{t['spans']}\s+{t['errors']}\s", text)
    squeezed = re.sub(r"\s+", "", text)  # a name too long for the width is folded, not cut
    for step in report["critical_path"]["steps"]:
        assert re.sub(r"\s+", "", step["name"]) in squeezed
        assert format_ms(step["self_ms"]) in text
    # Wider is used when given: at 120 a slowest trace and its transaction share a line.
    first = report["slowest_traces"][0]
    same_line = any(first["trace_id"] in line and first["transaction_id"] in line for line in lines)
    assert same_line == (columns >= 120)


@pytest.mark.parametrize("columns", [80, 120])
def test_a_long_span_name_on_the_critical_path_is_folded_not_cut(traffic, columns):
    spans = read_spans(traffic)
    notify = sorted({s.trace_id for s in spans if s.service == "notifier"})[0]
    text = stats_text(traffic, columns, "--trace", notify)
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= columns and "…" not in text
    path = critical_path(group_traces(spans)[notify])
    consumer = next(step for step in path.steps if step.span.service == "notifier")
    assert len(consumer.span.name) > 80
    head = lines.index(next(line for line in lines if line.startswith("critical path of trace")))
    table = "".join(lines[head + 1:])
    assert re.sub(r"\s+", "", consumer.span.name) in re.sub(r"\s+", "", table)
    # Its figures stay whole on the line under the name.
    figures_line = re.compile(
        r"notifier\s+" + re.escape(format_ms(consumer.queue_wait_ms)) + r"\s+"
        + re.escape(format_ms(consumer.self_ms)) + r"\s+\d+%$"
    )
    assert any(figures_line.search(line) for line in lines), text


def test_piped_output_honours_columns(traffic):
    narrow = stats_text(traffic, 60)
    assert max(cell_len(line) for line in narrow.splitlines()) <= 60
    assert "…" not in narrow
    result = CliRunner().invoke(main, ["stats", str(traffic)], env={"COLUMNS": None})
    assert max(cell_len(line) for line in result.output.splitlines()) > 80  # 160 by default
