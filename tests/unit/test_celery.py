"""hoptrace.celery without a broker: the in-memory transport, eager runs and Celery's tracer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

celery = pytest.importorskip("celery")

from celery import Celery, signals  # noqa: E402
from celery.app.amqp import AMQP  # noqa: E402
from celery.app.trace import build_tracer  # noqa: E402
from kombu import Producer  # noqa: E402

import hoptrace  # noqa: E402
import hoptrace.celery  # noqa: E402
from hoptrace.core.hop import first_attempt_span_id  # noqa: E402
from hoptrace.core.patching import original_of  # noqa: E402
from hoptrace.core.propagator import baggage_entry  # noqa: E402


def make_app(**conf: Any) -> Celery:
    app = Celery(f"unit-{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(task_default_queue=f"q-{uuid.uuid4().hex[:6]}", **conf)

    @app.task(name="unit.context", bind=True, shared=False)
    def context(self: Any, label: str = "") -> dict[str, Any]:
        return {
            "transaction_id": hoptrace.current_transaction_id(),
            "trace_id": hoptrace.current_trace_id(),
            "span_id": hoptrace.current_span_id(),
            "label": label,
            "eager": self.request.is_eager,
        }

    @app.task(name="unit.nested", shared=False)
    def nested() -> dict[str, Any]:
        inner = context.apply(("inner",)).get()
        return {"outer_tx": hoptrace.current_transaction_id(), "inner": inner,
                "outer_span": hoptrace.current_span_id()}

    @app.task(name="unit.fail", shared=False)
    def fail() -> None:
        raise ValueError("nope")

    @app.task(name="unit.flaky", bind=True, shared=False, max_retries=5)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"), countdown=0)
        return int(self.request.retries)

    return app


@pytest.fixture
def instrumented() -> Iterator[None]:
    hoptrace.celery.instrument()
    try:
        yield
    finally:
        hoptrace.celery.uninstrument()


def receivers(signal: Any) -> int:
    return sum(1 for key, _ in signal.receivers if key[0] == "hoptrace.celery")


def drain(app: Celery) -> list[Any]:
    """Return every message waiting on the app's default queue (memory transport)."""
    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            messages.append(message)
            message.ack()
        queue.close()
    return messages


def test_instrument_and_uninstrument_are_idempotent() -> None:
    plain = AMQP._create_task_sender
    try:
        hoptrace.celery.instrument()
        hoptrace.celery.instrument()
        assert hoptrace.celery.is_instrumented()
        assert AMQP._create_task_sender is not plain
        assert original_of(AMQP._create_task_sender) is plain
        for signal in (signals.task_prerun, signals.task_postrun, signals.task_failure,
                       signals.task_retry):
            assert receivers(signal) == 1
    finally:
        hoptrace.celery.uninstrument()
        hoptrace.celery.uninstrument()
    assert not hoptrace.celery.is_instrumented()
    assert AMQP._create_task_sender is plain
    assert receivers(signals.task_prerun) == 0


def test_protocol_1_is_refused_at_instrument_time() -> None:
    app = make_app(task_protocol=1)
    with pytest.raises(hoptrace.ConfigurationError, match="protocol 2"):
        hoptrace.celery.instrument(app)
    assert not hoptrace.celery.is_instrumented()


def test_protocol_1_app_instrumented_globally_publishes_untraced_with_a_warning(
    instrumented: None, spans: Any
) -> None:
    app = make_app(task_protocol=1)
    with hoptrace.transaction("edge"):
        app.tasks["unit.context"].delay()
    (message,) = drain(app)
    assert "traceparent" not in message.headers
    assert hoptrace.diagnostics().get("celery.protocol1") == 1
    assert spans.named("send unit.context") == []


def test_publish_writes_context_and_overrides_stale_headers(instrumented: None, spans: Any) -> None:
    app = make_app()
    stale = "00-11111111111111111111111111111111-2222222222222222-01"
    with hoptrace.transaction("edge") as tx:
        result = app.tasks["unit.context"].apply_async(
            ("x",), headers={"traceparent": stale, "x-transaction-id": "old", "mine": "kept"}
        )
    (message,) = drain(app)
    headers = message.headers
    send = spans.one("send unit.context")
    assert headers["traceparent"] == f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-01"
    assert headers["x-transaction-id"] == tx.transaction_id
    assert headers["mine"] == "kept"
    assert int(headers["x-hoptrace-sent-ns"]) > 0
    assert send.attributes["messaging.message.id"] == result.id
    assert send.attributes["celery.task.name"] == "unit.context"
    assert send.attributes["messaging.system"] == "celery"


def test_an_app_that_published_before_instrument_is_traced_too(spans: Any) -> None:
    app = make_app()
    app.tasks["unit.context"].delay()  # builds and caches the app's sender, untraced
    assert "traceparent" not in drain(app)[0].headers
    hoptrace.celery.instrument()
    try:
        app.tasks["unit.context"].delay()
        assert "traceparent" in drain(app)[0].headers
    finally:
        hoptrace.celery.uninstrument()
    app.tasks["unit.context"].delay()
    assert "traceparent" not in drain(app)[0].headers
    assert len(spans.named("send unit.context")) == 1


def test_publish_failure_ends_the_send_span_and_restores_the_context(
    instrumented: None, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(Producer, "publish", refuse)
    with hoptrace.transaction("edge"):
        before = hoptrace.current_span_id()
        with pytest.raises(Exception, match="broker down"):
            app.tasks["unit.context"].apply_async(retry=False)
        assert hoptrace.current_span_id() == before
    send = spans.one("send unit.context")
    assert send.status.status_code.name == "ERROR"


def test_an_internal_error_still_publishes_exactly_once(
    instrumented: None, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("hoptrace bug")

    monkeypatch.setattr(hoptrace.celery, "_prepare_message", broken)
    app.tasks["unit.context"].delay()
    assert len(drain(app)) == 1
    assert hoptrace.diagnostics()["internal_error.celery.send_task_message"] == 1


def test_a_broken_retry_lookup_still_publishes_with_context(
    instrumented: None, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    def broken(headers: Any) -> None:
        raise RuntimeError("hoptrace bug")

    monkeypatch.setattr(hoptrace.celery, "_prepare_retry", broken)
    with hoptrace.transaction("edge") as tx:
        before = hoptrace.current_span_id()
        app.tasks["unit.context"].apply_async(retries=1)
        assert hoptrace.current_span_id() == before  # the send scope was closed
    (message,) = drain(app)
    assert baggage_entry(message.headers["baggage"], "transaction.id") == tx.transaction_id
    assert spans.one("send unit.context").end_time is not None
    assert hoptrace.diagnostics()["internal_error.celery.retry_headers"] == 1


def test_propagation_only_publish_writes_headers_without_spans(
    instrumented: None, spans: Any
) -> None:
    hoptrace.configure(propagation_only=True)
    app = make_app()
    with hoptrace.transaction("edge") as tx:
        app.tasks["unit.context"].delay()
    (message,) = drain(app)
    assert baggage_entry(message.headers["baggage"], "transaction.id") == tx.transaction_id
    assert "x-transaction-id" not in message.headers
    assert message.headers["traceparent"].startswith("00-")
    assert spans.named("send unit.context") == []


@pytest.mark.parametrize("how", ["always_eager", "apply"])
def test_eager_runs_keep_and_do_not_wipe_the_callers_context(
    instrumented: None, spans: Any, how: str
) -> None:
    app = make_app(task_always_eager=(how == "always_eager"))
    task = app.tasks["unit.context"]
    with hoptrace.transaction("caller") as tx:
        before = (hoptrace.current_transaction_id(), hoptrace.current_span_id())
        result = task.delay("e") if how == "always_eager" else task.apply(("e",))
        after = (hoptrace.current_transaction_id(), hoptrace.current_span_id())
        caller_trace = hoptrace.current_trace_id()
    seen = result.get()
    assert seen["eager"] is True
    assert after == before
    assert seen["transaction_id"] == tx.transaction_id
    assert seen["trace_id"] == caller_trace
    process = spans.one("process unit.context")
    caller = spans.one("caller")
    assert process.parent is not None and process.parent.span_id == caller.context.span_id
    assert seen["span_id"] == f"{process.context.span_id:016x}"
    assert spans.named("send unit.context") == []  # nothing was published
    assert hoptrace.celery.running_executions() == 0


def test_nested_eager_task_inside_an_eager_task(instrumented: None, spans: Any) -> None:
    app = make_app()
    with hoptrace.transaction("caller") as tx:
        seen = app.tasks["unit.nested"].apply().get()
        assert hoptrace.current_transaction_id() == tx.transaction_id
    assert seen["outer_tx"] == seen["inner"]["transaction_id"] == tx.transaction_id
    inner = spans.one("process unit.context")
    outer = spans.one("process unit.nested")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert seen["outer_span"] == f"{outer.context.span_id:016x}"


def test_eager_without_sdk_keeps_the_transaction(instrumented: None, no_sdk: None) -> None:
    app = make_app()
    with hoptrace.transaction("caller") as tx:
        trace_id = hoptrace.current_trace_id()
        seen = app.tasks["unit.context"].apply().get()
    assert seen["transaction_id"] == tx.transaction_id
    assert seen["trace_id"] == trace_id


def run_like_a_worker(app: Celery, name: str, request: dict[str, Any]) -> Any:
    """Run a task through Celery's worker tracer (not eager) with the given message headers."""
    task = app.tasks[name]
    tracer = build_tracer(name, task, app=app, eager=False, propagate=False)
    task_id = request.setdefault("id", str(uuid.uuid4()))
    request.setdefault("delivery_info", {"routing_key": "jobs", "exchange": ""})
    return tracer(task_id, [], {}, request)


def test_worker_tracer_restores_the_message_context(instrumented: None, spans: Any) -> None:
    app = make_app()
    with hoptrace.transaction("edge") as tx:
        headers = hoptrace.inject({})
        edge_trace = hoptrace.current_trace_id()
    assert hoptrace.current_transaction_id() is None
    outcome = run_like_a_worker(app, "unit.context", dict(headers))
    assert outcome.retval["transaction_id"] == tx.transaction_id
    assert outcome.retval["trace_id"] == edge_trace
    assert hoptrace.current_transaction_id() is None  # detached after the run
    process = spans.one("process unit.context")
    assert process.attributes["messaging.destination.name"] == "jobs"
    assert process.attributes["celery.task.state"] == "SUCCESS"
    assert hoptrace.celery.running_executions() == 0


def test_worker_tracer_failure_sets_error_status(instrumented: None, spans: Any) -> None:
    app = make_app()
    run_like_a_worker(app, "unit.fail", {})
    process = spans.one("process unit.fail")
    assert process.status.status_code.name == "ERROR"
    assert [e.attributes["exception.type"] for e in process.events] == ["ValueError"]
    assert hoptrace.celery.running_executions() == 0


def test_retry_link_header_is_read_and_bad_values_are_ignored(
    instrumented: None, spans: Any
) -> None:
    app = make_app()
    previous = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    run_like_a_worker(app, "unit.context",
                      {"retries": 2, hoptrace.celery.RETRY_OF_HEADER: previous})
    run_like_a_worker(app, "unit.context",
                      {"retries": 1, hoptrace.celery.RETRY_OF_HEADER: b"\xff garbage"})
    first, second = spans.named("process unit.context")
    assert first.attributes["messaging.message.retry.count"] == 2
    (link,) = first.links
    assert f"{link.context.span_id:016x}" == "b7ad6b7169203331"
    assert link.attributes == {"hoptrace.link.reason": "retry"}
    assert second.attributes["messaging.message.retry.count"] == 1
    assert list(second.links) == []


def run_delivery(app: Celery, name: str, message: Any, redelivered: bool) -> None:
    """Run a drained message's task as a worker would, with the broker's redelivered flag."""
    request = dict(message.headers)
    # Routed back to the app's queue, so that the retry Celery publishes can be drained.
    request["delivery_info"] = {"routing_key": app.conf.task_default_queue, "exchange": "",
                                "redelivered": redelivered}
    run_like_a_worker(app, name, request)


def sid(span: Any) -> str:
    return f"{span.context.span_id:016x}"


def test_each_retry_attempt_has_its_own_span_linked_to_the_attempt_before(
    instrumented: None, spans: Any
) -> None:
    """Retries carry the original send's context and arrive not redelivered: yet every
    attempt gets its own span ID (backends merge spans that share one), linked to the last."""
    app = make_app()
    with hoptrace.transaction("edge") as tx:
        app.tasks["unit.flaky"].delay()
    (message,) = drain(app)
    for _ in range(2):
        run_delivery(app, "unit.flaky", message, redelivered=False)
        (message,) = drain(app)  # the retry Celery published from the attempt
    run_delivery(app, "unit.flaky", message, redelivered=False)
    assert drain(app) == []

    send = [s for s in spans.named("send unit.flaky") if s.parent is None
            or s.parent.span_id == spans.one("edge").context.span_id]
    (original,) = send
    attempts = sorted(spans.named("process unit.flaky"), key=lambda s: s.start_time)
    assert len(attempts) == 3
    assert len({sid(a) for a in attempts}) == 3, [sid(a) for a in attempts]
    assert [a.attributes.get("messaging.message.retry.count") for a in attempts] == [None, 1, 2]
    assert [a.attributes["celery.task.state"] for a in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    for number, attempt in enumerate(attempts):
        assert attempt.parent is not None and attempt.parent.span_id == original.context.span_id
        assert attempt.context.trace_id == original.context.trace_id
        assert attempt.attributes["hoptrace.transaction.id"] == tx.transaction_id
        expected = [] if number == 0 else [(sid(attempts[number - 1]), {"hoptrace.link.reason": "retry"})]
        assert [(f"{link.context.span_id:016x}", dict(link.attributes or {}))
                for link in attempt.links] == expected
    # The first attempt keeps the span ID derived from the send, for a killed-worker redelivery.
    assert attempts[0].context.span_id == first_attempt_span_id(original.context, "unit.flaky")


def test_a_redelivered_retry_links_only_the_attempt_it_retries(
    instrumented: None, spans: Any
) -> None:
    """A retry whose worker died before the ack comes back redelivered: a span ID of its own,
    and no "redelivery" link to the first attempt (whose ID the send derives)."""
    app = make_app()
    with hoptrace.transaction("edge"):
        app.tasks["unit.flaky"].delay()
    (message,) = drain(app)
    for _ in range(2):
        run_delivery(app, "unit.flaky", message, redelivered=False)
        (message,) = drain(app)
    run_delivery(app, "unit.flaky", message, redelivered=False)  # the run that "died"
    run_delivery(app, "unit.flaky", message, redelivered=True)  # the broker's redelivery
    attempts = sorted(spans.named("process unit.flaky"), key=lambda s: s.start_time)
    assert len(attempts) == 4
    assert len({sid(a) for a in attempts}) == 4, [sid(a) for a in attempts]
    first_run, redelivery = attempts[2], attempts[3]
    assert redelivery.attributes["messaging.message.retry.count"] == 2
    for run in (first_run, redelivery):
        assert [(f"{link.context.span_id:016x}", dict(link.attributes or {}))
                for link in run.links] == [(sid(attempts[1]), {"hoptrace.link.reason": "retry"})]


def test_uninstrumented_worker_run_makes_no_span(spans: Any) -> None:
    app = make_app()
    outcome = run_like_a_worker(app, "unit.context", {})
    assert outcome.retval["transaction_id"] is None
    assert spans.all() == []


def test_opentelemetry_instrumentor_entry_point_class() -> None:
    instrumentor = hoptrace.celery.CeleryInstrumentor()
    assert any("celery" in dep for dep in instrumentor.instrumentation_dependencies())
    instrumentor.instrument()
    try:
        assert hoptrace.celery.is_instrumented()
    finally:
        instrumentor.uninstrument()
    assert not hoptrace.celery.is_instrumented()


def test_opentelemetry_instrument_loads_hoptrace_celery_from_the_entry_point() -> None:
    import os
    import shutil
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor")
                if e.value == "hoptrace.celery:CeleryInstrumentor"]
    assert entry.load() is hoptrace.celery.CeleryInstrumentor
    launcher = shutil.which("opentelemetry-instrument",
                            path=os.path.dirname(sys.executable))
    if launcher is None:
        pytest.skip("opentelemetry-instrument is not installed")
    done = subprocess.run(
        [launcher, sys.executable, "-c",
         "import hoptrace.celery; print('instrumented', hoptrace.celery.is_instrumented())"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
             "OTEL_LOGS_EXPORTER": "none",
             # OTel's own Celery instrumentation would trace the same hops twice.
             "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "celery"},
    )
    assert done.stdout.strip().splitlines()[-1] == "instrumented True", done.stderr
