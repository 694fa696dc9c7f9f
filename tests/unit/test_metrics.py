"""Per-edge metrics read back through the SDK's InMemoryMetricReader."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.metrics import Meter
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hoptrace
from hoptrace.core import metrics

#: The API takes bucket advice from 1.23; before, the SDK's default buckets (or a View's) apply.
ADVISORY_BUCKETS = "explicit_bucket_boundaries_advisory" in inspect.signature(
    Meter.create_histogram).parameters


class Metrics:
    """The points an InMemoryMetricReader collected, looked up by metric and attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader
        # Cumulative points by (metric, attributes): the latest one seen. SDK 1.20 reports a
        # histogram's point only at the first collection after a record, so a point missing
        # from a later collection means "unchanged", not "gone".
        self.latest: dict[tuple[str, frozenset[Any]], Any] = {}

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset(point.attributes.items()))
                        self.latest[key] = point
        return [point for (metric, _), point in self.latest.items() if metric == name]

    def by_destination(self, name: str) -> dict[str, Any]:
        return {p.attributes["messaging.destination.name"]: p for p in self.points(name)}

    def names(self) -> set[str]:
        data = self.reader.get_metrics_data()
        return {m.name for r in (data.resource_metrics if data else [])
                for s in r.scope_metrics for m in s.metrics}


@pytest.fixture
def recorded() -> Iterator[Metrics]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        yield Metrics(reader)
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def send(destination: str, system: str = "rabbitmq", carrier: Any = None) -> dict[str, Any]:
    with hoptrace.produce_scope(carrier, destination, system) as scope:
        pass
    return scope.carrier  # type: ignore[no-any-return]


def test_counts_and_queue_wait_per_edge(recorded: Metrics, spans: Any) -> None:
    sent = {"orders": 3, "refunds": 2}
    for destination, count in sent.items():
        for _ in range(count):
            headers = send(destination)
            with hoptrace.consume_scope(headers, destination, "rabbitmq"):
                pass
    for name in (metrics.SENT_MESSAGES, metrics.CONSUMED_MESSAGES):
        assert {d: p.value for d, p in recorded.by_destination(name).items()} == sent
    waits = recorded.by_destination(metrics.QUEUE_WAIT)
    assert {d: p.count for d, p in waits.items()} == sent
    assert all(0 <= p.sum < 5 for p in waits.values())
    if ADVISORY_BUCKETS:
        assert list(waits["orders"].explicit_bounds) == list(metrics.LATENCY_BUCKETS)
    assert dict(waits["orders"].attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
    }
    (send_point,) = [p for p in recorded.points(metrics.OPERATION_DURATION)
                     if p.attributes["messaging.destination.name"] == "orders"]
    assert send_point.count == 3 and send_point.attributes["messaging.operation.name"] == "send"
    if ADVISORY_BUCKETS:
        assert list(send_point.explicit_bounds) == list(metrics.SEMCONV_BUCKETS)
    assert {d: p.count for d, p in recorded.by_destination(metrics.PROCESS_DURATION).items()} == sent
    assert recorded.points(metrics.CLOCK_SKEW) == []


def test_without_a_tracing_sdk_metrics_are_still_recorded(recorded: Metrics, no_sdk: None) -> None:
    headers = send("jobs", "kafka")
    with hoptrace.consume_scope(headers, "jobs", "kafka"):
        pass
    assert recorded.by_destination(metrics.SENT_MESSAGES)["jobs"].value == 1
    assert recorded.by_destination(metrics.QUEUE_WAIT)["jobs"].count == 1


def test_kafka_group_is_an_attribute_but_partition_and_key_are_not(recorded: Metrics) -> None:
    from hoptrace._kafka import record_scope

    headers = send("payments", "kafka")
    with record_scope("payments", 3, 17, b"k", headers, None, "billing"):
        pass
    (point,) = recorded.points(metrics.CONSUMED_MESSAGES)
    assert dict(point.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.destination.name": "payments",
        "messaging.consumer.group.name": "billing",
    }


def test_negative_queue_wait_is_clamped_to_zero_and_counted(recorded: Metrics) -> None:
    future = str(time.time_ns() + 60 * 10**9)
    for _ in range(2):
        with hoptrace.consume_scope({"x-hoptrace-sent-ns": future}, "late", "rabbitmq"):
            pass
    (wait,) = recorded.points(metrics.QUEUE_WAIT)
    assert wait.count == 2 and wait.sum == 0
    (skew,) = recorded.points(metrics.CLOCK_SKEW)
    assert skew.value == 2 and skew.attributes["messaging.destination.name"] == "late"


@pytest.fixture
def pathway() -> None:
    """The opt-in pathway metric on (conftest resets the settings after each test)."""
    hoptrace.configure(enabled_metrics={metrics.PATHWAY})


def test_pathway_runs_from_the_first_send_through_every_hop(
    recorded: Metrics, spans: Any, pathway: None
) -> None:
    with hoptrace.transaction("checkout"):
        first = send("step-1")
    assert metrics.ORIGIN_BAGGAGE_KEY in first["baggage"]
    time.sleep(0.02)
    with hoptrace.consume_scope(first, "step-1", "rabbitmq"):
        second = send("step-2", "kafka")  # republished inside the handler: same origin
    time.sleep(0.02)
    with hoptrace.consume_scope(second, "step-2", "kafka"):
        pass
    origin_1 = first["baggage"].split(metrics.ORIGIN_BAGGAGE_KEY + "=")[1].split(",")[0]
    origin_2 = second["baggage"].split(metrics.ORIGIN_BAGGAGE_KEY + "=")[1].split(",")[0]
    assert origin_1 == origin_2
    pathway = recorded.by_destination(metrics.PATHWAY)
    assert pathway["step-1"].count == 1 and pathway["step-2"].count == 1
    assert 0.02 <= pathway["step-1"].sum < pathway["step-2"].sum
    assert pathway["step-2"].sum >= 0.04
    # The queue wait of the second hop alone is shorter than its pathway.
    assert recorded.by_destination(metrics.QUEUE_WAIT)["step-2"].sum < pathway["step-2"].sum


@pytest.mark.parametrize("garbage", ["abc", "-5", "9" * 17, "%EF%BC%91%EF%BC%92", "", "1"])
def test_a_garbage_origin_is_ignored_without_a_warning(
    recorded: Metrics, caplog: pytest.LogCaptureFixture, garbage: str, pathway: None
) -> None:
    headers = send("orders")
    headers["baggage"] = f"{metrics.ORIGIN_BAGGAGE_KEY}={garbage},transaction.id=t-1"
    with caplog.at_level(logging.WARNING, logger="hoptrace"), \
            hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        assert hoptrace.current_transaction_id() is not None
    assert recorded.points(metrics.PATHWAY) == []
    assert recorded.by_destination(metrics.CONSUMED_MESSAGES)["orders"].value == 1
    assert [r for r in caplog.records if "origin" in r.getMessage()] == []
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())


def test_failures_carry_error_type(recorded: Metrics) -> None:
    with pytest.raises(ValueError), hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
        raise ValueError("bad order")
    with pytest.raises(ConnectionError), hoptrace.produce_scope(None, "orders", "rabbitmq"):
        raise ConnectionError("broker gone")
    (process,) = recorded.points(metrics.PROCESS_DURATION)
    assert process.attributes["error.type"] == "ValueError"
    sent = {p.attributes.get("error.type"): p.value for p in recorded.points(metrics.SENT_MESSAGES)}
    assert sent == {None: 1, "ConnectionError": 1}


def test_redeliveries_and_dead_letters_are_counted(recorded: Metrics) -> None:
    headers = send("orders")
    with hoptrace.consume_scope(headers, "orders", "rabbitmq", redelivered=False):
        pass
    with hoptrace.consume_scope(headers, "orders", "rabbitmq", redelivered=True):
        pass
    dead = {**headers, "x-death": [{"count": 1, "reason": "rejected", "queue": "orders"}]}
    with hoptrace.consume_scope(dead, "dlx:orders:orders.dlq", "rabbitmq"):
        pass
    (retry,) = recorded.points(metrics.RETRIES)
    assert retry.value == 1 and retry.attributes["hoptrace.retry.kind"] == "redelivery"
    (letter,) = recorded.points(metrics.DEAD_LETTERS)
    assert letter.value == 1
    assert letter.attributes["hoptrace.dead_letter.kind"] == "x-death"
    assert letter.attributes["messaging.destination.name"] == "dlx:orders:orders.dlq"


def test_temporary_queues_fold_into_one_destination(recorded: Metrics) -> None:
    for _ in range(3):
        name = f"amq.default:reply:amq.gen-{uuid.uuid4().hex}"
        with hoptrace.consume_scope(send("reply"), name, "rabbitmq"):
            pass
    (point,) = recorded.points(metrics.CONSUMED_MESSAGES)
    assert point.value == 3
    assert point.attributes["messaging.destination.name"] == "amq.default:reply:amq.gen-*"


def test_the_pathway_is_opt_in(
    recorded: Metrics, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # By default: no origin entry on the wire, no pathway recorded, the rest recorded.
    with hoptrace.transaction("checkout"):
        headers = send("orders")
    assert metrics.ORIGIN_BAGGAGE_KEY not in headers["baggage"]
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        pass
    # (Each collection read once: an SDK before 1.2x exports a cumulative histogram's
    # point only at the collection after a record.)
    assert recorded.by_destination(metrics.QUEUE_WAIT)["orders"].count == 1
    assert metrics.PATHWAY not in recorded.names()
    # Named in HOPTRACE_ENABLED_METRICS (or "*"): stamped by the first send, recorded.
    for value in (metrics.PATHWAY, "*"):
        monkeypatch.setenv("HOPTRACE_ENABLED_METRICS", value)
        hoptrace.configure()
        with hoptrace.transaction("checkout"):
            headers = send("orders")
        assert metrics.ORIGIN_BAGGAGE_KEY in headers["baggage"]
        with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
            pass
    assert recorded.by_destination(metrics.PATHWAY)["orders"].count == 2
    # An upstream origin still travels on through a service that records no pathway.
    monkeypatch.delenv("HOPTRACE_ENABLED_METRICS")
    hoptrace.configure()
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        onward = send("next")
    assert metrics.ORIGIN_BAGGAGE_KEY in onward["baggage"]


def test_disabled_metrics_win_over_enabled_ones(recorded: Metrics) -> None:
    hoptrace.configure(enabled_metrics=["*"], disabled_metrics={metrics.PATHWAY})
    headers = send("orders")
    assert metrics.ORIGIN_BAGGAGE_KEY not in headers.get("baggage", "")
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        pass
    assert metrics.PATHWAY not in recorded.names()


@pytest.mark.parametrize(("value", "message"), [
    ({metrics.PROCESS_DURATION}, r"already on by default.*opt-in metrics only"),
    ({"hoptrace.pathways"}, r"unknown metric\(s\) \['hoptrace\.pathways'\]"),
    (5, r"enabled_metrics must be an iterable of metric names"),
    ({3}, r"enabled_metrics must be a frozenset of metric names"),
])
def test_enabled_metrics_names_opt_in_metrics_only(value: Any, message: str) -> None:
    with pytest.raises(hoptrace.ConfigurationError, match=message):
        hoptrace.configure(enabled_metrics=value)


def test_a_bad_enabled_metrics_variable_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_ENABLED_METRICS", "messaging.process.duration")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        settings = hoptrace.configure()
    assert settings.enabled_metrics == frozenset()
    assert any("HOPTRACE_ENABLED_METRICS" in r.getMessage() for r in caplog.records)


def test_each_metric_switches_off(recorded: Metrics) -> None:
    hoptrace.configure(enabled_metrics={metrics.PATHWAY},
                       disabled_metrics={metrics.QUEUE_WAIT, metrics.PATHWAY})
    headers = send("orders")
    assert metrics.ORIGIN_BAGGAGE_KEY not in headers.get("baggage", "")  # no bytes for it
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        pass
    names = recorded.names()
    assert metrics.CONSUMED_MESSAGES in names
    assert metrics.QUEUE_WAIT not in names and metrics.PATHWAY not in names


def test_star_switches_every_metric_off(recorded: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPTRACE_DISABLED_METRICS", "*")
    hoptrace.configure()
    with hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
        pass
    assert recorded.names() == set()
    assert metrics.enabled() is False


def test_an_unknown_metric_name_is_a_configuration_error() -> None:
    with pytest.raises(hoptrace.ConfigurationError, match=r"hoptrace\.queue_waits"):
        hoptrace.configure(disabled_metrics={"hoptrace.queue_waits"})


def test_off_without_a_provider_and_on_once_the_global_one_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    assert metrics.enabled() is False
    headers = send("orders")
    assert metrics.ORIGIN_BAGGAGE_KEY not in headers.get("baggage", "")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # The application sets its provider later: the next message records into it.
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
    try:
        with hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
            pass
        assert Metrics(reader).by_destination(metrics.CONSUMED_MESSAGES)["orders"].value == 1
    finally:
        provider.shutdown()


def test_enabled_follows_the_provider_after_metrics_were_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """enabled() answers "off" at one comparison, never from a stale answer."""
    from opentelemetry.metrics import NoOpMeterProvider

    from hoptrace import _kafka

    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    metrics.use_meter_provider(None)
    hoptrace.configure(propagation_only=True)
    assert metrics.enabled() is False and metrics.enabled() is False  # known off
    assert _kafka.headers_only() is True
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        # (Each asked first after a change, before anything else looks at the provider.)
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)  # set later: on
        assert _kafka.headers_only() is False  # the send keeps its scope, to be counted
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
        assert metrics.enabled() is False
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
        assert metrics.enabled() is True
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", NoOpMeterProvider())
        assert _kafka.headers_only() is True and metrics.enabled() is False
        metrics.use_meter_provider(provider)  # an explicit provider: on
        assert _kafka.headers_only() is False and metrics.enabled() is True
        metrics.use_meter_provider(None)
        assert metrics.enabled() is False
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def test_http_edge_stamps_the_origin(recorded: Metrics, pathway: None) -> None:
    from hoptrace._edge import server_scope

    scope = server_scope([], "GET", "/", "http").open()
    try:
        headers = send("orders")
    finally:
        scope.close()
    assert metrics.ORIGIN_BAGGAGE_KEY in headers["baggage"]


# ------------------------------------------------------------------------- Celery

celery = pytest.importorskip("celery")


def celery_app() -> Any:
    from celery import Celery
    from celery.exceptions import Reject

    app = Celery(f"m-{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(task_default_queue=f"q-{uuid.uuid4().hex[:6]}")

    @app.task(name="m.flaky", bind=True, shared=False, max_retries=5)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(exc=RuntimeError("again"), countdown=0)
        return int(self.request.retries)

    @app.task(name="m.reject", shared=False)
    def reject(requeue: bool) -> None:
        raise Reject("poison", requeue=requeue)

    return app


def run_like_a_worker(app: Any, name: str, args: list[Any], request: dict[str, Any]) -> Any:
    from celery.app.trace import build_tracer

    task = app.tasks[name]
    tracer = build_tracer(name, task, app=app, eager=False, propagate=False)
    request.setdefault("delivery_info", {"routing_key": "jobs", "exchange": ""})
    return tracer(request.setdefault("id", str(uuid.uuid4())), args, {}, request)


def test_celery_retries_and_rejections_are_counted(recorded: Metrics, spans: Any) -> None:
    import hoptrace.celery

    hoptrace.celery.instrument()
    try:
        app = celery_app()
        for retries in (0, 1, 2):  # two attempts retry, the third succeeds
            run_like_a_worker(app, "m.flaky", [], {"retries": retries})
        run_like_a_worker(app, "m.reject", [False], {})
        run_like_a_worker(app, "m.reject", [True], {})  # requeued: not dead-lettered
    finally:
        hoptrace.celery.uninstrument()
    retries = [p for p in recorded.points(metrics.RETRIES)
               if p.attributes["hoptrace.retry.kind"] == "retry"]
    assert [(p.attributes["celery.task.name"], p.value) for p in retries] == [("m.flaky", 2)]
    (letter,) = recorded.points(metrics.DEAD_LETTERS)
    assert letter.value == 1
    assert letter.attributes["celery.task.name"] == "m.reject"
    assert letter.attributes["hoptrace.dead_letter.kind"] == "rejected"
    sent = recorded.by_destination(metrics.SENT_MESSAGES)
    assert sum(p.value for p in sent.values()) == 2  # the two retries Celery published


def test_celery_retries_are_counted_with_the_process_duration_off(
    recorded: Metrics, spans: Any
) -> None:
    import hoptrace.celery

    hoptrace.configure(disabled_metrics={metrics.PROCESS_DURATION})
    hoptrace.celery.instrument()
    try:
        run_like_a_worker(celery_app(), "m.flaky", [], {"retries": 0})
    finally:
        hoptrace.celery.uninstrument()
    (retry,) = recorded.points(metrics.RETRIES)
    assert retry.value == 1 and metrics.PROCESS_DURATION not in recorded.names()


def test_an_unknown_name_in_the_environment_warns_and_keeps_every_metric(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_DISABLED_METRICS", "hoptrace.queue_wait,nope")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        settings = hoptrace.configure()
    assert settings.disabled_metrics == frozenset()
    assert any("HOPTRACE_DISABLED_METRICS" in r.getMessage() and "nope" in r.getMessage()
               for r in caplog.records)


def test_pika_publish_without_a_tracing_sdk_still_counts_the_send(
    recorded: Metrics, no_sdk: None
) -> None:
    """basic_publish writes only the headers when no span records, but not when metrics do."""
    pika = pytest.importorskip("pika")
    import hoptrace.pika

    sent: list[Any] = []

    def original(channel: Any, exchange: str, routing_key: str, body: bytes, properties: Any,
                 mandatory: bool) -> None:
        sent.append(properties)

    publish = hoptrace.pika._wrap_basic_publish(original)
    for body in (b"1", b"2"):
        publish(None, "", "jobs", body, pika.BasicProperties(headers={}))
    assert len(sent) == 2 and all("traceparent" in p.headers for p in sent)
    (count,) = recorded.points(metrics.SENT_MESSAGES)
    (duration,) = recorded.points(metrics.OPERATION_DURATION)
    assert count.value == 2 and duration.count == 2
    assert count.attributes["messaging.system"] == "rabbitmq"


def test_tallies_sum_every_add_of_an_attribute_set_however_it_is_passed() -> None:
    # An edge's cached dict counts through its own cell (no key hashed per add); an equal
    # dict built elsewhere (a retry's {**attrs, kind}, an edge past the cache) through its
    # key. Both must land in one point, cumulative across collections.
    tally = metrics._Tally()
    edge = metrics.edge_attributes("kafka", "send", "tally-orders", None)
    copy = dict(edge)
    for _ in range(5):
        tally.add(1, edge)
    tally.add(2, copy)
    first = [(o.value, o.attributes) for o in tally.observe()]
    for _ in range(3):
        tally.add(1, edge)
    tally.add(1, {**edge, "hoptrace.retry.kind": "redelivery"})
    second = [(o.value, o.attributes) for o in tally.observe()]
    assert first == [(7, edge)]
    assert second == [(10, edge), (1, {**edge, "hoptrace.retry.kind": "redelivery"})]


def test_an_edge_without_extras_gets_the_dict_the_general_path_makes() -> None:
    # Scopes without extra attributes find their edge's dict by (system, operation,
    # destination); it must be the very dict that extras naming nothing new give, per edge.
    metrics._reset()
    seen: dict[int, tuple[str, str, str]] = {}
    for system in ("rabbitmq", "kafka"):
        for operation in ("send", "process", "receive"):
            for destination in ("orders", "amq.gen-Xy1", "shop:amq.gen-2", ""):
                fast = metrics.edge_attributes(system, operation, destination, None)
                general = metrics.edge_attributes(system, operation, destination, {})
                again = metrics.edge_attributes(system, operation, destination, None)
                assert fast is general is again
                folded = destination.split("amq.gen-")[0] + "amq.gen-*" \
                    if "amq.gen-" in destination else destination
                assert fast == {"messaging.system": system, "messaging.operation.name": operation,
                                "messaging.destination.name": folded}
                seen.setdefault(id(fast), (system, operation, folded))
    assert len(seen) == 2 * 3 * 4  # one dict per edge (equal dicts for folded queues)
    named = metrics.edge_attributes("kafka", "send", "orders",
                                    {"messaging.destination.name": "renamed"})
    assert named["messaging.destination.name"] == "renamed"
    assert metrics.edge_attributes("kafka", "send", "orders", None)[
        "messaging.destination.name"] == "orders"
    before = metrics.edge_attributes("kafka", "send", "orders", None)
    hoptrace.configure()  # a settings change drops the cached edges
    try:
        after = metrics.edge_attributes("kafka", "send", "orders", None)
        assert after == before and after is not before
    finally:
        from hoptrace import _config

        _config.reset()


def test_counts_go_on_across_a_settings_change() -> None:
    # A settings change rebuilds the instruments; the provider keeps the observable counters
    # it made first (and their callbacks), so the counts must keep going into those.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        def hop() -> None:
            with hoptrace.produce_scope(None, "settings-q", "rabbitmq") as send:
                carrier = send.carrier
            with hoptrace.consume_scope(carrier, "settings-q", "rabbitmq"):
                pass

        for _ in range(3):
            hop()
        hoptrace.configure(disabled_metrics={metrics.PATHWAY})
        for _ in range(4):
            hop()
        hoptrace.configure()
        for _ in range(2):
            hop()
        found = Metrics(reader)
        for name in (metrics.SENT_MESSAGES, metrics.CONSUMED_MESSAGES):
            values = [p.value for p in found.points(name)]
            assert values == [9], (name, values)
    finally:
        metrics.use_meter_provider(None)
        from hoptrace import _config

        _config.reset()
        provider.shutdown()


def test_off_then_an_explicit_provider_records(monkeypatch: pytest.MonkeyPatch) -> None:
    # Off (no provider): every hook returns at its first comparison, the context untouched.
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    metrics.use_meter_provider(None)
    assert metrics.enabled() is False
    ctx = otel_context.get_current()
    assert metrics.stamp_origin(ctx) is ctx
    assert metrics.send_started("rabbitmq", "orders", None) is None
    assert metrics.consumed("rabbitmq", "process", "orders", None, 1.0, False, None,
                            time.time_ns(), None, {}) is None
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hoptrace.configure(enabled_metrics={metrics.PATHWAY})
    metrics.use_meter_provider(provider)  # an explicit provider: "off" is known no more
    try:
        assert metrics.stamp_origin(ctx) is not ctx
        with hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
            pass
        recorded = Metrics(reader)
        assert recorded.by_destination(metrics.CONSUMED_MESSAGES)["orders"].value == 1
        assert recorded.by_destination(metrics.SENT_MESSAGES)["orders"].value == 1
        assert recorded.by_destination(metrics.PATHWAY)["orders"].count == 1
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def test_every_metric_off_then_on_again_with_the_global_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "*" with the global provider set: off, known at the first comparison. A settings
    # change forgets that: the next message records.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
    metrics.use_meter_provider(None)
    try:
        hoptrace.configure(disabled_metrics={"*"})
        with hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
            pass
        assert metrics.enabled() is False and Metrics(reader).names() == set()
        hoptrace.configure(disabled_metrics=set())
        with hoptrace.consume_scope(send("orders"), "orders", "rabbitmq"):
            pass
        assert Metrics(reader).by_destination(metrics.CONSUMED_MESSAGES)["orders"].value == 1
    finally:
        hoptrace.configure()
        provider.shutdown()
