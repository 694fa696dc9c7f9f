"""Read spans back from a tracing backend: Jaeger's api/v3, or Tempo's HTTP API.

Both answer OTLP JSON, which :func:`~.spanfile.otlp_records` already reads. A search names
one service and a time window, and a backend returns at most a page of traces for it: when a
page comes back full, the window is cut in two and each half is asked again, so a large
window is read whole (up to ``max_traces``) whatever the backend's page size.

Every failure (backend down, time-out, an answer that is not OTLP JSON) is a
:class:`BackendError` whose message is one line meant for the user.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from .spanfile import SpanRecord, otlp_records

__all__ = [
    "BackendError",
    "JaegerReader",
    "Page",
    "Reader",
    "TempoReader",
    "TimeWindow",
    "TraceNotFound",
    "fetch_window",
    "make_reader",
    "parse_duration",
    "parse_time",
    "read_backend",
    "source_options",
]

#: Called after every page: (traces read so far, windows done, windows known).
OnPage = Callable[[int, int, int], None]

#: A window narrower than this is not cut further, even when its page is full.
MIN_WINDOW_NS = 1_000_000
JAEGER_SELF_SERVICE = "jaeger"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_FRACTION = re.compile(r"^(.*T\d{2}:\d{2}:\d{2})[.,](\d+)(.*)$")


class _NoProgress:
    """A progress bar that draws nothing (rich < 14.3 prints a newline for a disabled one)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **fields: Any) -> int:
        return 0

    def update(self, *args: Any, **fields: Any) -> None:
        return None


def progress_bar(shown: bool, *columns: Any, **options: Any) -> Any:
    """A rich Progress when ``shown``, else one that writes nothing at all."""
    return Progress(*columns, **options) if shown else _NoProgress()


class BackendError(Exception):
    """The backend could not be read; the message is one line for the user."""


class TraceNotFound(BackendError):
    """The backend has no trace with that ID."""


def parse_duration(text: str) -> float:
    """``"15m"`` → 900.0 seconds; units ms, s, m, h, d, w (seconds when none)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def parse_time(text: str) -> int:
    """An ISO 8601 time (UTC when no offset is given) or seconds since the epoch → ns."""
    value = text.strip()
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    # Python 3.10's fromisoformat takes no "Z" and only 3 or 6 fraction digits: split the
    # fraction off and count it in nanoseconds here.
    split = _FRACTION.match(value)
    fraction = ""
    if split is not None:
        value, fraction = split.group(1) + split.group(3), split.group(2)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601 such as 2025-01-31T14:05:00Z, or epoch seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction + "0" * 9)[:9])


@dataclass(frozen=True)
class TimeWindow:
    """A half-open time range in ns since the epoch."""

    start_ns: int
    end_ns: int

    @classmethod
    def build(cls, since: str | None, start: str | None, end: str | None) -> TimeWindow:
        """From ``--since`` / ``--start`` / ``--end``: end defaults to now, start to end - since."""
        end_ns = parse_time(end) if end else time.time_ns()
        if start:
            start_ns = parse_time(start)
        else:
            start_ns = end_ns - int(parse_duration(since or "1h") * 1e9)
        if start_ns >= end_ns:
            raise ValueError("the time window is empty: --start must be before --end")
        return cls(start_ns, end_ns)

    def halves(self) -> tuple[TimeWindow, TimeWindow]:
        """The two halves of this window."""
        middle = (self.start_ns + self.end_ns) // 2
        return TimeWindow(self.start_ns, middle), TimeWindow(middle, self.end_ns)


#: Traces of one page: trace ID → its spans.
Page = dict[str, list[SpanRecord]]


class Reader(Protocol):
    """What the CLI needs from a backend."""

    url: str
    name: str

    def services(self) -> list[str]: ...

    def search(self, service: str, window: TimeWindow, limit: int) -> Page: ...

    def trace(self, trace_id: str) -> list[SpanRecord]: ...


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"


def _decode_stream(body: bytes) -> list[Any]:
    """One JSON document, or several written one after another (a streamed answer)."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return documents
        document, index = decoder.raw_decode(text, index)
        documents.append(document)


class _HttpReader:
    name = "backend"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BackendError(f"{self.name}: not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET → (status, body); a 4xx/5xx answer is returned, not raised."""
        target = self.url + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(target, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except TimeoutError:
            raise BackendError(
                f"{self.name} at {self.url} did not answer within {self.timeout:g}s"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise BackendError(
                    f"{self.name} at {self.url} did not answer within {self.timeout:g}s"
                ) from None
            why = getattr(reason, "strerror", None) or str(reason)
            raise BackendError(f"cannot reach {self.name} at {self.url}: {why}") from None
        except http.client.BadStatusLine as exc:
            line = exc.args[0] if exc.args else ""
            raise BackendError(
                f"{self.name} at {self.url} answered something that is not HTTP: {line!r}"
            ) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, cut short, …
            raise BackendError(f"cannot read from {self.name} at {self.url}: {exc}") from None

    def _json(self, status: int, body: bytes, what: str) -> list[Any]:
        try:
            documents = _decode_stream(body)
        except (UnicodeDecodeError, ValueError):
            snippet = body[:60].decode("utf-8", "replace").replace("\n", " ")
            raise BackendError(
                f"{self.name} at {self.url} answered {what} with HTTP {status} and "
                f"something that is not JSON: {snippet!r}"
            ) from None
        if not documents:
            raise BackendError(f"{self.name} at {self.url} answered {what} with an empty body")
        return documents

    def _fail(self, status: int, body: bytes, what: str) -> BackendError:
        message = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str) and error:
            message = error
        return BackendError(
            f"{self.name} at {self.url} answered {what} with HTTP {status}: {message}"
        )

    def _records(self, document: Any, what: str) -> list[SpanRecord]:
        try:
            return otlp_records(document)
        except ValueError as exc:
            raise BackendError(
                f"{self.name} at {self.url} answered {what} with bad OTLP JSON: {exc}"
            ) from None


def _pages_by_trace(records: list[SpanRecord]) -> Page:
    page: Page = {}
    for record in records:
        page.setdefault(record.trace_id, []).append(record)
    return page


class JaegerReader(_HttpReader):
    """Jaeger's query service through its api/v3 (Jaeger v2, and the v1 releases with it)."""

    name = "Jaeger"

    def services(self) -> list[str]:
        """Every service Jaeger has spans of."""
        status, body = self._get("/api/v3/services")
        if status != 200:
            raise self._fail(status, body, "/api/v3/services")
        document = self._json(status, body, "/api/v3/services")[0]
        # an empty Jaeger answers {}: proto3's JSON leaves out an empty list
        services = document.get("services", []) if isinstance(document, dict) else None
        if not isinstance(services, list):
            raise BackendError(
                f"{self.name} at {self.url} answered /api/v3/services without a services list"
            )
        return sorted(str(s) for s in services)

    def _results(self, status: int, body: bytes, what: str) -> list[SpanRecord]:
        records: list[SpanRecord] = []
        for chunk in self._json(status, body, what):
            if not isinstance(chunk, dict):
                raise BackendError(f"{self.name} at {self.url} answered {what} with bad JSON")
            if "error" in chunk:
                raise self._fail(status, json.dumps(chunk).encode(), what)
            records.extend(self._records(chunk.get("result", chunk), what))
        return records

    def search(self, service: str, window: TimeWindow, limit: int) -> Page:
        """At most ``limit`` traces with spans of ``service`` starting in ``window``."""
        what = "/api/v3/traces"
        status, body = self._get(
            what,
            {
                "query.service_name": service,
                "query.start_time_min": _rfc3339(window.start_ns),
                "query.start_time_max": _rfc3339(window.end_ns),
                "query.num_traces": str(limit),
            },
        )
        if status == 404 and b"No traces found" in body:
            return {}
        if status != 200:
            raise self._fail(status, body, what)
        return _pages_by_trace(self._results(status, body, what))

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every span of one trace; BackendError if Jaeger has none."""
        what = f"/api/v3/traces/{trace_id}"
        status, body = self._get(what)
        if status == 404:
            raise TraceNotFound(f"{self.name} at {self.url} has no trace {trace_id}")
        if status != 200:
            raise self._fail(status, body, what)
        return self._results(status, body, what)

    def trace_url(self, trace_id: str) -> str:
        """The API URL that answers this trace as OTLP JSON."""
        return f"{self.url}/api/v3/traces/{trace_id}"

    def ui_url(self, trace_id: str) -> str | None:
        """The UI page of this trace, or None when this Jaeger serves no UI (a source build)."""
        try:
            status, body = self._get("/")
        except BackendError:
            return None
        if status != 200 or b"not the Jaeger UI" in body or b"<html" not in body.lower():
            return None
        return f"{self.url}/trace/{trace_id}"


class TempoReader(_HttpReader):
    """Grafana Tempo's HTTP API: ``/api/search`` and ``/api/traces/{id}``."""

    name = "Tempo"

    def services(self) -> list[str]:
        """Every ``service.name`` Tempo has seen."""
        what = "/api/search/tag/service.name/values"
        status, body = self._get(what)
        if status != 200:
            raise self._fail(status, body, what)
        document = self._json(status, body, what)[0]
        values = document.get("tagValues") if isinstance(document, dict) else None
        if not isinstance(values, list):
            raise BackendError(f"{self.name} at {self.url} answered {what} without tagValues")
        return sorted(str(v) for v in values)

    def search(self, service: str, window: TimeWindow, limit: int) -> Page:
        """At most ``limit`` traces of ``service`` in ``window``, each fetched whole."""
        what = "/api/search"
        start_s = window.start_ns // 1_000_000_000
        end_s = -(-window.end_ns // 1_000_000_000)  # Tempo takes whole seconds
        status, body = self._get(
            what,
            {
                "tags": f"service.name={service}",
                "start": str(start_s),
                "end": str(max(end_s, start_s + 1)),
                "limit": str(limit),
            },
        )
        if status != 200:
            raise self._fail(status, body, what)
        document = self._json(status, body, what)[0]
        found = document.get("traces") if isinstance(document, dict) else None
        if not isinstance(found, list):
            raise BackendError(f"{self.name} at {self.url} answered {what} without a traces list")
        page: Page = {}
        for entry in found:
            trace_id = str(entry.get("traceID", "")) if isinstance(entry, dict) else ""
            trace_id = trace_id.lower().rjust(32, "0")  # Tempo drops leading zeros
            if not _TRACE_ID.match(trace_id):
                raise BackendError(f"{self.name} at {self.url} answered a bad trace ID {entry!r}")
            page[trace_id] = self.trace(trace_id)
        return page

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every span of one trace; BackendError if Tempo has none."""
        what = f"/api/traces/{trace_id}"
        status, body = self._get(what)
        if status == 404:
            raise TraceNotFound(f"{self.name} at {self.url} has no trace {trace_id}")
        if status != 200:
            raise self._fail(status, body, what)
        document = self._json(status, body, what)[0]
        if isinstance(document, dict) and isinstance(document.get("trace"), dict):
            document = document["trace"]  # /api/v2/traces wraps it
        return self._records(document, what)


def _merge(into: Page, page: Page) -> None:
    for trace_id, spans in page.items():
        known = into.get(trace_id)
        if known is None:
            into[trace_id] = spans
            continue
        have = {span.span_id for span in known}
        known.extend(span for span in spans if span.span_id not in have)


@dataclass
class FetchResult:
    """Traces read from a backend, and what stopped the reading short."""

    traces: Page
    truncated: bool = False
    crowded_windows: int = 0

    @property
    def spans(self) -> list[SpanRecord]:
        """Every span of every trace read."""
        return [span for spans in self.traces.values() for span in spans]


def fetch_window(
    reader: Reader,
    services: list[str],
    window: TimeWindow,
    *,
    page_size: int = 100,
    max_traces: int = 1000,
    on_page: OnPage | None = None,
) -> FetchResult:
    """Read every trace of ``services`` in ``window``, cutting any window whose page is full.

    Stops at ``max_traces`` (``truncated``). A window narrower than 1 ms that still fills a
    page is counted in ``crowded_windows`` and kept as read: a bigger page would be needed.
    """
    if page_size < 1 or max_traces < 1:
        raise ValueError("page_size and max_traces must be at least 1")
    result = FetchResult({})
    pending = [(service, window) for service in reversed(services)]
    done = 0
    while pending:
        if len(result.traces) >= max_traces:
            result.truncated = True
            break
        service, part = pending.pop()
        page = reader.search(service, part, page_size)
        _merge(result.traces, page)
        done += 1
        if len(page) >= page_size:
            if part.end_ns - part.start_ns > MIN_WINDOW_NS:
                early, late = part.halves()
                pending.append((service, early))
                pending.append((service, late))  # newest first, like the backends
            else:
                result.crowded_windows += 1
        if on_page is not None:
            on_page(len(result.traces), done, done + len(pending))
    if len(result.traces) > max_traces:
        newest = sorted(
            result.traces, key=lambda t: min(s.start_ns for s in result.traces[t]), reverse=True
        )
        result.traces = {t: result.traces[t] for t in newest[:max_traces]}
        result.truncated = True
    return result


def is_trace_id(text: str) -> bool:
    """Whether ``text`` is a whole 32-hex-digit trace ID."""
    return bool(_TRACE_ID.match(text))


# ------------------------------------------------------------------ the CLI side ---

_F = TypeVar("_F", bound=Callable[..., Any])

_SOURCE_OPTIONS = (
    click.option(
        "--jaeger",
        metavar="URL",
        help="Read from Jaeger's query API (e.g. http://127.0.0.1:16686).",
    ),
    click.option(
        "--tempo",
        metavar="URL",
        help="Read from Grafana Tempo's HTTP API (e.g. http://127.0.0.1:3200).",
    ),
    click.option(
        "--service",
        metavar="NAME",
        help="With --jaeger/--tempo: traces with spans of this service (default: every service).",
    ),
    click.option(
        "--since",
        default="1h",
        show_default=True,
        metavar="DURATION",
        help="With --jaeger/--tempo: traces started this long before --end (90s, 15m, 2h, 1d).",
    ),
    click.option(
        "--start",
        metavar="TIME",
        help="Window start: ISO 8601 (UTC unless it names an offset) or epoch seconds.",
    ),
    click.option("--end", metavar="TIME", help="Window end (default: now)."),
    click.option(
        "--max-traces",
        default=1000,
        show_default=True,
        type=click.IntRange(min=1),
        help="With --jaeger/--tempo: read at most this many traces (the newest).",
    ),
    click.option(
        "--page-size",
        default=100,
        show_default=True,
        type=click.IntRange(min=1),
        help="Traces asked per request; a full page splits its time window in two.",
    ),
    click.option(
        "--timeout",
        default=10.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds to wait for each answer of the backend.",
    ),
)


def source_options(command: _F) -> _F:
    """Add the --jaeger/--tempo source options to a click command."""
    for option in reversed(_SOURCE_OPTIONS):
        command = option(command)
    return command


def make_reader(source: dict[str, Any]) -> JaegerReader | TempoReader | None:
    """The reader the options name, or None when they name no backend."""
    jaeger, tempo = source.get("jaeger"), source.get("tempo")
    if jaeger and tempo:
        raise click.UsageError("give --jaeger or --tempo, not both")
    timeout = float(source.get("timeout") or 10.0)
    try:
        if jaeger:
            return JaegerReader(jaeger, timeout)
        if tempo:
            return TempoReader(tempo, timeout)
    except BackendError as exc:
        raise click.UsageError(str(exc)) from None
    return None


def read_backend(
    reader: JaegerReader | TempoReader,
    source: dict[str, Any],
    trace_id: str | None = None,
    console: Console | None = None,
) -> tuple[list[SpanRecord], str]:
    """Spans from a backend, and a label naming where they came from; exits on failure."""
    err = console or Console(stderr=True, highlight=False)
    try:
        window = TimeWindow.build(source.get("since"), source.get("start"), source.get("end"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since/--start/--end") from None
    try:
        if trace_id is not None and is_trace_id(trace_id):
            try:
                return reader.trace(trace_id.lower()), f"{reader.name} {reader.url}"
            except TraceNotFound:
                pass  # a transaction ID looks the same: search the window for it
        service = source.get("service")
        if service:
            services = [service]
        else:
            services = [s for s in reader.services() if s != JAEGER_SELF_SERVICE]
            if not services:
                raise BackendError(f"{reader.name} at {reader.url} has no traces of any service")
        progress = progress_bar(
            err.is_terminal,
            TextColumn(f"reading {reader.name}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} windows, {task.fields[traces]} traces"),
            console=err,
            transient=True,
        )
        with progress:
            task = progress.add_task("read", total=len(services), traces=0)

            def on_page(traces: int, done: int, known: int) -> None:
                progress.update(task, completed=done, total=known, traces=traces)

            result = fetch_window(
                reader,
                services,
                window,
                page_size=int(source.get("page_size") or 100),
                max_traces=int(source.get("max_traces") or 1000),
                on_page=on_page,
            )
    except BackendError as exc:
        raise click.ClickException(str(exc)) from None
    if result.truncated:
        err.print(
            f"read the newest {len(result.traces)} traces only (--max-traces); "
            "narrow the window or raise the limit for more"
        )
    if result.crowded_windows:
        err.print(
            f"{result.crowded_windows} windows under 1 ms still filled a page: "
            "some traces may be missing (raise --page-size)"
        )
    what = f"service {service}" if service else f"{len(services)} services"
    return result.spans, f"{reader.name} {reader.url} ({what}, {_describe_window(window)})"


def _describe_window(window: TimeWindow) -> str:
    def stamp(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    return f"{stamp(window.start_ns)} to {stamp(window.end_ns)} UTC"
