"""A meter provider with no metric reader counts as metrics off, until a reader is added.

``opentelemetry-instrument`` sets an SDK ``MeterProvider`` whatever the metrics exporter;
with ``OTEL_METRICS_EXPORTER=none`` it has no reader, and whatever is recorded into it goes
nowhere. hoptrace then treats metrics as off, so the hooks cost one comparison and the
metrics-off shortcuts of the sends and opens apply. A reader added later (SDK 1.43+) gets
the next message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hoptrace
from hoptrace import _kafka
from hoptrace.core import hop, metrics
from hoptrace.core.settings import get_settings

#: Whether this SDK adds and removes readers after the provider is made (1.43+).
READERS_CHANGE = hasattr(MeterProvider, "add_metric_reader")

Install = Callable[[Any], Any]


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Make a provider the global one (as ``set_meter_provider`` does), shut down after."""
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    metrics.use_meter_provider(None)
    made: list[Any] = []

    def installed(provider: Any) -> Any:
        if provider not in made:
            made.append(provider)
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
        return provider

    yield installed
    for provider in made:
        provider.shutdown()


def consumed(reader: InMemoryMetricReader) -> dict[str, int]:
    """The consumed-messages count per destination that ``reader`` collects."""
    data = reader.get_metrics_data()
    return {point.attributes["messaging.destination.name"]: point.value
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics for metric in scope.metrics
            if metric.name == metrics.CONSUMED_MESSAGES for point in metric.data.data_points}


def one_message(destination: str) -> dict[str, Any]:
    """One message sent and consumed through hoptrace's scopes; its headers."""
    with hoptrace.produce_scope(None, destination, "rabbitmq") as scope:
        pass
    with hoptrace.consume_scope(scope.carrier, destination, "rabbitmq"):
        pass
    return scope.carrier  # type: ignore[no-any-return]


def test_a_provider_without_a_reader_counts_as_off(install: Install) -> None:
    hoptrace.configure(propagation_only=True, enabled_metrics={metrics.PATHWAY})
    install(MeterProvider())
    assert metrics.enabled() is False
    # The hooks' one comparison answers it, and the sends keep their metrics-off shortcuts.
    assert metrics.provider_source._METER_PROVIDER is metrics.off_provider
    assert _kafka.headers_only() is True
    assert metrics.ORIGIN_BAGGAGE_KEY not in one_message("orders").get("baggage", "")
    reader = InMemoryMetricReader()
    install(MeterProvider(metric_readers=[reader]))  # the same with a reader: on
    assert metrics.enabled() is True
    assert _kafka.headers_only() is False
    assert metrics.ORIGIN_BAGGAGE_KEY in one_message("orders")["baggage"]
    assert consumed(reader) == {"orders": 1}


def test_a_dropped_send_keeps_its_shortcut_under_a_provider_without_a_reader(
    install: Install, spans: Any
) -> None:
    # (drops_send_spans reads only the hooks' comparison: a provider not yet seen by a hook
    # counts as on, and the send takes its scope, whose hooks look at the provider.)
    install(MeterProvider())
    assert hop.drops_send_spans(get_settings()) is False
    assert metrics.enabled() is False
    assert hop.drops_send_spans(get_settings()) is True
    install(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    assert metrics.enabled() is True
    assert hop.drops_send_spans(get_settings()) is False


@pytest.mark.skipif(not READERS_CHANGE, reason="this SDK fixes a provider's readers")
def test_a_reader_added_later_counts_the_next_message(install: Install, spans: Any) -> None:
    provider = install(MeterProvider())
    one_message("orders")  # recorded nowhere: no reader
    assert metrics.enabled() is False
    reader = InMemoryMetricReader()
    provider.add_metric_reader(reader)
    # Asked first after the change, before anything else looks at the provider.
    assert _kafka.headers_only() is False and hop.drops_send_spans(get_settings()) is False
    assert metrics.enabled() is True
    one_message("orders")
    one_message("refunds")
    assert consumed(reader) == {"orders": 1, "refunds": 1}
    provider.remove_metric_reader(reader)  # no reader again: off again
    assert metrics.enabled() is False
    assert metrics.provider_source._METER_PROVIDER is metrics.off_provider
    assert hop.drops_send_spans(get_settings()) is True


@pytest.mark.skipif(not READERS_CHANGE, reason="this SDK fixes a provider's readers")
def test_watching_the_readers_leaves_the_sdk_alone(install: Install) -> None:
    seen = install(MeterProvider())
    assert metrics.enabled() is False
    consumer_class = type(seen._measurement_consumer)
    # Only the provider seen is watched, on its consumer instance, and only once.
    watched = seen._measurement_consumer.add_metric_reader
    assert metrics.enabled() is False
    install(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    assert metrics.enabled() is True
    install(seen)
    assert metrics.enabled() is False
    assert seen._measurement_consumer.add_metric_reader is watched
    assert "add_metric_reader" not in vars(MeterProvider()._measurement_consumer)
    assert "add_metric_reader" in vars(consumer_class)  # (the SDK's, unchanged)
    assert not hasattr(consumer_class.add_metric_reader, "_hoptrace_watched")
    # A reader added through the watched method is the SDK's: it collects.
    reader = InMemoryMetricReader()
    seen.add_metric_reader(reader)
    one_message("orders")
    assert consumed(reader) == {"orders": 1}


def test_every_metric_off_keeps_the_shortcuts_under_a_provider_with_a_reader(
    install: Install, spans: Any
) -> None:
    """``HOPTRACE_DISABLED_METRICS=*`` under a provider that exports other metrics (what
    ``opentelemetry-instrument`` sets with a metrics exporter): the metrics-off shortcuts."""
    reader = InMemoryMetricReader()
    install(MeterProvider(metric_readers=[reader]))
    hoptrace.configure(disabled_metrics={"*"})
    assert metrics.enabled() is False
    assert metrics.provider_source._METER_PROVIDER is metrics.off_provider
    assert hop.drops_send_spans(get_settings()) is True
    one_message("orders")
    assert consumed(reader) == {}
