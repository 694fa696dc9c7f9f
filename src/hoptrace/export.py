"""A JSON Lines span exporter for the OTel SDK: the file ``hoptrace view`` and ``stats`` read.

::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from hoptrace.export import JsonLinesSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter("spans.jsonl")))

Each finished span becomes one JSON object on its own line::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "name": "process orders", "kind": "CONSUMER", "start_ns": 1700000000000000000,
     "end_ns": 1700000000004000000, "status": "ERROR", "status_message": "ValueError: …",
     "service": "billing", "attributes": {...},
     "links": [{"trace_id": …, "span_id": …, "attributes": {...}}],
     "events": [{"name": "exception", "time_ns": …, "attributes": {...}}]}

Lines are appended, so several processes may export into one file (each write is one line).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .core import diagnostics

_KINDS = {0: "INTERNAL", 1: "SERVER", 2: "CLIENT", 3: "PRODUCER", 4: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in attributes.items()}


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """Return the JSON-ready record of one finished span."""
    context = span.context
    parent = span.parent
    resource = span.resource.attributes if span.resource is not None else {}
    status = span.status
    record: dict[str, Any] = {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": _KINDS.get(span.kind.value, "INTERNAL"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": _STATUS.get(status.status_code.value, "UNSET"),
        "service": resource.get("service.name"),
        "attributes": _attributes(span.attributes),
    }
    if status.description:
        record["status_message"] = status.description
    if span.links:
        record["links"] = [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ]
    if span.events:
        record["events"] = [
            {"name": event.name, "time_ns": event.timestamp,
             "attributes": _attributes(event.attributes)}
            for event in span.events
        ]
    return record


class JsonLinesSpanExporter(SpanExporter):
    """Append each exported span as one JSON line to ``path`` (or to an open text stream)."""

    def __init__(self, path: str | os.PathLike[str] | IO[str]) -> None:
        self._lock = threading.Lock()
        self._owned = not hasattr(path, "write")
        if self._owned:
            target = Path(path)  # type: ignore[arg-type]
            target.parent.mkdir(parents=True, exist_ok=True)
            self._stream: IO[str] | None = open(target, "a", encoding="utf-8")  # noqa: SIM115
        else:
            self._stream = path  # type: ignore[assignment]

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``, one JSON object per line, and flush."""
        try:
            lines = "".join(
                json.dumps(span_to_dict(span), separators=(",", ":"), default=str) + "\n"
                for span in spans
            )
            with self._lock:
                if self._stream is None:
                    return SpanExportResult.FAILURE
                self._stream.write(lines)
                self._stream.flush()
            return SpanExportResult.SUCCESS
        except Exception as exc:
            diagnostics.internal_error("JsonLinesSpanExporter.export", exc)
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the file; spans are already written on every export."""
        with self._lock:
            if self._stream is not None:
                self._stream.flush()
        return True

    def shutdown(self) -> None:
        """Close the file (if this exporter opened it)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None and self._owned:
            stream.close()
