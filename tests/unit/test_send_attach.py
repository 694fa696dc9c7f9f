"""A send without a span or metric: its context attached without the scope, as the scope did.

kafka-python's and aiokafka's ``send()``, kombu's ``Producer.publish`` and aio-pika's
``Exchange.publish`` run user code (serializers, a partitioner, retry errbacks) whose log
lines must keep the trace and the transaction ID. When no span is made (propagation-only,
or no SDK) and metrics are off, they render the headers and attach the send's context in
one step (``hop.unrecorded_send``) instead of opening a ``produce_scope``. Each test here
sends twice from the same random state, once that way and once through the scope (the
shortcut switched off), and compares what the client's stand-in got (headers), what it saw
(the whole current context: span context, transaction ID, baggage, every other value), what
it returned or raised, what is current after the call, and hoptrace's diagnostic counts.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import test_confluent_kafka_unit as unit
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_kafka_send_headers_differential import Headers

import hoptrace
from hoptrace import _amqp, _kafka
from hoptrace import aio_pika as hop_aio_pika
from hoptrace import aiokafka as hop_aiokafka
from hoptrace import kafka_python as hop_kafka_python
from hoptrace import kombu as hop_kombu
from hoptrace.core import hop, metrics
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY
from hoptrace.core.hop import HOP_SPAN_KEY

CARRIED = "c" * 32
SENT = "x-hoptrace-sent-ns"
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


class Hostile:
    """A header value whose text conversion fails."""

    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


KAFKA_HEADERS: list[Any] = [
    None,
    [],
    [("k", b"v")],
    [("traceparent", TRACEPARENT.encode()), ("k", b"v")],
    [("x-transaction-id", CARRIED.encode())],
    [(b"x-transaction-id", CARRIED.encode()), ("baggage", b"a=1")],
    [("baggage", b"transaction.id=" + CARRIED.encode())],
    [("x-transaction-id", b"not an id!")],
    [("x-transaction-id", b"\xff\xfe"), ("baggage", b"%%%,,=")],
    [42, ("k",), None, ("k", b"v", b"extra"), ("h", Hostile())],
    (("k", b"v"), ("x-transaction-id", CARRIED.encode())),
    {"k": "v", "x-transaction-id": CARRIED},
    Headers({"x-transaction-id": CARRIED, "k": "v"}),
    "not headers",
    42,
]

AMQP_HEADERS: list[Any] = [
    None,
    {},
    {"k": "v"},
    {"x-transaction-id": CARRIED, "k": 1},
    {"baggage": "transaction.id=" + CARRIED + ",tenant=a"},
    {"x-transaction-id": "not an id!", "traceparent": "garbage"},
    {"x-transaction-id": b"\xff\xfe", "h": Hostile(), "n": None},
    {"traceparent": TRACEPARENT, "k": [1, 2]},
    Headers({"x-transaction-id": CARRIED}),
    Headers({}),
    [("x-transaction-id", CARRIED)],
    "not headers",
]

TRACE = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
USER_VALUE = object()  # a value of the user's own in the context


def contexts() -> list[dict[Any, Any]]:
    """The ambient contexts a send runs in (a fresh span object per call)."""
    span = NonRecordingSpan(TRACE)
    return [
        {},
        {SPAN_KEY: span},
        {SPAN_KEY: span, HOP_SPAN_KEY: span, TRANSACTION_KEY: "d" * 32,
         BAGGAGE_KEY: {"transaction.id": "d" * 32}},
        {TRANSACTION_KEY: "e" * 32},
        {TRANSACTION_KEY: 123},
        {BAGGAGE_KEY: {"transaction.id": "f" * 32, "tenant": "a"}},
        {BAGGAGE_KEY: {"transaction.id": "bad id"}},
        {BAGGAGE_KEY: {"tenant": "a"}, "user": USER_VALUE},
        {SPAN_KEY: NonRecordingSpan(SpanContext(0, 0, False))},
    ]


def snapshot(ctx: Mapping[Any, Any]) -> dict[Any, Any]:
    """A context's values, spans as their span contexts (new objects on every send)."""
    out: dict[Any, Any] = {}
    for key, value in ctx.items():
        if isinstance(value, trace.Span):
            value = ("span", value.get_span_context())
        elif isinstance(value, dict):
            value = dict(value)
        out[key] = value
    if ctx.get(HOP_SPAN_KEY) is not None:
        out["hop span is the span"] = ctx.get(HOP_SPAN_KEY) is ctx.get(SPAN_KEY)
    return out


def observed() -> tuple[Any, ...]:
    """What a serializer or an errback sees of the current context."""
    sc = trace.get_current_span().get_span_context()
    return (sc.trace_id, sc.span_id, sc.trace_flags, hoptrace.current_transaction_id(),
            dict(otel_baggage.get_all()), snapshot(get_current()))


def untimed(headers: Any) -> Any:
    """``headers`` with the send time (read from the clock) as a placeholder."""
    def value(key: Any, raw: Any) -> Any:
        if key in (SENT, "x-sent"):  # (the default name, and one FRESH_SETTINGS gives)
            return "<time>"
        return raw

    if isinstance(headers, list):
        return [(item[0], value(*item)) if type(item) is tuple and len(item) == 2 else item
                for item in headers]
    if isinstance(headers, dict):
        return {k: value(k, v) for k, v in headers.items()}
    return headers


class Failure(Exception):
    """The client's own error."""


class Future:
    """A send future stand-in that records the callbacks hoptrace adds."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def add_callback(self, *args: Any) -> None:
        self.calls.append("callback")

    def add_errback(self, *args: Any) -> None:
        self.calls.append("errback")

    def add_done_callback(self, *args: Any) -> None:
        self.calls.append("done")


#: What the stand-in client does: return, raise, or leave a context of the user's attached
#: (a serializer that forgot to detach), then return or raise.
BEHAVIOURS = ("return", "raise", "leak", "leak and raise")


def client_call(behaviour: str, sent: Any, seen: list[Any]) -> Future:
    """The client's own send: record what it got and saw, then do ``behaviour``."""
    seen.append((untimed(sent), observed()))
    if behaviour.startswith("leak"):
        attach(Context({**get_current(), "leaked": True}))
    if behaviour.endswith("raise"):
        raise Failure("broker says no")
    return Future()


def drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (the stand-ins return at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the stand-in suspended")


class _Connection:
    class client:
        class transport:
            driver_type = "amqp"


class KombuProducer:
    channel = type("Channel", (), {"connection": _Connection()})()
    exchange = None
    routing_key = "k"


class AioExchange:
    name = "orders"


def kafka_python_send(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    def send(producer: Any, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: Any = None, timestamp_ms: Any = None) -> Any:
        return client_call(behaviour, headers, seen)

    traced = hop_kafka_python._wrap_send(send)
    future = traced(object(), "orders", b"v", key=b"k", headers=headers)
    return future.calls


def aiokafka_send(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    async def send(producer: Any, topic: str, value: Any = None, key: Any = None,
                   partition: Any = None, timestamp_ms: Any = None, headers: Any = None) -> Any:
        return client_call(behaviour, headers, seen)

    traced = hop_aiokafka._wrap_send(send)
    future = drive(traced(object(), "orders", b"v", key="k", headers=headers,
                          timestamp_ms=1700000000000))
    return future.calls


def kombu_publish(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    def publish(producer: Any, body: Any, **kwargs: Any) -> Any:
        return client_call(behaviour, kwargs.get("headers"), seen)

    given = headers
    before = untimed(dict(headers)) if isinstance(headers, dict) else None
    traced = hop_kombu._wrap_publish(publish)
    traced(KombuProducer(), {"order": 42}, exchange="orders", routing_key="k",
           headers=headers, message_id="m-1", correlation_id="c-1", retry=True)
    if before is not None:
        assert untimed(given) == before  # the caller's dict is never changed
    return None


def aio_pika_publish(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    import aio_pika

    message = aio_pika.Message(b"x", message_id="m-1", correlation_id="c-1")
    message.headers = headers  # (any type: the client's own setter stores it)
    given = message.headers
    before = list(given.items()) if isinstance(given, Mapping) else given

    async def publish(exchange: Any, sent: Any, routing_key: str, *args: Any,
                      **kwargs: Any) -> Any:
        assert args == () and kwargs == {"mandatory": False}
        assert sent.body == b"x" and sent.message_id == "m-1"
        assert (sent is message) == (sent.headers is message.headers)
        return client_call(behaviour, sent.headers, seen)

    traced = hop_aio_pika._wrap_publish(publish)
    drive(traced(AioExchange(), message, "k", mandatory=False))
    assert message.headers is given  # the caller's message and headers are never changed
    assert (list(given.items()) if isinstance(given, Mapping) else given) == before
    return None


CLIENTS: dict[str, tuple[Callable[[Any, str, list[Any]], Any], list[Any]]] = {
    "kafka-python": (kafka_python_send, KAFKA_HEADERS),
    "aiokafka": (aiokafka_send, KAFKA_HEADERS),
    "kombu": (kombu_publish, AMQP_HEADERS),
    "aio-pika": (aio_pika_publish, AMQP_HEADERS),
}


def fresh(headers: Any) -> Any:
    """A new copy of ``headers`` (a send may write into the caller's object)."""
    if isinstance(headers, Headers):
        return Headers(dict(headers))
    if isinstance(headers, (dict, list)):
        return type(headers)(headers)
    return headers


def one_send(client: Any, headers: Any, ambient: dict[Any, Any], behaviour: str,
             state: Any) -> dict[str, Any]:
    """Send once in ``ambient`` from random ``state``; return everything observable.
    ``client``: a name in :data:`CLIENTS`, or a stand-in send of its own."""
    send = CLIENTS[client][0] if isinstance(client, str) else client
    hoptrace.reset_diagnostics()
    random.setstate(state)
    seen: list[Any] = []
    token = attach(Context(ambient))
    try:
        try:
            outcome: Any = ("returned", send(fresh(headers), behaviour, seen))
        except Failure as exc:
            outcome = ("raised", str(exc))
        after = snapshot(get_current())
    finally:
        detach(token)
    return {"seen": seen, "outcome": outcome, "after": after,
            "diagnostics": hoptrace.diagnostics()}


#: Both ways a send makes no span (propagation-only with an SDK, or no SDK): that fixture.
spanless = unit.headers_only_mode


class Shortcut:
    """Counts the sends that took the shortcut; ``off()`` sends through the scope instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.taken = 0
        # (Each module's own name for hop.unrecorded_send.)
        kafka, amqp = vars(_kafka)["unrecorded_send"], vars(_amqp)["unrecorded_send"]

        def counted(real: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                result = real(*args)
                self.taken += result is not None
                return result
            return call

        monkeypatch.setattr(_kafka, "unrecorded_send", counted(kafka))
        monkeypatch.setattr(_amqp, "unrecorded_send", counted(amqp))

    def off(self) -> None:
        self.monkeypatch.setattr(_kafka, "unrecorded_send", lambda *args: None)
        self.monkeypatch.setattr(_amqp, "unrecorded_send", lambda *args: None)


SETTINGS: list[dict[str, Any]] = [
    {},
    {"transaction_header": "x-transaction-id"},
    {"transaction_header": "x-request-id"},
    {"baggage_mirror": False},
    {"baggage_mirror": False, "transaction_header": "x-request-id"},
]


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(map(str, o.items())) or "defaults")
@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_shortcut_sends_and_attaches_what_the_scope_does(
    spanless: str, client: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=spanless == "propagation_only", **options)
    shortcut = Shortcut(monkeypatch)
    _, shapes = CLIENTS[client]
    cases = list(itertools.product(shapes, range(len(contexts())), BEHAVIOURS))
    states = []
    fast = []
    for headers, which, behaviour in cases:
        states.append(random.getstate())
        fast.append(one_send(client, headers, contexts()[which], behaviour, states[-1]))
    # Every send with headers a client can carry went through the shortcut.
    assert shortcut.taken == sum(
        1 for headers, _, _ in cases if not isinstance(headers, (str, int)))
    shortcut.off()
    for (headers, which, behaviour), state, got in zip(cases, states, fast, strict=True):
        want = one_send(client, headers, contexts()[which], behaviour, state)
        assert got == want, (headers, contexts()[which], behaviour)


def test_the_comparison_sees_what_a_send_carries(
    no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The observations the comparison makes hold the send's trace, transaction and baggage."""
    state = random.getstate()
    got = one_send("kafka-python", [("x-transaction-id", CARRIED.encode())], {}, "leak", state)
    ((sent, (trace_id, span_id, _, tx, bag, ctx)),) = got["seen"]
    assert tx == CARRIED and bag == {"transaction.id": CARRIED}
    assert trace_id and span_id and ctx["hop span is the span"]
    assert dict(sent)["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-00".encode()
    assert got["after"] == {}  # the leak was built on the send's span: it goes with it
    assert got["outcome"] == ("returned", [])  # no span, no metric: nothing awaits the ack


def test_no_shortcut_with_spans_metrics_or_hoptrace_off(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hop.unrecorded_send(None) is None  # spans on: the scope makes its span
    hoptrace.configure(propagation_only=True)
    attached = hop.unrecorded_send(None)
    assert attached is not None and attached[1] is not None
    attached[1].close()
    hoptrace.configure(enabled=False)
    assert hop.unrecorded_send(None) is None
    hoptrace.configure(propagation_only=True)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        assert hop.unrecorded_send(None) is None  # metrics on: the scope counts the send
        hop_kafka_python._wrap_send(lambda *args: Future())(object(), "orders", b"v")
        data = reader.get_metrics_data()
        names = {m.name for r in data.resource_metrics for s in r.scope_metrics
                 for m in s.metrics} if data else set()
        assert "messaging.client.sent.messages" in names
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def test_a_send_in_a_transaction_with_an_sdk_attaches_nothing(spans: Any) -> None:
    """propagation-only with an SDK, a transaction bound: the scope attached nothing either."""
    hoptrace.configure(propagation_only=True)
    with hoptrace.transaction("job"):
        before = get_current()
        answer = hop.unrecorded_send([], False, False)
        assert answer is not None
        sent, attached = answer
        assert attached is None and get_current() is before
        assert dict(sent)["baggage"].decode().startswith("transaction.id=")


# ------------------------------------------------------------- _fresh_send ---
# No carrier and an empty context (a send outside any trace and transaction): unrecorded_send
# takes hop._fresh_send, its steps and render's common case inline. The same random draws,
# so the same IDs: compared here with the general path (hop._fresh_fast off).

def _custom_id() -> str:
    return f"job-{random.getrandbits(16)}"


#: Whether _invalid_id gives invalid IDs (not while configure() tries it).
_INVALID = {"now": False}


def _invalid_id() -> str:
    return "not an id!" if _INVALID["now"] else "fine"


FRESH_SETTINGS: list[dict[str, Any]] = [
    *SETTINGS,
    {"transaction_id_generator": _custom_id},
    {"transaction_id_generator": _invalid_id, "warning_interval": 0},
    {"max_baggage_bytes": 40},  # the mirror cannot carry every ID: render's other branch
    {"max_baggage_bytes": 40, "transaction_header": "x-transaction-id"},
    {"baggage_key": "tx", "sent_time_header": "x-sent"},
]


def fresh_send(sent_time: bool, state: Any, fast: bool,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """unrecorded_send(None) in an empty context from random ``state``: what it gives."""
    monkeypatch.setattr(hop, "_fresh_fast", fast)
    hoptrace.reset_diagnostics()
    random.setstate(state)
    token = attach(Context())
    try:
        answer = hop.unrecorded_send(None, sent_time, True)
        assert answer is not None
        headers, attached = answer
        inside = (type(headers), untimed(headers), observed())
        if attached is not None:
            attached.close()
        after = snapshot(get_current())
    finally:
        detach(token)
    return {"inside": inside, "after": after, "diagnostics": hoptrace.diagnostics(),
            "next draw": random.getrandbits(64)}


@pytest.mark.parametrize("options", FRESH_SETTINGS,
                         ids=lambda o: ",".join(map(str, o.items())) or "defaults")
def test_a_fresh_send_is_what_the_general_path_makes(
    spanless: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=spanless == "propagation_only", **options)
    monkeypatch.setitem(_INVALID, "now", True)
    calls: list[Any] = []
    real = hop._fresh_send

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(hop, "_fresh_send", counted)
    for seed, sent_time in itertools.product(range(25), (True, False)):
        random.seed(seed)
        state = random.getstate()
        got = fresh_send(sent_time, state, True, monkeypatch)
        want = fresh_send(sent_time, state, False, monkeypatch)
        assert got == want, (seed, sent_time)
    assert len(calls) == 50  # every send with the shortcut on took it


def test_a_fresh_send_through_another_propagator_or_a_failing_writer(
    no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-W3C propagator, no C writer, a writer that fails: render's own answers."""
    from opentelemetry import propagate
    from opentelemetry.propagators.b3 import B3MultiFormat

    from hoptrace.core import propagation

    def compare() -> None:
        for seed in range(10):
            random.seed(seed)
            state = random.getstate()
            got = fresh_send(True, state, True, monkeypatch)
            assert got == fresh_send(True, state, False, monkeypatch), seed

    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(B3MultiFormat())
    try:
        compare()
    finally:
        propagate.set_global_textmap(saved)
    monkeypatch.setattr(propagation, "_write_common", None)
    compare()

    def broken(*args: Any) -> bool:
        raise RuntimeError("writer broke")

    monkeypatch.setattr(propagation, "_write_common", broken)
    monkeypatch.setattr(propagation, "_mint_common", broken)
    compare()
    got = fresh_send(True, random.getstate(), True, monkeypatch)
    assert got["inside"][1] == {} and got["diagnostics"]  # counted; the context attached
    assert got["inside"][2][3] is not None
