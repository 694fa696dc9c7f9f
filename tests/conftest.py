"""Shared fixtures: an in-memory OTel SDK, a no-SDK mode, settings reset, captured logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hoptrace
from hoptrace import _config


class Spans:
    """Finished spans captured by an in-memory exporter, with lookups by name."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in self.all()]}"
        return found[0]

    def clear(self) -> None:
        self.exporter.clear()


def _swap_provider(provider: object) -> object:
    # The OTel API lets a process set its global provider once; tests swap it directly.
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    return previous


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    _config.reset()
    hoptrace.reset_diagnostics()
    yield
    _config.reset()
    hoptrace.reset_diagnostics()


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Install an SDK tracer provider that records every finished span in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = _swap_provider(provider)
    try:
        yield Spans(exporter)
    finally:
        _swap_provider(previous)
        provider.shutdown()


@pytest.fixture
def no_sdk() -> Iterator[None]:
    """Run with no OTel SDK installed, as a service without a tracing backend does."""
    previous = _swap_provider(None)
    try:
        yield
    finally:
        _swap_provider(previous)
