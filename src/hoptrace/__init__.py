"""hoptrace: one transaction ID and one W3C trace across every asynchronous hop.

The core API knows no client library::

    import hoptrace

    with hoptrace.transaction("checkout"):
        headers = hoptrace.inject({})          # publish with these headers
    ...
    with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        hoptrace.current_transaction_id()      # the producer's transaction ID

Integrations live in one module per client: ``hoptrace.celery``, ``hoptrace.aiokafka``,
``hoptrace.confluent_kafka``, ``hoptrace.kafka_python``, ``hoptrace.pika``,
``hoptrace.kombu``, ``hoptrace.aio_pika``, and a FastStream middleware in
``hoptrace.faststream``.
"""

from __future__ import annotations

from .core import __version__
from .core.carriers import HeadersGetter, HeadersSetter
from .core.context import current_span_id, current_trace_id, current_transaction_id
from .core.diagnostics import diagnostics, rejections, reset_diagnostics
from .core.hop import (
    HopInfo,
    consume_scope,
    current_hop,
    produce_scope,
    receive_scope,
    spans_active,
)
from .core.propagation import extract, inject
from .core.propagator import TransactionIdPropagator
from .core.settings import ConfigurationError, Settings, configure, get_settings, reset
from .core.transaction import transaction

__all__ = [
    "ConfigurationError",
    "HeadersGetter",
    "HeadersSetter",
    "HopInfo",
    "Settings",
    "TransactionIdPropagator",
    "__version__",
    "configure",
    "consume_scope",
    "current_hop",
    "current_span_id",
    "current_trace_id",
    "current_transaction_id",
    "diagnostics",
    "extract",
    "get_settings",
    "inject",
    "produce_scope",
    "receive_scope",
    "rejections",
    "reset",
    "reset_diagnostics",
    "spans_active",
    "transaction",
]
