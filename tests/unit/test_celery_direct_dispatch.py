"""Celery's tracer calling hoptrace's prerun/postrun handlers directly, and the signal path.

While hoptrace's handler is the only receiver of ``task_prerun`` / ``task_postrun``, the
tracer's ``send_prerun`` / ``send_postrun`` call it without Celery's signal dispatch. Both
paths must give the same spans, contexts, log-line IDs, metrics and states; with any other
receiver connected, every receiver runs in the order it was connected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

celery = pytest.importorskip("celery")

from celery import chain, signals  # noqa: E402
from celery.app import trace  # noqa: E402
from celery.exceptions import Reject  # noqa: E402
from celery.utils.dispatch.signal import Signal  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from test_celery import drain, make_app, run_delivery, run_like_a_worker  # noqa: E402

import hoptrace  # noqa: E402
import hoptrace.celery  # noqa: E402
from hoptrace.core import metrics  # noqa: E402

_ID = re.compile(r"[0-9a-f-]{16,}|q-[0-9a-f]{6}")  # IDs, and the per-app queue


class Symbols:
    """Stable names for the IDs one run mints, in order of first appearance."""

    def __init__(self) -> None:
        self.seen: dict[object, str] = {}

    def __call__(self, value: object) -> object:
        if value is None:
            return None
        if (isinstance(value, int) and value > 1 << 32) or (
                isinstance(value, str) and _ID.fullmatch(value)):
            return self.seen.setdefault(value, f"id{len(self.seen)}")
        return value


class Paths:
    """How many prerun/postrun sends went through Celery's signal dispatch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dispatched: list[str] = []
        live = Signal._live_receivers

        def counting(signal: Any, sender: Any) -> Any:
            if signal is signals.task_prerun or signal is signals.task_postrun:
                self.dispatched.append(signal.name)
            return live(signal, sender)

        monkeypatch.setattr(Signal, "_live_receivers", counting)


class Lines(logging.Handler):
    """Every log line of the run, with the transaction and trace current when it was made."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str, object, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, str(record.msg), hoptrace.current_transaction_id(),
                           hoptrace.current_trace_id()))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger("celery.app.trace"), logging.getLogger("unit.tasks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # the tracer logs "Task ... succeeded" at INFO
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        yield reader
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def counters(reader: InMemoryMetricReader) -> list[tuple[str, tuple[Any, ...], Any]]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:  # a histogram: its count, not its timings
                        value = getattr(point, "count", None)
                    found.append((metric.name, tuple(sorted((point.attributes or {}).items())), value))
    return sorted(found)


def run_link(app: Any, message: Any, redelivered: bool) -> None:
    """Run a chain link's message as a worker would: headers, the body's chain, delivery."""
    _, _, embed = message.decode()
    request = {**message.headers, **embed}
    request["delivery_info"] = {"routing_key": app.conf.task_default_queue, "exchange": "",
                                "redelivered": redelivered}
    run_like_a_worker(app, message.headers["task"], request)


def workload(lines: Lines) -> dict[str, Any]:
    """Run every kind of task execution; return what the application and the spans saw."""
    app = make_app()
    log = logging.getLogger("unit.tasks")

    @app.task(name="unit.logs", shared=False)
    def logs() -> str:
        log.info("working")
        return str(hoptrace.current_transaction_id())

    @app.task(name="unit.reject", shared=False)
    def reject() -> None:
        log.info("rejecting")
        raise Reject("bad", requeue=False)

    seen: dict[str, Any] = {}
    with hoptrace.transaction("edge") as tx:
        headers = hoptrace.inject({})
        seen["edge"] = tx.transaction_id
        # Eager runs, in the caller's context: plain, nested, failing, raising.
        seen["eager"] = app.tasks["unit.context"].apply(("eager",)).get()
        seen["nested"] = app.tasks["unit.nested"].apply().get()
        seen["eager_fail"] = app.tasks["unit.fail"].apply().state
        with pytest.raises(ValueError):
            app.tasks["unit.fail"].apply(throw=True)
        seen["after_eager"] = hoptrace.current_transaction_id()
        app.tasks["unit.flaky"].delay()
        chain(app.tasks["unit.context"].si("a"), app.tasks["unit.context"].si("b")).delay()
    seen["outside"] = hoptrace.current_transaction_id()
    # Worker runs: success with log lines, failure, reject, retries, a chain.
    seen["logs"] = run_like_a_worker(app, "unit.logs", dict(headers)).retval
    run_like_a_worker(app, "unit.fail", dict(headers))
    run_like_a_worker(app, "unit.reject", dict(headers))
    flaky, first = drain(app)
    for _ in range(3):
        run_delivery(app, "unit.flaky", flaky, redelivered=False)
        queued = drain(app)
        if not queued:
            break
        (flaky,) = queued
    run_link(app, first, redelivered=False)
    (second,) = drain(app)  # published by the first link, inside its process scope
    run_link(app, second, redelivered=True)
    seen["leaked"] = hoptrace.current_transaction_id()
    seen["running"] = hoptrace.celery.running_executions()
    return seen


def deep(sym: Symbols, value: Any) -> Any:
    if isinstance(value, dict):
        return {key: deep(sym, item) for key, item in value.items()}
    return sym(value)


def normalized(seen: dict[str, Any], spans: Any, lines: Lines,
               reader: InMemoryMetricReader) -> dict[str, Any]:
    sym = Symbols()
    finished = spans.all() if spans is not None else []
    by_id = {s.context.span_id: s.name for s in finished}
    shape = []
    for span in finished:
        attributes = {key: sym(value) for key, value in sorted(span.attributes.items())
                      if not isinstance(value, float)}  # (timings)
        shape.append((
            span.name, span.kind.name, span.status.status_code.name, sym(span.context.trace_id),
            sym(span.context.span_id),
            (by_id.get(span.parent.span_id, "remote"), sym(span.parent.span_id))
            if span.parent else None,
            [sym(link.context.span_id) for link in span.links],
            [event.attributes.get("exception.type") for event in span.events],
            attributes,
        ))
    values = deep(sym, seen)
    logged = [(name, msg, sym(tx), sym(trace_id)) for name, msg, tx, trace_id in lines.lines]
    return {"seen": values, "spans": shape, "lines": logged, "metrics": [
        (name, tuple((key, sym(value)) for key, value in attributes), count)
        for name, attributes, count in counters(reader)]}


def run_both_paths(monkeypatch: pytest.MonkeyPatch, lines: Lines, reader: InMemoryMetricReader,
                   spans: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    paths = Paths(monkeypatch)
    results = []
    for other_receiver in (False, True):
        lines.lines.clear()
        reader.get_metrics_data()  # (cumulative: compare what each run adds)
        if spans is not None:
            spans.clear()

        def bystander(**_: Any) -> None:
            return None

        if other_receiver:  # any other receiver: Celery's own dispatch, as before
            signals.task_prerun.connect(bystander, weak=False, dispatch_uid="test.bystander")
            signals.task_postrun.connect(bystander, weak=False, dispatch_uid="test.bystander")
        before = len(paths.dispatched)
        hoptrace.celery.instrument()
        try:
            seen = workload(lines)
        finally:
            hoptrace.celery.uninstrument()
            signals.task_prerun.disconnect(dispatch_uid="test.bystander")
            signals.task_postrun.disconnect(dispatch_uid="test.bystander")
        dispatched = len(paths.dispatched) - before
        if other_receiver:
            assert dispatched > 0  # the signal path ran
        else:
            assert dispatched == 0  # the direct path ran: no signal dispatch at all
        metrics.use_meter_provider(None)  # a fresh provider for the second run's counts
        fresh = InMemoryMetricReader()
        metrics.use_meter_provider(MeterProvider(metric_readers=[fresh]))
        results.append(normalized(seen, spans, lines, reader))
        reader = fresh
    return results[0], results[1]


def check_outcome(result: dict[str, Any]) -> None:
    """What either path must show, so that the comparison compares something."""
    seen = result["seen"]
    assert seen["outside"] is None and seen["leaked"] is None and seen["running"] == 0
    assert seen["after_eager"] == seen["edge"]
    assert seen["eager"]["transaction_id"] == seen["edge"]
    assert seen["nested"]["outer_tx"] == seen["edge"]
    assert seen["logs"] == seen["edge"]
    task_lines = [(msg, tx) for name, msg, tx, _ in result["lines"] if name == "unit.tasks"]
    assert task_lines == [("working", seen["edge"]), ("rejecting", seen["edge"])]
    succeeded = [tx for name, msg, tx, _ in result["lines"]
                 if name == "celery.app.trace" and "succeeded" in msg]
    assert len(succeeded) >= 4 and all(tx == seen["edge"] for tx in succeeded), succeeded
    letters = [m for m in result["metrics"] if m[0] == metrics.DEAD_LETTERS]
    assert [m[2] for m in letters] == [1], result["metrics"]


def test_direct_and_signal_paths_agree_with_spans(
    monkeypatch: pytest.MonkeyPatch, lines: Lines, reader: InMemoryMetricReader, spans: Any
) -> None:
    direct, dispatched = run_both_paths(monkeypatch, lines, reader, spans)
    check_outcome(direct)
    states = [s[8].get("celery.task.state") for s in direct["spans"] if s[0].startswith("process")]
    assert {"SUCCESS", "FAILURE", "RETRY", "REJECTED"} <= set(states), states
    assert direct == dispatched


def test_direct_and_signal_paths_agree_propagation_only(
    monkeypatch: pytest.MonkeyPatch, lines: Lines, reader: InMemoryMetricReader, spans: Any
) -> None:
    hoptrace.configure(propagation_only=True)
    direct, dispatched = run_both_paths(monkeypatch, lines, reader, spans)
    check_outcome(direct)
    assert direct["spans"] == []
    assert direct == dispatched


def test_other_receivers_run_in_the_order_they_were_connected(spans: Any) -> None:
    """A receiver connected before hoptrace's runs before the scope opens (prerun) and while it
    is still open (postrun); one connected after, the other way round."""
    app = make_app()
    saw: list[tuple[str, object]] = []

    def early(signal: Any = None, **_: Any) -> None:
        saw.append((f"early {signal.name}", hoptrace.current_transaction_id()))

    def late(signal: Any = None, **_: Any) -> None:
        saw.append((f"late {signal.name}", hoptrace.current_transaction_id()))

    for signal in (signals.task_prerun, signals.task_postrun):
        signal.connect(early, weak=False, dispatch_uid="test.early")
    hoptrace.celery.instrument()
    for signal in (signals.task_prerun, signals.task_postrun):
        signal.connect(late, weak=False, dispatch_uid="test.late")
    try:
        with hoptrace.transaction("edge") as tx:
            headers = hoptrace.inject({})
        run_like_a_worker(app, "unit.context", dict(headers))
    finally:
        hoptrace.celery.uninstrument()
        for signal in (signals.task_prerun, signals.task_postrun):
            signal.disconnect(dispatch_uid="test.early")
            signal.disconnect(dispatch_uid="test.late")
    edge = tx.transaction_id
    assert saw == [("early task_prerun", None), ("late task_prerun", edge),
                   ("early task_postrun", edge), ("late task_postrun", None)]


def test_uninstrument_puts_celerys_send_back_and_keeps_another_tools_wrapper(
    spans: Any
) -> None:
    app = make_app()
    celerys = trace.send_prerun
    assert celerys == signals.task_prerun.send
    hoptrace.celery.instrument()
    hoptrace.celery.instrument()  # idempotent: one replacement, not two stacked
    assert trace.send_prerun != celerys and trace.send_prerun.__wrapped__ == celerys
    hoptrace.celery.uninstrument()
    assert trace.send_prerun == celerys and trace.send_postrun == signals.task_postrun.send

    # Another tool wraps the tracer's send after hoptrace: uninstrument leaves it in place,
    # and hoptrace's replacement under it passes every send on to the signal.
    hoptrace.celery.instrument()
    calls: list[str] = []
    ours = trace.send_prerun

    def tools(sender: Any, **named: Any) -> Any:
        calls.append("tool")
        return ours(sender=sender, **named)

    trace.send_prerun = tools
    try:
        run_like_a_worker(app, "unit.context", {})
        assert calls == ["tool"] and len(spans.named("process unit.context")) == 1
        hoptrace.celery.uninstrument()
        assert trace.send_prerun is tools
        heard: list[object] = []

        def receiver(**_: Any) -> None:
            heard.append(hoptrace.current_transaction_id())

        signals.task_prerun.connect(receiver, weak=False, dispatch_uid="test.receiver")
        try:
            outcome = run_like_a_worker(app, "unit.context", {})
        finally:
            signals.task_prerun.disconnect(dispatch_uid="test.receiver")
        assert calls == ["tool", "tool"] and heard == [None]
        assert outcome.retval["transaction_id"] is None
        assert len(spans.named("process unit.context")) == 1  # no new span
        hoptrace.celery.instrument()  # under the tool's wrapper, hoptrace's is live again
        assert trace.send_prerun is tools
        run_like_a_worker(app, "unit.context", {})
        assert len(spans.named("process unit.context")) == 2
    finally:
        hoptrace.celery.uninstrument()
        trace.send_prerun = celerys


def test_a_wrapper_installed_before_hoptrace_is_never_bypassed(spans: Any) -> None:
    """A proxy that passes for Celery's send (a wrapt wrapper compares equal to what it wraps)
    stays in the call path: hoptrace replaces only Celery's own bound method."""
    wrapt = pytest.importorskip("wrapt")
    app = make_app()
    celerys = trace.send_prerun
    calls: list[str] = []

    def tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("tool")
        return wrapped(*args, **kwargs)

    proxy = wrapt.FunctionWrapper(celerys, tool)
    assert proxy == celerys
    trace.send_prerun = proxy
    hoptrace.celery.instrument()
    try:
        assert trace.send_prerun is proxy
        with hoptrace.transaction("edge") as tx:
            headers = hoptrace.inject({})
        outcome = run_like_a_worker(app, "unit.context", dict(headers))
        assert calls == ["tool"]
        assert outcome.retval["transaction_id"] == tx.transaction_id
        assert spans.one("process unit.context").attributes["celery.task.state"] == "SUCCESS"
        assert trace.send_postrun != signals.task_postrun.send  # replaced: Celery's own
    finally:
        hoptrace.celery.uninstrument()
        trace.send_prerun = celerys
    assert trace.send_postrun == signals.task_postrun.send
