"""``hoptrace view/stats --jaeger/--tempo`` against a fake backend on a local HTTP server.

The fake speaks Jaeger's api/v3 as Jaeger v2 answers it (checked against a running Jaeger
v1.76.0 / v2.13.0): OTLP JSON wrapped in ``{"result": …}`` chunks, a 404 with "No traces
found" for an empty search, at most ``query.num_traces`` traces per search, newest first.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from hoptrace.cli import main
from hoptrace.cli.backends import (
    BackendError,
    JaegerReader,
    TempoReader,
    TimeWindow,
    fetch_window,
    parse_duration,
    parse_time,
)

BASE_NS = 1_700_000_000 * 1_000_000_000
Handler = Callable[[str, dict[str, list[str]]], tuple[int, bytes]]


class FakeBackend:
    """An HTTP server whose answers come from ``self.handler(path, query)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.handler: Handler = lambda path, query: (404, b"{}")
        self.release = threading.Event()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                fake.requests.append((parts.path, query))
                status, body = fake.handler(parts.path, query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    yield fake
    fake.close()


def _span(trace_id: str, span_id: str, parent: str | None, name: str, kind: int, start: int,
          duration: int, attributes: dict[str, str] | None = None) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + duration),
        "attributes": [
            {"key": k, "value": {"stringValue": v}} for k, v in (attributes or {}).items()
        ],
        "status": {},
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _hop(index: int, start: int) -> dict[str, list[dict[str, Any]]]:
    """One trace: api (send orders) → worker (process orders), keyed by service."""
    trace_id = f"{index:032x}"
    send_id, process_id = f"{index:08x}{1:08x}", f"{index:08x}{2:08x}"
    dest = {"messaging.destination.name": "orders", "messaging.system": "kafka"}
    return {
        "api": [_span(trace_id, send_id, None, "send orders", 4, start, 1_000_000, dest)],
        "worker": [
            _span(trace_id, process_id, send_id, "process orders", 5, start + 3_000_000,
                  2_000_000, dest)
        ],
    }


def _otlp(traces: list[dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            }
            for trace_ in traces
            for service, spans in trace_.items()
        ]
    }


def _ns(stamp: str) -> int:
    return parse_time(stamp)


class FakeJaeger:
    """Jaeger's api/v3 over a list of traces; one search answers at most num_traces."""

    def __init__(self, traces: list[dict[str, list[dict[str, Any]]]], chunked: bool = False):
        self.traces = traces
        self.chunked = chunked

    @staticmethod
    def start_of(trace_: dict[str, list[dict[str, Any]]]) -> int:
        return min(int(s["startTimeUnixNano"]) for spans in trace_.values() for s in spans)

    def __call__(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        if path == "/api/v3/services":
            names = sorted({service for t in self.traces for service in t} | {"jaeger"})
            return 200, json.dumps({"services": names}).encode()
        if path.startswith("/api/v3/traces/"):
            wanted = path.rsplit("/", 1)[1]
            found = [t for t in self.traces if t["api"][0]["traceId"] == wanted]
            if not found:
                return 404, b'{"error":{"httpCode":404,"message":"No traces found"}}'
            return 200, json.dumps({"result": _otlp(found)}).encode()
        if path == "/api/v3/traces":
            service = query["query.service_name"][0]
            low = _ns(query["query.start_time_min"][0])
            high = _ns(query["query.start_time_max"][0])
            limit = int(query["query.num_traces"][0])
            hits = [
                t for t in self.traces
                if service in t and low <= self.start_of(t) <= high
            ]
            hits.sort(key=self.start_of, reverse=True)
            hits = hits[:limit]
            if not hits:
                return 404, b'{"error":{"httpCode":404,"message":"No traces found"}}'
            if self.chunked:  # Jaeger streams one {"result": …} chunk after another
                body = b"".join(json.dumps({"result": _otlp([t])}).encode() for t in hits)
                return 200, body
            return 200, json.dumps({"result": _otlp(hits)}).encode()
        return 404, b"404 page not found"


def _traces(count: int, gap_ns: int = 1_000_000_000) -> list[dict[str, list[dict[str, Any]]]]:
    return [_hop(i + 1, BASE_NS + i * gap_ns) for i in range(count)]


WINDOW = TimeWindow(BASE_NS - 10**9, BASE_NS + 3600 * 10**9)
WINDOW_ARGS = ["--start", str(WINDOW.start_ns / 1e9), "--end", str(WINDOW.end_ns / 1e9)]


# ------------------------------------------------------------------ the reader ---


def test_a_full_page_splits_the_window_until_every_trace_is_read(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(37))
    pages: list[tuple[int, int, int]] = []
    result = fetch_window(
        JaegerReader(backend.url), ["api"], WINDOW, page_size=5,
        on_page=lambda *p: pages.append(p),
    )
    assert sorted(result.traces) == [f"{i:032x}" for i in range(1, 38)]
    assert not result.truncated
    # every trace came back whole: both spans, the consumer's parent the producer's send
    for spans in result.traces.values():
        by_name = {s.name: s for s in spans}
        assert by_name["process orders"].parent_span_id == by_name["send orders"].span_id
        assert by_name["process orders"].service == "worker"
    searches = [q for path, q in backend.requests if path == "/api/v3/traces"]
    assert len(searches) > 37 // 5  # more than one page was needed
    assert all(q["query.num_traces"] == ["5"] for q in searches)
    assert pages[-1][0] == 37 and pages[-1][1] == pages[-1][2] == len(searches)


def test_max_traces_keeps_the_newest(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(30))
    result = fetch_window(JaegerReader(backend.url), ["api"], WINDOW, page_size=4, max_traces=10)
    assert result.truncated
    assert len(result.traces) == 10
    assert sorted(result.traces) == [f"{i:032x}" for i in range(21, 31)]


def test_streamed_result_chunks_are_all_read(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(3), chunked=True)
    page = JaegerReader(backend.url).search("api", WINDOW, 10)
    assert sorted(page) == [f"{i:032x}" for i in (1, 2, 3)]
    assert all(len(spans) == 2 for spans in page.values())


def test_a_jaeger_without_spans_has_no_services(backend: FakeBackend) -> None:
    backend.handler = lambda path, query: (200, b"{}")  # what an empty Jaeger v2 answers
    assert JaegerReader(backend.url).services() == []
    result = _run("stats", "--jaeger", backend.url)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: Jaeger at {backend.url} has no traces of any service"


def test_no_traces_found_is_an_empty_page(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger([])
    assert JaegerReader(backend.url).search("api", WINDOW, 10) == {}


def test_search_sends_rfc3339_times_with_nanoseconds(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger([])
    JaegerReader(backend.url).search("api", TimeWindow(BASE_NS + 5, BASE_NS + 10**9), 7)
    ((_, query),) = backend.requests
    stamp = datetime.fromtimestamp(BASE_NS / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert query["query.start_time_min"] == [f"{stamp}.000000005Z"]
    assert query["query.service_name"] == ["api"]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"<html>hello</html>", "something that is not JSON"),
        (200, b'{"result": {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "x"}]}]}]}}',
         "bad OTLP JSON"),
        (200, b'{"result": {"nothing": 1}}', "bad OTLP JSON"),
        (500, b'{"error":{"httpCode":500,"message":"search depth must be greater than 0"}}',
         "HTTP 500: search depth must be greater than 0"),
        (502, b"Bad Gateway", "HTTP 502: Bad Gateway"),
    ],
)
def test_garbage_is_one_clear_error(
    backend: FakeBackend, status: int, body: bytes, expected: str
) -> None:
    backend.handler = lambda path, query: (status, body)
    with pytest.raises(BackendError, match=expected):
        JaegerReader(backend.url).search("api", WINDOW, 10)


def test_a_backend_that_is_down_is_one_clear_error() -> None:
    fake = FakeBackend()
    url = fake.url
    fake.close()  # nothing listens on that port any more
    with pytest.raises(BackendError, match=f"cannot reach Jaeger at {url}"):
        JaegerReader(url).services()


def test_a_backend_that_hangs_times_out(backend: FakeBackend) -> None:
    def hang(path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        backend.release.wait(30)
        return 200, b"{}"

    backend.handler = hang
    with pytest.raises(BackendError, match=r"did not answer within 0\.2s"):
        JaegerReader(backend.url, timeout=0.2).services()


def test_tempo_search_then_each_trace(backend: FakeBackend) -> None:
    traces = _traces(3)

    def tempo(path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        if path == "/api/search":
            assert query["tags"] == ["service.name=api"]
            found = [{"traceID": t["api"][0]["traceId"].lstrip("0")} for t in traces]
            return 200, json.dumps({"traces": found}).encode()
        trace_id = path.rsplit("/", 1)[1]
        match = [t for t in traces if t["api"][0]["traceId"] == trace_id]
        return 200, json.dumps({"batches": _otlp(match)["resourceSpans"]}).encode()

    backend.handler = tempo
    result = fetch_window(TempoReader(backend.url), ["api"], WINDOW, page_size=10)
    assert sorted(result.traces) == [f"{i:032x}" for i in (1, 2, 3)]
    assert all(len(spans) == 2 for spans in result.traces.values())


def test_durations_and_times() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("90") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_time("2023-11-14T22:13:20Z") == BASE_NS
    assert parse_time("2023-11-14T22:13:20.5") == BASE_NS + 500_000_000
    assert parse_time("1700000000") == BASE_NS
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


# --------------------------------------------------------------------- the CLI ---


def _run(*args: str) -> Any:
    # click < 8.2 mixes stderr into the output unless told not to
    separate = "mix_stderr" in inspect.signature(CliRunner).parameters
    runner = CliRunner(mix_stderr=False) if separate else CliRunner()  # type: ignore[call-arg]
    return runner.invoke(main, list(args))


def test_stats_from_jaeger_pairs_every_edge(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(12), chunked=True)
    result = _run("stats", "--jaeger", backend.url, *WINDOW_ARGS, "--page-size", "5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["traces"] == 12 and report["spans"] == 24
    (edge,) = report["edges"]
    assert (edge["producer_service"], edge["consumer_service"], edge["count"]) == (
        "api", "worker", 12
    )
    # without --service: every service but Jaeger's own
    searched = {q["query.service_name"][0] for p, q in backend.requests if p == "/api/v3/traces"}
    assert searched == {"api", "worker"}


def test_view_one_trace_from_jaeger(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(3))
    trace_id = f"{2:032x}"
    result = _run("view", "--jaeger", backend.url, "--trace", trace_id)
    assert result.exit_code == 0, result.output
    assert f"trace {trace_id}" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "orders [" in line]
    assert lines[0].startswith("send orders") and lines[1].startswith("  process orders")
    assert [path for path, _ in backend.requests] == [f"/api/v3/traces/{trace_id}"]


def test_view_by_transaction_id_searches_the_window(backend: FakeBackend) -> None:
    traces = _traces(3)
    transaction = "ab" * 16  # as long as a trace ID: no such trace, so the window is searched
    traces[1]["api"][0]["attributes"].append(
        {"key": "hoptrace.transaction.id", "value": {"stringValue": transaction}}
    )
    backend.handler = FakeJaeger(traces)
    result = _run("view", "--jaeger", backend.url, "--trace", transaction, *WINDOW_ARGS)
    assert result.exit_code == 0, result.output
    assert f"trace {2:032x}  transaction {transaction}" in result.stdout
    assert f"trace {1:032x}" not in result.stdout
    paths = [path for path, _ in backend.requests]
    assert paths[0] == f"/api/v3/traces/{transaction}" and "/api/v3/traces" in paths[1:]


def test_view_a_missing_trace_says_so(backend: FakeBackend) -> None:
    backend.handler = FakeJaeger(_traces(3))
    result = _run("view", "--jaeger", backend.url, "--trace", "f" * 32, *WINDOW_ARGS)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: no trace or transaction {'f' * 32!r} in the spans read"


@pytest.mark.parametrize("command", ["view", "stats"])
def test_cli_backend_down_is_one_line_and_exit_1(command: str) -> None:
    fake = FakeBackend()
    url = fake.url
    fake.close()
    result = _run(command, "--jaeger", url, "--service", "api")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: cannot reach Jaeger at {url}")


@pytest.mark.parametrize("command", ["view", "stats"])
def test_cli_garbage_is_one_line_and_exit_1(backend: FakeBackend, command: str) -> None:
    backend.handler = lambda path, query: (200, b"\x89PNG not json at all")
    result = _run(command, "--jaeger", backend.url, "--service", "api")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "not JSON" in lines[0], result.stderr


def test_cli_a_server_that_is_not_http_is_one_line_and_exit_1() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        result = _run("stats", "--jaeger", f"http://127.0.0.1:{port}", "--service", "api")
    finally:
        server.close()
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: Jaeger at http://127.0.0.1:{port} answered something that is not HTTP: "
        "'SSH-2.0-OpenSSH_9.6\\r\\n'\n"
    )


def test_cli_timeout_is_one_line_and_exit_1(backend: FakeBackend) -> None:
    backend.handler = lambda path, query: (backend.release.wait(30), (200, b"{}"))[1]
    result = _run("stats", "--jaeger", backend.url, "--timeout", "0.3")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: Jaeger at {backend.url} did not answer within 0.3s"


def test_cli_needs_exactly_one_source(backend: FakeBackend, tmp_path: Any) -> None:
    spans = tmp_path / "spans.jsonl"
    spans.write_text("")
    both = _run("view", str(spans), "--jaeger", backend.url)
    assert both.exit_code == 2 and "not both" in both.stderr
    neither = _run("stats")
    assert neither.exit_code == 2 and "--jaeger URL" in neither.stderr
    bad_window = _run("stats", "--jaeger", backend.url, "--since", "soon")
    assert bad_window.exit_code == 2 and "not a duration" in bad_window.stderr
