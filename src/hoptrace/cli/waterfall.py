"""The terminal waterfall: one row per span, indented by depth, with a timeline bar.

At each consumer hop the bar shows the queue wait (``░``) before the processing (``█``),
never starting before the hop's ``send`` span; errors are marked ``✗`` and drawn in red.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .spanfile import SpanRecord, Trace

BAR_WIDTH = 40
_KIND_TAG = {"SERVER": "server", "CLIENT": "client", "PRODUCER": "send", "CONSUMER": "process"}


def format_ms(value: float) -> str:
    """Return a duration in milliseconds, with precision that suits its size."""
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.0f} ms"
    return f"{value:.2f} ms"


def timeline_bar(span: SpanRecord, trace_start: int, trace_ns: int, width: int = BAR_WIDTH) -> Text:
    """Return the span's bar within the trace's time span, its queue wait drawn before it."""
    scale = width / trace_ns if trace_ns > 0 else 0.0
    waited_from = span.queue_wait_start_ns  # never before the send span, when it is known
    wait_start = max(trace_start, span.start_ns if waited_from is None else waited_from)
    first = int((wait_start - trace_start) * scale)
    begin = int((span.start_ns - trace_start) * scale)
    end = max(begin + 1, int((span.end_ns - trace_start) * scale + 0.5))
    begin = min(begin, width - 1)
    end = min(max(end, begin + 1), width)
    first = min(first, begin)
    bar = Text(" " * first)
    bar.append("░" * (begin - first), style="yellow")
    bar.append("█" * (end - begin), style="red" if span.is_error else "cyan")
    bar.append(" " * (width - end))
    return bar


def trace_header(trace: Trace) -> Text:
    """Return the one-line summary printed above a trace's waterfall."""
    header = Text(f"trace {trace.trace_id}", style="bold")
    if trace.transaction_id:
        header.append(f"  transaction {trace.transaction_id}")
    header.append(f"  {format_ms(trace.duration_ms)}  {len(trace.spans)} spans")
    if trace.error_count:
        header.append(f"  {trace.error_count} error(s)", style="bold red")
    return header


_DURATION_WIDTH = 8
_WAIT_WIDTH = 10
_MIN_LABEL = 20
_MIN_BAR = 10


def trace_table(trace: Trace, width: int = BAR_WIDTH, total_width: int | None = None) -> Table:
    """Return the waterfall of one trace as a rich Table.

    With ``total_width`` (the console's width), the timeline narrows (to 10 cells at least)
    and long span names are cut with ``…``, so that the service and the figures always show
    whole.
    """
    trace.link_sends()  # queue waits never begin before their send span
    start = trace.start_ns
    total = max(trace.end_ns - start, 1)
    service_width = max(min(max((len(span.service) for span in trace.spans), default=7), 24), 7)
    label_width: int | None = None
    if total_width is not None:
        fixed = service_width + _DURATION_WIDTH + _WAIT_WIDTH + 4  # 4: the gaps between columns
        width = max(_MIN_BAR, min(width, total_width - fixed - _MIN_LABEL))
        label_width = max(_MIN_LABEL, total_width - fixed - width)
    table = Table(box=None, pad_edge=False, expand=False, padding=(0, 1, 0, 0))
    table.add_column("span", no_wrap=True, max_width=label_width)
    table.add_column("service", no_wrap=True, style="magenta", width=service_width)
    table.add_column("timeline", no_wrap=True, width=width)
    table.add_column("duration", justify="right", no_wrap=True, width=_DURATION_WIDTH)
    table.add_column(
        "queue wait", justify="right", no_wrap=True, style="yellow", width=_WAIT_WIDTH
    )
    for span, depth in trace.walk():
        label = Text("  " * depth)
        if span.is_error:
            label.append("✗ ", style="bold red")
        label.append(span.name, style="red" if span.is_error else "")
        tag = _KIND_TAG.get(span.kind)
        if tag:
            label.append(f" [{tag}]", style="dim")
        if label_width is not None and len(label) > label_width:
            label.truncate(label_width, overflow="ellipsis")
        wait = span.queue_wait_ms
        table.add_row(
            label,
            span.service,
            timeline_bar(span, start, total, width),
            format_ms(span.duration_ms),
            format_ms(wait) if wait is not None else "",
        )
    return table


def print_traces(console: Console, traces: list[Trace], width: int = BAR_WIDTH) -> None:
    """Print the waterfall of each trace, with a legend once."""
    for trace in traces:
        console.print(trace_header(trace))  # wrapped between words at the console's width
        console.print(trace_table(trace, width, console.width))
        console.print()
    if traces:
        console.print(
            Text.assemble(
                ("░", "yellow"), " queue wait  ", ("█", "cyan"), " span  ",
                ("✗", "bold red"), " error",
            )
        )
