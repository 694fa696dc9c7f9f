"""Read span files: hoptrace's JSON Lines export and the OTel Collector's OTLP JSON file.

Both formats may be mixed line by line. A malformed line raises :class:`SpanFileError`
naming the file and the line number.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import semconv

_loads: Callable[[bytes], Any]
try:  # orjson parses several times faster; the standard library is the fallback.
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

#: Called with the number of bytes read so far.
Progress = Callable[[int], None]

_OTLP_KINDS = {0: "INTERNAL", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_OTLP_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_KIND_NAMES = frozenset(_OTLP_KINDS.values())
_PROGRESS_EVERY = 1 << 14


class SpanFileError(ValueError):
    """A span file that cannot be read: says which file and which line."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


@dataclass(slots=True)
class SpanRecord:
    """One finished span, as read from a span file."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    status_message: str | None = None
    service: str = "unknown"
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Start of the ``send`` span that published this consumer span's message, when the data
    #: has it (set by :func:`link_sends`): the queue wait never reaches back before it.
    send_start_ns: int | None = None

    @property
    def duration_ms(self) -> float:
        """Wall time of the span in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def queue_wait_ms(self) -> float | None:
        """Time the message waited in the queue before this consumer span (ms), if known.

        The recorded wait (``hoptrace.queue_wait_ms``), but never from before the ``send``
        span started when that span is known: a send time cut to the millisecond (a Kafka
        record timestamp) can otherwise fall up to 1 ms before the send.
        """
        value = self.attributes.get(semconv.QUEUE_WAIT_MS)
        if not isinstance(value, (int, float)):
            return None
        wait = float(value)
        send = self.send_start_ns
        if send is not None:
            bound = (self.start_ns - send) / 1e6
            if wait > bound:
                return bound if bound > 0 else 0.0
        return wait

    @property
    def queue_wait_start_ns(self) -> int | None:
        """When the queue wait began (ns since the epoch): never before the ``send`` span."""
        value = self.attributes.get(semconv.QUEUE_WAIT_MS)
        if not isinstance(value, (int, float)):
            return None
        begin = self.start_ns - int(value * 1e6)
        send = self.send_start_ns
        if send is not None and begin < send:
            return min(send, self.start_ns)
        return begin

    @property
    def is_error(self) -> bool:
        """Whether the span ended with an error status."""
        return self.status == "ERROR"

    @property
    def destination(self) -> str | None:
        """The messaging destination of a send / process span, if any."""
        value = self.attributes.get(semconv.MESSAGING_DESTINATION_NAME)
        return value if isinstance(value, str) else None


def _hoptrace_record(obj: dict[str, Any]) -> SpanRecord:
    trace_id = obj["trace_id"]
    span_id = obj["span_id"]
    if type(trace_id) is not str or len(trace_id) != 32:
        raise ValueError(f"trace_id must be 32 hex characters, got {trace_id!r}")
    if type(span_id) is not str or len(span_id) != 16:
        raise ValueError(f"span_id must be 16 hex characters, got {span_id!r}")
    start = obj["start_ns"]
    end = obj["end_ns"]
    if type(start) is not int or type(end) is not int:
        raise ValueError("start_ns and end_ns must be integers (ns since the epoch)")
    kind = obj.get("kind") or "INTERNAL"
    if kind not in _KIND_NAMES:
        raise ValueError(f"unknown span kind {kind!r}")
    return SpanRecord(
        trace_id,
        span_id,
        obj.get("parent_span_id") or None,
        str(obj["name"]),
        kind,
        start,
        end,
        obj.get("status") or "UNSET",
        obj.get("status_message"),
        obj.get("service") or "unknown",
        obj.get("attributes") or {},
        obj.get("links") or [],
        obj.get("events") or [],
    )


def _any_value(value: dict[str, Any]) -> Any:
    """Decode an OTLP JSON AnyValue."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _otlp_attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _otlp_attributes(items: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _any_value(item.get("value") or {}) for item in items or ()}


def _otlp_enum(value: Any, table: dict[int, str], prefix: str) -> str:
    if isinstance(value, int):
        return table.get(value, "UNSET" if table is _OTLP_STATUS else "INTERNAL")
    if isinstance(value, str):
        name = value.removeprefix(prefix)
        return "INTERNAL" if name == "UNSPECIFIED" else name
    return "UNSET" if table is _OTLP_STATUS else "INTERNAL"


def _otlp_hex(value: Any, size: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != size:
        raise ValueError(f"{what} must be {size} hex characters, got {value!r}")
    return value.lower()


def _otlp_records(obj: dict[str, Any]) -> Iterator[SpanRecord]:
    for resource_spans in obj["resourceSpans"]:
        resource = _otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name") or "unknown")
        scopes = resource_spans.get("scopeSpans") or resource_spans.get(
            "instrumentationLibrarySpans"
        ) or []
        for scope_spans in scopes:
            for span in scope_spans.get("spans") or []:
                status = span.get("status") or {}
                yield SpanRecord(
                    _otlp_hex(span.get("traceId"), 32, "traceId"),
                    _otlp_hex(span.get("spanId"), 16, "spanId"),
                    (span.get("parentSpanId") or "").lower() or None,
                    str(span.get("name", "")),
                    _otlp_enum(span.get("kind", 0), _OTLP_KINDS, "SPAN_KIND_"),
                    int(span["startTimeUnixNano"]),
                    int(span["endTimeUnixNano"]),
                    _otlp_enum(status.get("code", 0), _OTLP_STATUS, "STATUS_CODE_"),
                    status.get("message") or None,
                    service,
                    _otlp_attributes(span.get("attributes")),
                    [
                        {
                            "trace_id": str(link.get("traceId", "")).lower(),
                            "span_id": str(link.get("spanId", "")).lower(),
                            "attributes": _otlp_attributes(link.get("attributes")),
                        }
                        for link in span.get("links") or []
                    ],
                    [
                        {
                            "name": event.get("name", ""),
                            "time_ns": int(event.get("timeUnixNano", 0)),
                            "attributes": _otlp_attributes(event.get("attributes")),
                        }
                        for event in span.get("events") or []
                    ],
                )


def otlp_records(document: Any) -> list[SpanRecord]:
    """Every span in one OTLP JSON document (``resourceSpans``, or Tempo's ``batches``).

    Raises ValueError, naming what is wrong, on anything else.
    """
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, got {type(document).__name__}")
    if "resourceSpans" not in document and isinstance(document.get("batches"), list):
        document = {"resourceSpans": document["batches"]}
    if not isinstance(document.get("resourceSpans"), list):
        raise ValueError("no resourceSpans list: not an OTLP JSON trace")
    try:
        return list(_otlp_records(document))
    except KeyError as exc:
        raise ValueError(_describe(exc)) from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed OTLP JSON: {exc}") from None


def _records_of(obj: Any) -> Iterator[SpanRecord]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "resourceSpans" in obj:
        yield from _otlp_records(obj)
    elif "trace_id" in obj:
        yield _hoptrace_record(obj)
    else:
        raise ValueError(
            "neither a hoptrace span (trace_id, span_id, …) nor an OTLP JSON object "
            "(resourceSpans)"
        )


def iter_spans(
    path: str | os.PathLike[str], progress: Progress | None = None
) -> Iterator[SpanRecord]:
    """Yield every span in the file at ``path``; raise SpanFileError on a malformed line."""
    name = os.fspath(path)
    read = 0
    with open(name, "rb") as stream:
        number = 0
        for number, line in enumerate(stream, 1):
            read += len(line)
            if progress is not None and number % _PROGRESS_EVERY == 0:
                progress(read)
            if not line.strip():
                continue
            try:
                obj = _loads(line)
            except ValueError as exc:
                if number == 1 and line.lstrip().startswith(b"{"):
                    # Perhaps one pretty-printed OTLP JSON document rather than JSON Lines.
                    document = _whole_document(name)
                    if document is not None:
                        yield from _document_records(name, document)
                        if progress is not None:
                            progress(os.path.getsize(name))
                        return
                raise SpanFileError(name, number, f"invalid JSON: {exc}") from None
            if type(obj) is dict and "trace_id" in obj:
                try:
                    yield _hoptrace_record(obj)
                except (KeyError, TypeError, ValueError) as exc:
                    raise SpanFileError(name, number, _describe(exc)) from None
                continue
            try:
                records = list(_records_of(obj))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SpanFileError(name, number, _describe(exc)) from None
            yield from records
    if progress is not None:
        progress(read)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


def _whole_document(name: str) -> Any:
    try:
        with open(name, "rb") as stream:
            document = _loads(stream.read())
    except ValueError:
        return None
    return document if isinstance(document, dict) and "resourceSpans" in document else None


def _document_records(name: str, document: dict[str, Any]) -> list[SpanRecord]:
    try:
        return list(_otlp_records(document))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SpanFileError(name, 1, _describe(exc)) from None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Loading a million spans allocates millions of dicts and lists, none of them cyclic; the
    collector's repeated full passes over them would otherwise double the load time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_spans(path: str | os.PathLike[str], progress: Progress | None = None) -> list[SpanRecord]:
    """Return every span in the file at ``path`` (see :func:`iter_spans`)."""
    with paused_gc():
        return list(iter_spans(path, progress))


@dataclass
class Trace:
    """The spans of one trace, with their parent-child tree."""

    trace_id: str
    spans: list[SpanRecord]
    children: dict[str | None, list[SpanRecord]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = {span.span_id for span in self.spans}
        self.spans.sort(key=lambda s: s.start_ns)
        for span in self.spans:
            parent = span.parent_span_id if span.parent_span_id in ids else None
            self.children.setdefault(parent, []).append(span)

    @property
    def roots(self) -> list[SpanRecord]:
        """Spans whose parent is not in the file (the trace's entry points)."""
        return self.children.get(None, [])

    @property
    def start_ns(self) -> int:
        """The earliest span start."""
        return min(span.start_ns for span in self.spans)

    @property
    def end_ns(self) -> int:
        """The latest span end."""
        return max(span.end_ns for span in self.spans)

    @property
    def duration_ms(self) -> float:
        """From the first span's start to the last span's end, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def transaction_id(self) -> str | None:
        """The hoptrace transaction ID carried by the trace's spans, if any."""
        for span in self.spans:
            value = span.attributes.get(semconv.TRANSACTION_ID)
            if isinstance(value, str):
                return value
        return None

    @property
    def error_count(self) -> int:
        """How many spans ended with an error."""
        return sum(1 for span in self.spans if span.is_error)

    def link_sends(self) -> list[SpanRecord]:
        """Give each consumer span the start of its ``send`` span in this trace, if it has it.

        Returns the consumer spans left without one that have links: in link mode their
        ``send`` span is in another trace (see :func:`link_sends`).
        """
        sends = {span.span_id: span for span in self.spans if span.kind == "PRODUCER"}
        unlinked = []
        for span in self.spans:
            if span.kind != "CONSUMER" or span.send_start_ns is not None:
                continue
            send = send_span_of(span, sends)
            if send is not None:
                span.send_start_ns = send.start_ns
            elif span.links:
                unlinked.append(span)
        return unlinked

    def walk(self) -> Iterator[tuple[SpanRecord, int]]:
        """Yield ``(span, depth)`` depth-first, children in start order; each span once.

        A file whose span IDs repeat can make a span its own ancestor: such a cycle is
        walked once, not forever.
        """
        stack = [(span, 0) for span in reversed(self.roots)]
        seen: set[int] = set()
        while stack:
            span, depth = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            yield span, depth
            for child in reversed(self.children.get(span.span_id, [])):
                stack.append((child, depth + 1))


def send_span_of(span: SpanRecord, by_id: Mapping[str, SpanRecord]) -> SpanRecord | None:
    """Return the PRODUCER span whose message ``span`` handles: its parent, else a link."""
    parent = by_id.get(span.parent_span_id) if span.parent_span_id else None
    if parent is not None and parent.kind == "PRODUCER":
        return parent
    for link in span.links:
        linked = by_id.get(str(link.get("span_id")))
        if linked is not None and linked.kind == "PRODUCER":
            return linked
    return None


def link_sends(
    spans: Iterable[SpanRecord], consumers: Iterable[SpanRecord] | None = None
) -> None:
    """Set ``send_start_ns`` on consumer spans whose ``send`` span is among ``spans``.

    ``consumers`` limits it to those spans (default: every CONSUMER span in ``spans``).
    """
    everything = spans if isinstance(spans, list) else list(spans)
    sends = {span.span_id: span for span in everything if span.kind == "PRODUCER"}
    if not sends:
        return
    for span in everything if consumers is None else consumers:
        if span.kind == "CONSUMER":
            send = send_span_of(span, sends)
            if send is not None:
                span.send_start_ns = send.start_ns


def group_traces(spans: Iterable[SpanRecord]) -> dict[str, Trace]:
    """Group spans by trace ID, in order of each trace's first span in the input."""
    grouped: dict[str, list[SpanRecord]] = {}
    for span in spans:
        bucket = grouped.get(span.trace_id)
        if bucket is None:
            grouped[span.trace_id] = [span]
        else:
            bucket.append(span)
    return {trace_id: Trace(trace_id, members) for trace_id, members in grouped.items()}
