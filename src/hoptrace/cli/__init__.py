"""The ``hoptrace`` command: ``demo``, ``view`` and ``stats``.

::

    hoptrace demo                         # run the embedded flow, print logs + waterfall
    hoptrace view spans.jsonl             # waterfall per trace in the terminal
    hoptrace view spans.jsonl --html report.html
    hoptrace stats spans.jsonl [--json]   # per-edge queue wait / processing, slowest traces
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .analysis import critical_path, edge_stats, slowest_traces
from .html_report import render_html
from .spanfile import (
    SpanFileError,
    SpanRecord,
    Trace,
    group_traces,
    link_sends,
    paused_gc,
    read_spans,
)
from .waterfall import BAR_WIDTH, format_ms, print_traces

__all__ = ["main"]


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped or captured output is not cut to 80 columns: tables and bars stay whole.
    width = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = max(160, int(columns) if columns.isdigit() else 0)
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def load_spans(path: str, console: Console | None = None) -> list[SpanRecord]:
    """Read every span in ``path``, with a progress bar on a terminal; exit on bad input."""
    err = console or _console(stderr=True)
    size = os.path.getsize(path)
    progress = Progress(
        TextColumn("reading {task.fields[name]}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal or size < (4 << 20),
    )
    try:
        with progress:
            task = progress.add_task("read", total=size, name=Path(path).name)
            return read_spans(path, lambda done: progress.update(task, completed=done))
    except SpanFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None


def select_traces(traces: dict[str, Trace], wanted: str | None) -> list[Trace]:
    """Return the traces in start order; only the one matching ``wanted`` if given.

    ``wanted`` may be a trace ID (or a unique prefix of one) or a transaction ID.
    """
    ordered = sorted(traces.values(), key=lambda t: t.start_ns)
    if wanted is None:
        return ordered
    key = wanted.lower()
    if key in traces:
        return [traces[key]]
    found = [t for t in ordered if t.transaction_id == wanted]
    if not found:
        found = [t for t in ordered if t.trace_id.startswith(key)]
    if not found:
        raise click.ClickException(f"no trace or transaction {wanted!r} in the file")
    return found


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hoptrace")
def main() -> None:
    """See where the time went across asynchronous hops: waiting in a queue or processing."""


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--trace", "trace_id", help="Show only this trace (trace ID, prefix, or transaction ID)."
)
@click.option(
    "--html", "html_out", type=click.Path(dir_okay=False), help="Also write an HTML report here."
)
@click.option("--limit", default=20, show_default=True, help="Show at most this many traces.")
@click.option("--width", default=BAR_WIDTH, show_default=True, help="Width of the timeline bars.")
def view(file: str, trace_id: str | None, html_out: str | None, limit: int, width: int) -> None:
    """Draw each trace in FILE as a waterfall (JSONL from hoptrace, or OTLP JSON)."""
    console = _console()
    spans = load_spans(file)
    traces = group_traces(spans)
    if not traces:
        raise click.ClickException(f"{file}: no spans")
    chosen = select_traces(traces, trace_id)
    shown = chosen[:limit] if limit > 0 else chosen
    # A queue wait never begins before its send span: in link mode, that is in another trace.
    elsewhere = [span for trace in shown for span in trace.link_sends()]
    if elsewhere:
        link_sends(spans, elsewhere)
    print_traces(console, shown, width)
    if len(shown) < len(chosen):
        console.print(f"showing {len(shown)} of {len(chosen)} traces (use --trace or --limit)")
    if html_out:
        Path(html_out).write_text(
            render_html(shown, title=f"hoptrace: {Path(file).name}", source=file), encoding="utf-8"
        )
        console.print(f"HTML report: {html_out}")


def _pct(summary: dict[str, float | None], key: str) -> str:
    value = summary[key]
    return format_ms(value) if value is not None else "-"


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--top", default=5, show_default=True, help="How many slowest traces to list.")
@click.option("--trace", "trace_id", help="Critical path of this trace (default: the slowest).")
def stats(file: str, as_json: bool, top: int, trace_id: str | None) -> None:
    """Queue wait and processing time per edge, the slowest traces, and a critical path."""
    spans = load_spans(file)
    if not spans:
        raise click.ClickException(f"{file}: no spans")
    with paused_gc():
        edges = edge_stats(spans)
        traces = group_traces(spans)
    slowest = slowest_traces(traces.values(), top)
    target = select_traces(traces, trace_id)[0] if trace_id else (slowest[0] if slowest else None)
    path = critical_path(target) if target is not None else None
    if as_json:
        report: dict[str, Any] = {
            "file": file,
            "spans": len(spans),
            "traces": len(traces),
            "edges": [edge.as_dict() for edge in edges],
            "slowest_traces": [
                {
                    "trace_id": t.trace_id,
                    "transaction_id": t.transaction_id,
                    "duration_ms": t.duration_ms,
                    "spans": len(t.spans),
                    "errors": t.error_count,
                }
                for t in slowest
            ],
            "critical_path": path.as_dict() if path is not None else None,
        }
        click.echo(json.dumps(report, indent=2))
        return
    console = _console()
    console.print(f"{len(spans)} spans in {len(traces)} traces from {file}\n")
    table = Table(title="edges: producer → destination → consumer", title_justify="left")
    for column in ("producer", "destination", "consumer", "count"):
        table.add_column(column, no_wrap=True, justify="right" if column == "count" else "left")
    percentiles = ("wait p50", "wait p95", "wait p99", "proc p50", "proc p95", "proc p99")
    for column in (*percentiles, "errors"):
        table.add_column(column, justify="right", no_wrap=True)
    for edge in edges:
        wait = edge.as_dict()["queue_wait_ms"]
        proc = edge.as_dict()["processing_ms"]
        table.add_row(
            edge.producer_service,
            edge.destination,
            edge.consumer_service,
            str(edge.count),
            _pct(wait, "p50"),
            _pct(wait, "p95"),
            _pct(wait, "p99"),
            _pct(proc, "p50"),
            _pct(proc, "p95"),
            _pct(proc, "p99"),
            f"{edge.error_rate:.1%}",
        )
    if not edges:
        table.caption = "no consumer spans in the file"
    console.print(table)
    slow = Table(title="slowest traces", title_justify="left")
    for column in ("trace", "transaction", "duration", "spans", "errors"):
        slow.add_column(column, no_wrap=True)
    for t in slowest:
        slow.add_row(
            t.trace_id, t.transaction_id or "-", format_ms(t.duration_ms), str(len(t.spans)),
            str(t.error_count),
        )
    console.print(slow)
    if path is not None:
        took = format_ms(path.trace.duration_ms)
        console.print(f"critical path of trace {path.trace.trace_id} ({took})", soft_wrap=True)
        crit = Table()
        for column in ("span", "service", "queue wait", "own time"):
            crit.add_column(column, no_wrap=True)
        for step in path.steps:
            crit.add_row(
                ("✗ " if step.span.is_error else "") + step.span.name,
                step.span.service,
                format_ms(step.queue_wait_ms) if step.queue_wait_ms is not None else "",
                format_ms(step.self_ms),
            )
        console.print(crit)
        dominant = path.dominant
        if dominant is not None:
            what, step = dominant
            value = step.queue_wait_ms if what == "queue_wait" else step.self_ms
            label = "waiting in the queue before" if what == "queue_wait" else "processing in"
            console.print(
                f"dominant: {format_ms(value or 0.0)} {label} {step.span.name!r} "
                f"({step.span.service})"
            )


def _register_demo() -> None:
    from .demo import demo

    main.add_command(demo)


_register_demo()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
