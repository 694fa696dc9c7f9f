"""_amqp._remembered (a delivery's memory key and link, dict headers read inline) against
``message_key`` and ``memory.links``, the steps it stands for, over many deliveries."""

from __future__ import annotations

import itertools
from collections import UserDict
from typing import Any

import pytest
from opentelemetry.trace import SpanContext, TraceFlags

from hoptrace import _amqp
from hoptrace._redelivery import memory, message_key
from hoptrace.core import settings as _settings

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TP2 = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"


def _headers() -> list[Any]:
    sent = _settings.get_settings().sent_time_header
    out: list[Any] = [None, {}, "not headers", [("traceparent", TP)]]
    for tp, when, death in itertools.product(
        (None, TP, TP2, b"bytes", 7), (None, "1700000000000", 5),
        (None, [{"count": 1}], [], 0, "x"),
    ):
        headers: dict[str, Any] = {}
        if tp is not None:
            headers["traceparent"] = tp
        if when is not None:
            headers[sent] = when
        if death is not None:
            headers["x-death"] = death
        out.append(headers)
        out.append(UserDict(headers))  # a Mapping that is not a dict: the general steps
        out.append(type("Sub", (dict,), {})(headers))
    return out


def _general(headers: Any, text_id: Any, redelivered: Any) -> tuple[Any, Any]:
    key = message_key(headers, text_id)
    return key, memory.links(key, headers, redelivered is not False) if key is not None else None


def _links(links: Any) -> Any:
    if links is None:
        return None
    return [(link.context.trace_id, link.context.span_id, int(link.context.trace_flags),
             dict(link.attributes)) for link in links]


@pytest.fixture(autouse=True)
def _clean_memory() -> Any:
    memory.forget_all()
    yield
    memory.forget_all()


def test_remembered_matches_message_key_and_links() -> None:
    settings = _settings.get_settings()
    cases = 0
    for remember in (False, True):
        for headers in _headers():
            for text_id in (None, "m-1", ""):
                if remember:  # an earlier delivery of this message in the memory
                    key = message_key(headers, text_id)
                    if key is not None:
                        memory.remember(key, SpanContext(
                            0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED)))
                for redelivered in (None, False, True, 0, "yes"):
                    fast = _amqp._remembered(headers, text_id, redelivered, settings)
                    general = _general(headers, text_id, redelivered)
                    assert fast[0] == general[0], (headers, text_id, redelivered)
                    assert _links(fast[1]) == _links(general[1]), (headers, text_id, redelivered)
                    cases += 1
    assert cases > 1000


def test_remembered_links_a_redelivery_and_a_dead_lettered_first_delivery() -> None:
    settings = _settings.get_settings()
    key = message_key({"traceparent": TP}, "m-1")
    assert key is not None
    memory.remember(key, SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED)))
    assert _amqp._remembered({"traceparent": TP}, "m-1", False, settings) == (key, None)
    _, links = _amqp._remembered({"traceparent": TP}, "m-1", True, settings)
    assert _links(links) == [(0xABC, 0xDEF, 1, {"hoptrace.link.reason": "redelivery"})]
    dead = {"traceparent": TP, "x-death": [{"count": 1}]}
    memory.remember(message_key(dead, "m-1"),
                    SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED)))
    _, links = _amqp._remembered(dead, "m-1", False, settings)
    assert _links(links) == [(0xABC, 0xDEF, 1, {"hoptrace.link.reason": "dead_letter"})]
    assert _amqp._remembered({}, None, True, settings) == (None, None)


def test_headers_only_now_follows_the_global_provider_as_sdk_installed_does() -> None:
    """headers_only_now reads sdk_installed's cached answer inline: a provider swapped in
    (or out) since the last question must still be seen."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import hoptrace
    from hoptrace.core import metrics
    from hoptrace.core.otel_shims import sdk_installed

    previous = trace._TRACER_PROVIDER
    sdk = TracerProvider()
    try:
        for propagation_only in (False, True):
            hoptrace.configure(propagation_only=propagation_only)
            for provider in (None, sdk, trace.NoOpTracerProvider(), sdk, None, sdk):
                trace._TRACER_PROVIDER = provider
                got = _amqp.headers_only_now()  # asked before sdk_installed() is
                spans = not propagation_only and sdk_installed()
                assert got == (not spans and not metrics.enabled()), (provider, propagation_only)
                assert got == (propagation_only or not isinstance(provider, TracerProvider))
    finally:
        trace._TRACER_PROVIDER = previous
        hoptrace.configure()


def test_a_delivery_follows_the_global_provider_as_sdk_installed_does() -> None:
    """open_delivery_fields reads sdk_installed's cached answer inline: a provider swapped in
    (or out) since the last question decides whether the delivery may record."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from hoptrace.core.otel_shims import sdk_installed

    previous = trace._TRACER_PROVIDER
    sdk = TracerProvider()
    try:
        for provider in (sdk, None, sdk, trace.NoOpTracerProvider(), sdk, None):
            trace._TRACER_PROVIDER = provider  # (sdk_installed not asked since the swap)
            scope = _amqp.open_delivery_fields(
                {"traceparent": TP}, "rabbitmq", "ex", "k", "q", "m-1", 7, None, None, False)
            assert scope is not None
            try:
                spans = sdk_installed()
                assert (scope._delivery is not None) is spans, provider
                assert spans is isinstance(provider, TracerProvider)
                assert (len(memory._seen) == 1) is spans, provider  # (remembered only then)
            finally:
                scope.close()
                memory.forget_all()
    finally:
        trace._TRACER_PROVIDER = previous
