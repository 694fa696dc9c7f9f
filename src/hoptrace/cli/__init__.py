"""The ``hoptrace`` command: ``demo``, ``view`` and ``stats``.

::

    hoptrace demo                         # run the embedded flow, print logs + waterfall
    hoptrace view spans.jsonl             # waterfall per trace in the terminal
    hoptrace view spans.jsonl --html report.html
    hoptrace stats spans.jsonl [--json]   # per-edge queue wait / processing, slowest traces
    hoptrace view --jaeger http://127.0.0.1:16686 --service api --since 15m
    hoptrace stats --jaeger http://127.0.0.1:16686    # (or --tempo URL) read a tracing backend
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn

from .analysis import critical_path, edge_stats, slowest_traces
from .backends import make_reader, progress_bar, read_backend, source_options
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
from .stats_report import StatsReport, print_lines
from .waterfall import BAR_WIDTH, print_traces

__all__ = ["main"]


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped or captured output is as wide as COLUMNS says, else 160 columns.
    width = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def load_spans(path: str, console: Console | None = None) -> list[SpanRecord]:
    """Read every span in ``path``, with a progress bar on a terminal; exit on bad input."""
    err = console or _console(stderr=True)
    size = os.path.getsize(path)
    progress = progress_bar(
        err.is_terminal and size >= (4 << 20),
        TextColumn("reading {task.fields[name]}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("read", total=size, name=Path(path).name)
            return read_spans(path, lambda done: progress.update(task, completed=done))
    except SpanFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None


def load_source(
    file: str | None, source: dict[str, Any], trace_id: str | None = None
) -> tuple[list[SpanRecord], str]:
    """Spans from FILE or from the backend the options name, and a label for where from."""
    reader = make_reader(source)
    if reader is not None and file:
        raise click.UsageError("give a span FILE or --jaeger/--tempo, not both")
    if reader is not None:
        return read_backend(reader, source, trace_id, _console(stderr=True))
    if not file:
        raise click.UsageError("give a span FILE, or --jaeger URL / --tempo URL")
    return load_spans(file), file


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
        raise click.ClickException(f"no trace or transaction {wanted!r} in the spans read")
    return found


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hoptrace")
def main() -> None:
    """See where the time went across asynchronous hops: waiting in a queue or processing."""


@main.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@source_options
@click.option(
    "--trace", "trace_id", help="Show only this trace (trace ID, prefix, or transaction ID)."
)
@click.option(
    "--html", "html_out", type=click.Path(dir_okay=False), help="Also write an HTML report here."
)
@click.option("--limit", default=20, show_default=True, help="Show at most this many traces.")
@click.option("--width", default=BAR_WIDTH, show_default=True, help="Width of the timeline bars.")
def view(
    file: str | None,
    trace_id: str | None,
    html_out: str | None,
    limit: int,
    width: int,
    **source: Any,
) -> None:
    """Draw each trace in FILE (JSONL from hoptrace, or OTLP JSON), or in Jaeger or Tempo,
    as a waterfall."""
    console = _console()
    spans, file = load_source(file, source, trace_id)
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


@main.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--top", default=5, show_default=True, help="How many slowest traces to list.")
@click.option("--trace", "trace_id", help="Critical path of this trace (default: the slowest).")
@click.option("--wide", is_flag=True, help="Every percentile, and messages sent, per edge.")
def stats(
    file: str | None,
    as_json: bool,
    top: int,
    trace_id: str | None,
    wide: bool = False,
    **source: Any,
) -> None:
    """Queue wait, processing, throughput and unpaired sends per edge, the slowest traces,
    and a critical path, from FILE or from Jaeger or Tempo."""
    spans, file = load_source(file, source)
    if not spans:
        raise click.ClickException(f"{file}: no spans")
    with paused_gc():
        edges = edge_stats(spans)
        traces = group_traces(spans)
    slowest = slowest_traces(traces.values(), top)
    target = select_traces(traces, trace_id)[0] if trace_id else (slowest[0] if slowest else None)
    path = critical_path(target) if target is not None else None
    report = StatsReport(file, len(spans), len(traces), edges, slowest, path)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    console = _console()
    print_lines(console, report.lines(console.width, wide))


def _register_demo() -> None:
    from .demo import demo

    main.add_command(demo)


_register_demo()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
