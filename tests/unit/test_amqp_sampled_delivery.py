"""An AMQP delivery whose process span the sampler drops: the shortcut against the general path.

RabbitMQ flags every delivery: ``redelivered=False`` on a first one. Such a scope (pika's,
aio-pika's, kombu's, Celery's, through ``_amqp.open_delivery_fields``) now takes
``consume_scope._open_dropped``'s shortcut as a scope without the flag does, its dropped
child given the first attempt's fixed span ID (as ``_span_id`` gives it on the general
path), so a later redelivery can still link to it. Each case opens the same delivery both
ways (``consume_scope._dropped_fast`` on and off) from the same ambient context, seeded
IDs and clock, and compares everything the open leaves (``test_consume_dropped_fast_path``'s
comparison: the attached context, the scope's fields, exported spans, metrics calls,
diagnostics, the context after close), for the three flags and extra links, under samplers
that drop, keep, or that hoptrace does not know. Through pika's consumer callback it also
compares what the handler saw and what the redelivery memory holds afterwards.
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any

import pytest
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, TraceFlags
from test_consume_dropped_fast_path import SAMPLERS, _compare, install  # noqa: F401
from test_consume_fast_path import (
    AMBIENTS,
    CARRIERS,
    NOW_NS,
    SETTINGS,
    _ambient,
    _fuzzed,
    seeded_consume,
)

import hoptrace
from hoptrace import _amqp
from hoptrace import pika as hop_pika
from hoptrace.core import hop, semconv
from hoptrace.core.context import get_current

EARLIER = SpanContext(0x77, 0x88, False, TraceFlags(0))
LINKS: list[Any] = [None, [], [EARLIER]]


@pytest.mark.parametrize("c_open", [True, False], ids=["c-open", "python-open"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_a_flagged_delivery_opens_what_the_general_path_opens(
    sampler: str, settings: dict[str, Any], c_open: bool, install: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not c_open:
        monkeypatch.setattr(hop, "_open_dropped_c", None)
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(fast_spans=True, **settings)
    compared = 0
    for carrier, ambient, redelivered, links in itertools.product(
        [*CARRIERS, *_fuzzed(20)], AMBIENTS, (False, True, None), LINKS
    ):
        with _ambient(ambient):
            _compare(functools.partial(
                _amqp.DeliveryScope, carrier, "orders:k:q", semconv.SYSTEM_RABBITMQ, "m-1",
                None, NOW_NS - 2_000_000, links, redelivered,
            ), ids, exporter, monkeypatch)
        compared += 1
    assert compared == (len(CARRIERS) + 20) * len(AMBIENTS) * 3 * len(LINKS)


def test_a_first_delivery_gets_the_first_attempt_span_id(
    install: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """What the comparison compares: the shortcut runs, and the dropped child carries the
    fixed first-attempt ID (not a drawn one), in the producer's trace."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    general: list[Any] = []
    real = hop.consume_scope._open_general
    monkeypatch.setattr(hop.consume_scope, "_open_general",
                        lambda self, *a: general.append(1) or real(self, *a))
    carrier = {"traceparent": "00-" + "d" * 32 + "-" + "e" * 16 + "-00",
               "baggage": "transaction.id=" + "c" * 32}
    result = _compare(functools.partial(
        _amqp.DeliveryScope, carrier, "orders:k:q", semconv.SYSTEM_RABBITMQ, None, None, None,
        None, False), ids, exporter, monkeypatch)
    assert general == [1]  # only the general run: the shortcut opened by itself
    name, sc, recording = result["span"][:3]
    remote = SpanContext(int("d" * 32, 16), int("e" * 16, 16), True, TraceFlags(0))
    assert name == "NonRecordingSpan" and not recording
    assert sc.span_id == hop.first_attempt_span_id(remote, "orders:k:q")
    assert sc.trace_id == remote.trace_id and result["exported"] == []


class _Method:
    def __init__(self, redelivered: Any) -> None:
        self.exchange, self.routing_key, self.delivery_tag = "orders", "k", 7
        self.redelivered = redelivered


class _Properties:
    def __init__(self, headers: Any) -> None:
        self.headers, self.message_id, self.correlation_id = headers, "m-1", "c-1"
        self.timestamp = 1_700_000_000


def _delivered(fast: bool, headers: Any, redelivered: Any, ids: Any, exporter: Any,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One delivery to a pika consumer callback; what the handler saw and what is left."""
    monkeypatch.setattr(hop.consume_scope, "_dropped_fast", fast)
    ids.rng = random.Random(3)
    calls = seeded_consume(itertools.count(1), monkeypatch)
    exporter.clear()
    hoptrace.reset_diagnostics()
    _amqp.memory.forget_all()
    _amqp.memory.remember(hash(("00-" + "d" * 32 + "-" + "e" * 16 + "-00", None, "m-1")),
                          EARLIER)  # (an earlier delivery of one of the messages)
    seen: list[Any] = []

    def handler(channel: Any, method: Any, properties: Any, body: Any) -> None:
        sc = trace.get_current_span().get_span_context()
        seen.append((sc, hoptrace.current_transaction_id(), dict(otel_baggage.get_all()),
                     hoptrace.current_hop()))

    before = get_current()
    hop_pika._wrap_callback("q", handler)(object(), _Method(redelivered),
                                          _Properties(headers), b"body")
    return {
        "seen": seen, "restored": get_current() is before, "metrics": calls,
        "memory": dict(_amqp.memory._seen), "diagnostics": hoptrace.diagnostics(),
        "next span ID": ids.generate_span_id(),
        "exported": [(s.name, s.context, s.parent, dict(s.attributes or {}),
                      [(link.context, dict(link.attributes or {})) for link in s.links])
                     for s in exporter.get_finished_spans()],
    }


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_pika_deliveries_are_the_same_both_ways(
    sampler: str, install: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(fast_spans=True)
    for headers, redelivered in itertools.product(
        [*CARRIERS, *_fuzzed(10)], (False, True, None, 1, "yes")
    ):
        fast = _delivered(True, headers, redelivered, ids, exporter, monkeypatch)
        general = _delivered(False, headers, redelivered, ids, exporter, monkeypatch)
        assert fast == general, (headers, redelivered)
        assert fast["restored"] and len(fast["seen"]) == 1


def test_a_redelivery_links_to_the_dropped_first_delivery(
    install: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The memory the shortcut leaves links a later redelivery (here one that records, in
    link mode) to the first delivery's span."""
    exporter, ids = install(ParentBased(TraceIdRatioBased(0.01)))
    headers = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-00",
               "baggage": "transaction.id=" + "c" * 32}
    first = _delivered(True, headers, False, ids, exporter, monkeypatch)
    (sc, *_), = first["seen"]
    key = _amqp.message_key(headers, "m-1")
    assert first["memory"][key] == (sc.trace_id, sc.span_id, 0)
    links = _amqp.memory.links(key, headers, True)
    assert links is not None and links[0].context.span_id == sc.span_id
    assert isinstance(links[0], Link)
