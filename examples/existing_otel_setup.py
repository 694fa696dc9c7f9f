"""hoptrace inside an existing OpenTelemetry setup, with no broker.

Three things a service that already runs OpenTelemetry sees:

1. Another OTel instrumentation (here: plain ``opentelemetry.propagate``, as every contrib
   instrumentation calls it) carries hoptrace's transaction ID, because hoptrace keeps it in
   the W3C baggage; the handler on the other side finds it with
   ``hoptrace.current_transaction_id()``.
2. With B3 configured (``OTEL_PROPAGATORS=b3multi``, here ``set_global_textmap``), hoptrace
   writes and reads B3 headers, adding only its transaction ID (as the ``x-transaction-id``
   header: B3 carries no baggage) and send time.
3. ``TransactionIdPropagator`` (``OTEL_PROPAGATORS=tracecontext,baggage,hoptrace``) makes
   OTel's propagation read the ``x-transaction-id`` header that older senders write, and,
   with ``transaction_header`` set, write it too.

Run it: ``python examples/existing_otel_setup.py``.
"""

from __future__ import annotations

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider

import hoptrace

trace.set_tracer_provider(TracerProvider())
w3c = propagate.get_global_textmap()

# 1. A hop made by another OTel instrumentation, with the default propagators.
with hoptrace.transaction("checkout") as tx:
    headers: dict[str, str] = {}
    propagate.inject(headers)  # what contrib's pika, kafka, requests, httpx ... instrumentations do
print("1. OTel's own propagation wrote:", sorted(headers))
token = context.attach(propagate.extract(headers))  # ... and their consumer side
try:
    seen = hoptrace.current_transaction_id()
finally:
    context.detach(token)
print(f"   the handler's transaction ID: {seen} ({'ok' if seen == tx.transaction_id else 'LOST'})")

# 2. B3 instead of W3C trace context.
try:
    from opentelemetry.propagators.b3 import B3MultiFormat
except ImportError:  # pip install opentelemetry-propagator-b3
    B3MultiFormat = None
if B3MultiFormat is not None:
    propagate.set_global_textmap(B3MultiFormat())
    try:
        with hoptrace.transaction("checkout") as tx:
            headers = hoptrace.inject({})
            sent_trace = hoptrace.current_trace_id()
        print("2. under B3, hoptrace.inject wrote:", sorted(headers))
        with hoptrace.consume_scope(headers, "orders", "rabbitmq"):
            same = (hoptrace.current_trace_id(), hoptrace.current_transaction_id())
        ok = same == (sent_trace, tx.transaction_id)
        print(f"   the consumer's trace and transaction: {'ok' if ok else 'LOST'}")
    finally:
        propagate.set_global_textmap(w3c)

# 3. hoptrace's propagator beside the W3C ones.
propagate.set_global_textmap(
    CompositePropagator([*w3c._propagators, hoptrace.TransactionIdPropagator()])  # type: ignore[attr-defined]
)
try:
    token = context.attach(propagate.extract({"x-transaction-id": "order-1001"}))
    try:
        seen = hoptrace.current_transaction_id()
    finally:
        context.detach(token)
    print(f"3. an older sender's x-transaction-id, as OTel's extract restored it: {seen}")
    hoptrace.configure(transaction_header="x-transaction-id")  # for consumers that need it
    with hoptrace.transaction("checkout") as tx:
        headers = {}
        propagate.inject(headers)
    print("   with transaction_header set, OTel wrote:", sorted(headers))
    print(f"   x-transaction-id: {headers.get('x-transaction-id') == tx.transaction_id}")
finally:
    hoptrace.configure()
    propagate.set_global_textmap(w3c)
