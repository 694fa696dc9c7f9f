"""The HTML report: one self-contained file, an inline SVG waterfall per trace, no network.

Each span is one ``<rect class="span-bar">``; a consumer's queue wait is a
``<rect class="wait-bar">`` before it, never starting before the hop's ``send`` span.
Hovering shows a tooltip (SVG ``<title>``); clicking shows the span's attributes, events and
links in a side panel.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from .spanfile import SpanRecord, Trace
from .waterfall import format_ms

ROW = 24
LABEL_WIDTH = 460
TIMELINE_WIDTH = 620
AXIS = 28
SERVICE_OFFSET = 110  # the service column starts this far left of the timeline
SVG_WIDTH = LABEL_WIDTH + TIMELINE_WIDTH + 90

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #1d2330; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
h2 { font-size: 14px; margin: 24px 0 4px; font-weight: 600; }
.meta { color: #5b6474; margin-bottom: 6px; }
svg { display: block; }
svg text { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; fill: #1d2330; }
svg text.service { fill: #7a3e9d; }
svg text.duration { fill: #3b4252; }
svg line.tick { stroke: #e3e6eb; }
svg text.tick { fill: #8a93a3; font-size: 10px; }
rect.row:hover { fill: #f3f6fb; }
rect.span-bar { fill: #3b82c4; cursor: pointer; }
rect.span-bar.kind-CONSUMER { fill: #2f9e6e; }
rect.span-bar.kind-PRODUCER { fill: #6c63c7; }
rect.span-bar.error { fill: #d64545; }
rect.span-bar.selected { stroke: #111; stroke-width: 2; }
rect.wait-bar { fill: #f2c14e; opacity: 0.8; }
#details { position: fixed; top: 16px; right: 16px; width: 440px; max-height: 90vh;
  overflow: auto; background: #fafbfc; border: 1px solid #d5d9e0; border-radius: 6px;
  padding: 10px 12px; display: none; box-shadow: 0 2px 8px rgba(0,0,0,.12); }
#details h3 { margin: 0 0 6px; font-size: 14px; }
#details table { border-collapse: collapse; width: 100%; }
#details td { border-top: 1px solid #e6e8ec; padding: 2px 4px; vertical-align: top;
  overflow-wrap: anywhere; font: 11px ui-monospace, monospace; }
#details td:first-child { color: #5b6474; white-space: nowrap; }
#details .close { float: right; cursor: pointer; border: 0; background: none; font-size: 16px; }
.legend span { display: inline-block; width: 12px; height: 10px; margin: 0 4px 0 12px; }
"""

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('span-data').textContent);
  var panel = document.getElementById('details');
  function row(k, v) {
    var tr = document.createElement('tr');
    var a = document.createElement('td'); a.textContent = k;
    var b = document.createElement('td');
    b.textContent = typeof v === 'string' ? v : JSON.stringify(v);
    tr.appendChild(a); tr.appendChild(b); return tr;
  }
  function show(id) {
    var span = data[id]; if (!span) return;
    document.querySelectorAll('rect.span-bar.selected').forEach(function (r) {
      r.classList.remove('selected');
    });
    var bar = document.querySelector('rect.span-bar[data-span-id="' + id + '"]');
    if (bar) bar.classList.add('selected');
    panel.innerHTML = '';
    var close = document.createElement('button'); close.className = 'close';
    close.textContent = '\\u00d7';
    close.onclick = function () { panel.style.display = 'none'; };
    var title = document.createElement('h3'); title.textContent = span.name;
    var table = document.createElement('table');
    ['service', 'kind', 'status', 'status_message', 'trace_id', 'span_id', 'parent_span_id',
     'duration_ms', 'queue_wait_ms'].forEach(function (k) {
      if (span[k] !== null && span[k] !== undefined) table.appendChild(row(k, span[k]));
    });
    Object.keys(span.attributes).sort().forEach(function (k) {
      table.appendChild(row(k, span.attributes[k]));
    });
    span.events.forEach(function (e) { table.appendChild(row('event: ' + e.name, e.attributes)); });
    span.links.forEach(function (l) { table.appendChild(row('link', l)); });
    panel.appendChild(close); panel.appendChild(title); panel.appendChild(table);
    panel.style.display = 'block';
    panel.setAttribute('data-span-id', id);
  }
  document.querySelectorAll('[data-span-id]').forEach(function (el) {
    if (el === panel) return;
    el.addEventListener('click', function () { show(el.getAttribute('data-span-id')); });
  });
})();
"""


def _span_details(span: SpanRecord) -> dict[str, Any]:
    return {
        "name": span.name,
        "service": span.service,
        "kind": span.kind,
        "status": span.status,
        "status_message": span.status_message,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "duration_ms": round(span.duration_ms, 3),
        "queue_wait_ms": span.queue_wait_ms,
        "attributes": span.attributes,
        "events": span.events,
        "links": span.links,
    }


def _ticks(total_ms: float) -> list[float]:
    """Return about five round tick values from 0 to ``total_ms``."""
    if total_ms <= 0:
        return [0.0]
    raw = total_ms / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(total_ms / step) + 1)]


def trace_svg(trace: Trace) -> str:
    """Return the inline SVG waterfall of one trace."""
    trace.link_sends()  # queue waits never begin before their send span
    rows = list(trace.walk())
    height = AXIS + ROW * len(rows) + 8
    start = trace.start_ns
    total = max(trace.end_ns - start, 1)
    scale = TIMELINE_WIDTH / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'class="waterfall" data-trace-id="{escape(trace.trace_id)}" role="img">'
    ]
    total_ms = total / 1e6
    for tick in _ticks(total_ms):
        x = LABEL_WIDTH + tick * 1e6 * scale
        out.append(
            f'<line class="tick" x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height}"/>'
            f'<text class="tick" x="{x + 2:.1f}" y="{AXIS - 10}">{escape(format_ms(tick))}</text>'
        )
    for index, (span, depth) in enumerate(rows):
        y = AXIS + index * ROW
        sid = escape(span.span_id)
        label = ("✗ " if span.is_error else "") + span.name
        tip = f"{span.name} · {span.service} · {format_ms(span.duration_ms)}"
        wait = span.queue_wait_ms
        if wait is not None:
            tip += f" · queue wait {format_ms(wait)}"
        if span.is_error:
            tip += " · ERROR" + (f": {span.status_message}" if span.status_message else "")
        out.append(f'<g class="span-row" data-span-id="{sid}">')
        out.append(
            f'<rect class="row" x="0" y="{y}" width="{SVG_WIDTH}" height="{ROW}" '
            'fill="transparent"/>'
        )
        # Monospace 12px is about 7.3px a character; keep clear of the service column.
        room = max(8, int((LABEL_WIDTH - SERVICE_OFFSET - 12 - depth * 14) / 7.3))
        if len(label) > room:
            label = label[: room - 1] + "…"
        out.append(
            f'<text x="{4 + depth * 14}" y="{y + 16}">{escape(label)}</text>'
            f'<text class="service" x="{LABEL_WIDTH - SERVICE_OFFSET}" y="{y + 16}">'
            f"{escape(span.service[:16])}</text>"
        )
        waited_from = span.queue_wait_start_ns  # never before the send span, when known
        if wait is not None and wait > 0 and waited_from is not None:
            wait_start = max(start, waited_from)
            wx = LABEL_WIDTH + (wait_start - start) * scale
            ww = max((span.start_ns - wait_start) * scale, 1.0)
            out.append(
                f'<rect class="wait-bar" x="{wx:.2f}" y="{y + 6}" width="{ww:.2f}" '
                f'height="{ROW - 12}">'
                f"<title>queue wait {escape(format_ms(wait))}</title></rect>"
            )
        x = LABEL_WIDTH + (span.start_ns - start) * scale
        width = max((span.end_ns - span.start_ns) * scale, 1.5)
        classes = f"span-bar kind-{escape(span.kind)}" + (" error" if span.is_error else "")
        out.append(
            f'<rect class="{classes}" data-span-id="{sid}" x="{x:.2f}" y="{y + 4}" '
            f'width="{width:.2f}" height="{ROW - 8}" rx="2"><title>{escape(tip)}</title></rect>'
        )
        out.append(
            f'<text class="duration" x="{min(x + width + 4, SVG_WIDTH - 86):.1f}" y="{y + 16}">'
            f"{escape(format_ms(span.duration_ms))}</text>"
        )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def render_html(traces: list[Trace], *, title: str = "hoptrace report", source: str = "") -> str:
    """Return the whole report as one HTML document (no external resources)."""
    for trace in traces:
        trace.link_sends()  # the details show the queue wait as drawn
    details = {span.span_id: _span_details(span) for trace in traces for span in trace.spans}
    # Inside <script>, only text matters: no "<" at all means no "</script>" or "<!--".
    data = (
        json.dumps(details, default=str)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    sections = []
    for trace in traces:
        meta = f"{format_ms(trace.duration_ms)} · {len(trace.spans)} spans"
        if trace.error_count:
            meta += f" · {trace.error_count} error(s)"
        tx = f" · transaction {escape(trace.transaction_id)}" if trace.transaction_id else ""
        sections.append(
            f'<section class="trace"><h2>trace {escape(trace.trace_id)}{tx}</h2>'
            f'<div class="meta">{escape(meta)}</div>{trace_svg(trace)}</section>'
        )
    source_line = f"<div class=\"meta\">from {escape(source)}</div>" if source else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title>"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{source_line}"
        '<div class="legend meta"><span style="background:#f2c14e"></span>queue wait'
        '<span style="background:#6c63c7"></span>send<span style="background:#2f9e6e"></span>'
        'process<span style="background:#3b82c4"></span>other'
        '<span style="background:#d64545"></span>error · click a bar for details</div>'
        + "".join(sections)
        + '<div id="details"></div>'
        f'<script type="application/json" id="span-data">{data}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
