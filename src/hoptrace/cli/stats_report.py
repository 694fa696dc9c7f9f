"""What ``hoptrace stats`` prints: its JSON document, and tables that fit the given width.

The tables never cut a number or an ID. A row whose cells fit the width takes one line.
Otherwise its name (the edge, the span) takes a line of its own, folded if it must be, and
its figures go on the line below, under the header; figures that still do not fit continue
on one more line, with a header line of their own.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text

from .analysis import CriticalPath, EdgeStats, percentile_summary
from .spanfile import Trace
from .waterfall import format_ms

_GAP = 2
_INDENT = 2
_MIN_LABEL = 12  # narrower than this, names go above their figures, which start at the indent


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cell_len(text))


@dataclass(frozen=True)
class Column:
    """One column of figures: its header, and whether its cells are text (left-aligned)."""

    header: str
    text: bool = False


def _pack(widths: Sequence[int], start: int, hang: int, width: int) -> list[list[int]]:
    """Split column indexes into lines: the first line begins at ``start``, the next at ``hang``."""
    lines: list[list[int]] = [[]]
    position = start
    for index, size in enumerate(widths):
        if lines[-1] and position + _GAP + size > width:
            lines.append([])
            position = hang
        if lines[-1]:
            position += _GAP
        lines[-1].append(index)
        position += size
    return lines


def _line(cells: Sequence[str], columns: Sequence[Column], widths: Sequence[int],
          indexes: Sequence[int], offset: int) -> str:
    parts = []
    for index in indexes:
        cell, size = cells[index], widths[index]
        pad = " " * (size - cell_len(cell))
        parts.append(cell + pad if columns[index].text else pad + cell)
    return (" " * offset + (" " * _GAP).join(parts)).rstrip()


def _fold(text: str, width: int, indent: str = "") -> list[str]:
    """Wrap ``text`` at ``width``, splitting a word only when it alone is wider."""
    return textwrap.wrap(
        text, max(width, 8), subsequent_indent=indent, break_on_hyphens=False
    ) or [""]


def grid(
    width: int,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
    label_header: str = "",
) -> list[tuple[str, str]]:
    """Lay ``rows`` out within ``width``; return ``(line, style)`` pairs (style "" or "bold").

    With ``labels``, each row is named. The names make a first column when the figures leave
    it room: a longer name then takes a line of its own, its figures on the next line, in
    their columns. Else every name goes above its figures, which start at the indent, and
    figures that do not fit one line continue on the next (under the first text column when
    there is room). No cell is ever cut.
    """
    widths = [
        max([cell_len(column.header)] + [cell_len(row[i]) for row in rows])
        for i, column in enumerate(columns)
    ]
    headers = [column.header for column in columns]
    if labels is not None:
        named = _name_column(width, columns, rows, widths, labels, label_header)
        if named is not None:
            return named
    out: list[tuple[str, str]] = []
    start = _INDENT if labels is not None else 0
    packing, hang = _packing_with_hang(width, columns, widths, start)
    offsets = [start] + [hang] * (len(packing) - 1)
    for indexes, offset in zip(packing, offsets, strict=True):
        out.append((_line(headers, columns, widths, indexes, offset), "bold"))
    for number, row in enumerate(rows):
        if labels is not None:
            out.extend((line, "") for line in _fold(labels[number], width, " " * (2 * _INDENT)))
        for indexes, offset in zip(packing, offsets, strict=True):
            out.append((_line(row, columns, widths, indexes, offset), ""))
    return out


def _name_column(
    width: int,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    widths: list[int],
    labels: Sequence[str],
    label_header: str,
) -> list[tuple[str, str]] | None:
    """The names as a first column, when the figures leave it room; else None.

    A name longer than the column takes a line of its own above its figures.
    """
    figures = sum(widths) + _GAP * (len(widths) - 1)
    longest = max([cell_len(label) for label in labels] + [cell_len(label_header)])
    label_width = min(longest, width - _GAP - figures)
    if label_width != longest and label_width < max(cell_len(label_header), _MIN_LABEL):
        return None
    everything = range(len(columns))
    gap = " " * _GAP
    headers = [column.header for column in columns]
    out = [(_pad(label_header, label_width) + gap
            + _line(headers, columns, widths, everything, 0), "bold")]
    for label, row in zip(labels, rows, strict=True):
        figures_line = _line(row, columns, widths, everything, 0)
        if cell_len(label) <= label_width:
            out.append(((_pad(label, label_width) + gap + figures_line).rstrip(), ""))
        else:
            out.extend((line, "") for line in _fold(label, width, " " * _INDENT))
            out.append((" " * (label_width + _GAP) + figures_line, ""))
    return out


def _packing_with_hang(
    width: int, columns: Sequence[Column], widths: list[int], start: int
) -> tuple[list[list[int]], int]:
    """Columns packed into lines; continuation lines hang under the first text column of
    the first line when the rest still fits there, else at ``start``."""
    packing = _pack(widths, start, start, width)
    if len(packing) > 1:
        offset = start
        for index in packing[0]:
            if columns[index].text and offset > start:
                retry = _pack(widths, start, offset, width)
                if _fits(retry, widths, start, offset, width):
                    return retry, offset
                break
            offset += widths[index] + _GAP
    return packing, start


def _fits(packing: list[list[int]], widths: Sequence[int], start: int, hang: int,
          width: int) -> bool:
    for number, indexes in enumerate(packing):
        used = (start if number == 0 else hang) + sum(widths[i] for i in indexes)
        if used + _GAP * (len(indexes) - 1) > width:
            return False
    return True


def format_rate(value: float | None) -> str:
    """Messages per second, with precision that suits the size; ``-`` when unknown."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ms(value: float | None) -> str:
    return format_ms(value) if value is not None else "-"


def edge_label(edge: EdgeStats) -> str:
    """``producer → destination → consumer`` (``(not consumed)`` when no consumer was seen)."""
    consumer = edge.consumer_service if edge.consumer_service is not None else "(not consumed)"
    return f"{edge.producer_service} → {edge.destination} → {consumer}"


def edge_lines(edges: Sequence[EdgeStats], width: int, wide: bool = False) -> list[tuple[str, str]]:
    """The edge table: count, msg/s, queue wait, processing, errors, unpaired sends."""
    names = ["count", "msg/s", "wait p50", "wait p95", "wait p99", "proc p50", "proc p95",
             "proc p99", "errors", "sent", "unpaired"]
    shown = names if wide else ["count", "msg/s", "wait p50", "wait p95", "proc p50", "errors",
                                "unpaired"]
    rows = []
    for edge in edges:
        wait = percentile_summary(edge.queue_wait_ms)
        proc = percentile_summary(edge.processing_ms)
        consumed = edge.consumer_service is not None
        cells = {
            "count": str(edge.count),
            "msg/s": format_rate(edge.throughput_per_s),
            "wait p50": _ms(wait["p50"]),
            "wait p95": _ms(wait["p95"]),
            "wait p99": _ms(wait["p99"]),
            "proc p50": _ms(proc["p50"]),
            "proc p95": _ms(proc["p95"]),
            "proc p99": _ms(proc["p99"]),
            "errors": f"{edge.error_rate:.1%}" if consumed else "-",
            "sent": str(edge.sent) if edge.sent is not None else "-",
            "unpaired": str(edge.unpaired) if edge.unpaired is not None else "-",
        }
        rows.append([cells[name] for name in shown])
    return grid(width, [Column(name) for name in shown], rows, [edge_label(e) for e in edges],
                "edge")


def slowest_lines(traces: Sequence[Trace], width: int) -> list[tuple[str, str]]:
    """The slowest traces: duration, spans, errors, trace ID and transaction ID."""
    columns = [Column("duration"), Column("spans"), Column("errors"), Column("trace", text=True),
               Column("transaction", text=True)]
    rows = [
        [format_ms(t.duration_ms), str(len(t.spans)), str(t.error_count), t.trace_id,
         t.transaction_id or "-"]
        for t in traces
    ]
    return grid(width, columns, rows)


def path_lines(path: CriticalPath, width: int) -> list[tuple[str, str]]:
    """The critical path: each step's service, queue wait, own time and share of the trace."""
    trace_ms = path.trace.duration_ms
    columns = [Column("service", text=True), Column("queue wait"), Column("own time"),
               Column("share")]
    rows = []
    labels = []
    for step in path.steps:
        labels.append(("✗ " if step.span.is_error else "") + step.span.name)
        share = step.total_ms / trace_ms if trace_ms > 0 else 0.0
        rows.append([
            step.span.service,
            format_ms(step.queue_wait_ms) if step.queue_wait_ms is not None else "",
            format_ms(step.self_ms),
            f"{share:.0%}",
        ])
    return grid(width, columns, rows, labels, "span")


@dataclass
class StatsReport:
    """Everything ``hoptrace stats`` reports about a set of spans."""

    source: str
    spans: int
    traces: int
    edges: list[EdgeStats]
    slowest: list[Trace]
    path: CriticalPath | None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON document ``hoptrace stats --json`` prints."""
        return {
            "file": self.source,
            "spans": self.spans,
            "traces": self.traces,
            "edges": [edge.as_dict() for edge in self.edges],
            "slowest_traces": [
                {
                    "trace_id": t.trace_id,
                    "transaction_id": t.transaction_id,
                    "duration_ms": t.duration_ms,
                    "spans": len(t.spans),
                    "errors": t.error_count,
                }
                for t in self.slowest
            ],
            "critical_path": self.path.as_dict() if self.path is not None else None,
        }

    def lines(self, width: int, wide: bool = False) -> list[Text]:
        """Return the report as lines of at most ``width`` cells (``wide``: every percentile)."""
        out: list[tuple[str, str]] = []

        def say(text: str, style: str = "") -> None:
            out.extend((line, style) for line in _fold(text, width))

        say(f"{self.spans} spans in {self.traces} traces from {self.source}")
        out.append(("", ""))
        say("edges: producer → destination → consumer", "bold")
        if self.edges:
            out.extend(edge_lines(self.edges, width, wide))
            say("wait: queue wait; proc: processing; msg/s over each edge's own window; "
                "unpaired: sent, never seen consumed (lost, in flight, or lag)", "dim")
        else:
            say("no consumer or producer spans")
        if self.slowest:
            out.append(("", ""))
            say("slowest traces", "bold")
            out.extend(slowest_lines(self.slowest, width))
        path = self.path
        if path is not None:
            out.append(("", ""))
            say(f"critical path of trace {path.trace.trace_id} "
                f"({format_ms(path.trace.duration_ms)})", "bold")
            out.extend(path_lines(path, width))
            say(f"the chain covers {format_ms(path.total_ms)} of the trace's "
                f"{format_ms(path.trace.duration_ms)}")
            if path.waited_before_ms:
                say(f"before the trace began, its first message waited "
                    f"{format_ms(path.waited_before_ms)} in the queue")
            dominant = path.dominant
            if dominant is not None:
                what, step = dominant
                value = step.queue_wait_ms if what == "queue_wait" else step.self_ms
                label = "waiting in the queue before" if what == "queue_wait" else "processing in"
                say(f"dominant: {format_ms(value or 0.0)} {label} {step.span.name!r} "
                    f"({step.span.service})")
        return [_styled(line, style) for line, style in out]


def _styled(line: str, style: str) -> Text:
    text = Text(line, style=style)
    if "✗" in line:
        text.highlight_words(["✗"], style="bold red")
    return text


def print_lines(console: Any, lines: Iterable[Text]) -> None:
    """Print ``lines`` as they are: neither wrapped nor cut by the console."""
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
