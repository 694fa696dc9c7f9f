"""Differential tests of the AMQP publish fast paths against the general path they replace.

* ``hoptrace.aio_pika._with_headers`` (a field-by-field copy of a plain ``Message``) against
  ``copy.copy`` (aio-pika's ``Message.__copy__``) followed by setting the headers;
* ``hoptrace._amqp.destination`` (remembered names) against
  ``semconv.rabbitmq_destination``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import random
import types
from collections.abc import Mapping
from typing import Any

import pytest

from hoptrace import _amqp
from hoptrace.core import semconv

aio_pika = pytest.importorskip("aio_pika")
hoptrace_aio_pika = pytest.importorskip("hoptrace.aio_pika")

from aio_pika.abc import DeliveryMode  # noqa: E402
from aio_pika.message import IncomingMessage, Message  # noqa: E402

#: Every field ``Message.__copy__`` passes on (all of ``Message.__slots__`` but the headers).
FIELDS = ("app_id", "body", "body_size", "content_encoding", "content_type", "correlation_id",
          "delivery_mode", "expiration", "message_id", "priority", "reply_to", "timestamp",
          "type", "user_id", "_Message__lock")

UTC = datetime.timezone.utc
TEXTS = (None, "", "x", "order-42", "ünïcode", "a" * 300)
TIMESTAMPS: tuple[Any, ...] = (
    None, datetime.datetime(2026, 1, 1, tzinfo=UTC), datetime.datetime(2020, 5, 5),
    1_700_000_000, 1_700_000_000.5,
)
EXPIRATIONS: tuple[Any, ...] = (None, 10, 1.5, datetime.timedelta(seconds=3),
                                datetime.datetime(2030, 1, 1, tzinfo=UTC), "100")


def general(message: Any, headers: Any) -> Any:
    """What the publish wrapper did before the fast path: copy.copy, then set the headers."""
    outgoing = copy.copy(message)
    outgoing.headers = headers
    return outgoing


def fields_of(message: Any) -> dict[str, Any]:
    """Every field of ``message`` with its value and type (a missing field as such)."""
    values: dict[str, Any] = {}
    for name in (*FIELDS, "headers"):
        try:
            value = object.__getattribute__(message, name)
        except AttributeError:
            values[name] = "<unset>"
        else:
            values[name] = (type(value), value)
    return values


def constructed(rng: random.Random) -> Any:
    """A Message built by its constructor, from a random choice of valid arguments."""
    kwargs: dict[str, Any] = {}
    for name in ("correlation_id", "reply_to", "message_id", "type", "user_id", "app_id",
                 "content_type", "content_encoding"):
        value = rng.choice(TEXTS)
        if value is not None or rng.random() < 0.5:
            kwargs[name] = value
    if rng.random() < 0.7:
        kwargs["delivery_mode"] = rng.choice((None, 1, 2, DeliveryMode.PERSISTENT))
    if rng.random() < 0.7:
        kwargs["priority"] = rng.choice((None, 0, 1, 9))
    if rng.random() < 0.7:
        kwargs["timestamp"] = rng.choice(TIMESTAMPS)
    if rng.random() < 0.5:
        kwargs["expiration"] = rng.choice(EXPIRATIONS)
    if rng.random() < 0.5:
        kwargs["headers"] = rng.choice(({}, {"kept": "yes"}, None))
    body: Any = rng.choice((b"", b"x", b"{}" * 100, bytearray(b"ab"), memoryview(b"mv")))
    return Message(body, **kwargs)


#: Changes made after construction, several of which Message.__init__ would convert.
MUTATIONS: tuple[tuple[str, Any], ...] = (
    ("delivery_mode", 2), ("delivery_mode", None), ("delivery_mode", DeliveryMode.PERSISTENT),
    ("priority", None), ("priority", True), ("priority", 3), ("priority", 2.5),
    ("message_id", ""), ("message_id", 42), ("message_id", b"bytes"), ("message_id", "ok"),
    ("correlation_id", ""), ("reply_to", 0), ("type", "t"), ("user_id", ""), ("app_id", 7),
    ("timestamp", 1_700_000_000), ("timestamp", 2.5), ("timestamp", None),
    ("timestamp", datetime.datetime(2021, 2, 3, tzinfo=UTC)),
    ("body", b"changed"), ("body_size", 99), ("expiration", 30), ("content_type", 5),
)


def mutated(rng: random.Random) -> Any:
    message = constructed(rng)
    for name, value in rng.sample(MUTATIONS, rng.randint(1, 3)):
        setattr(message, name, value)
    if rng.random() < 0.2:
        message.lock()
    return message


@pytest.mark.parametrize("seed", range(400))
def test_copy_fast_path_matches_copy_copy(seed: int) -> None:
    rng = random.Random(seed)
    message = constructed(rng) if seed % 2 else mutated(rng)
    before = fields_of(message)
    carrier = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    try:
        expected = fields_of(general(message, carrier))
    except Exception as exc:  # __copy__ itself refuses: so must the wrapper
        with pytest.raises(type(exc)):
            hoptrace_aio_pika._with_headers(message, carrier)
        return
    outgoing = hoptrace_aio_pika._with_headers(message, carrier)
    assert type(outgoing) is Message
    assert outgoing is not message
    assert fields_of(outgoing) == expected
    assert outgoing.headers is carrier
    assert not outgoing.locked
    assert fields_of(message) == before  # the caller's message is untouched
    assert outgoing.info() == general(message, carrier).info()


def test_copy_fast_path_is_taken_for_a_plain_message() -> None:
    """The cases above exercise the fast path, not only the copy.copy fallback."""
    calls: list[Any] = []
    original = Message.__copy__
    def counted(self: Any) -> Any:
        calls.append(self)
        return original(self)

    Message.__copy__ = counted  # type: ignore[method-assign]
    try:
        hoptrace_aio_pika._with_headers(Message(b"x", message_id="m"), {})
        assert calls == []
        message = Message(b"x")
        message.priority = None  # __init__ would make it 0: the general path must run
        outgoing = hoptrace_aio_pika._with_headers(message, {})
        assert calls == [message] and outgoing.priority == 0
    finally:
        Message.__copy__ = original  # type: ignore[method-assign]


def test_copy_of_subclasses_goes_through_their_copy() -> None:
    class Mine(Message):
        __slots__ = ("extra",)

        def __copy__(self) -> Any:
            new = super().__copy__()
            return new

    mine = Mine(b"x")
    outgoing = hoptrace_aio_pika._with_headers(mine, {"a": "b"})
    assert fields_of(outgoing) == fields_of(general(mine, {"a": "b"}))
    delivered = object.__new__(IncomingMessage)
    with pytest.raises(AttributeError):  # as copy.copy of a half-built message raises
        general(delivered, {})
    with pytest.raises(AttributeError):
        hoptrace_aio_pika._with_headers(delivered, {})


NAMES = (None, "", "ex", "q", "amq.default", "k:1", "ünï")


@pytest.mark.parametrize("exchange", NAMES)
@pytest.mark.parametrize("routing_key", ("", "q", "k", "ex"))
@pytest.mark.parametrize("queue", NAMES)
def test_remembered_destination_matches_semconv(
    exchange: str | None, routing_key: str, queue: str | None
) -> None:
    expected = semconv.rabbitmq_destination(exchange, routing_key, queue)
    assert _amqp.destination(exchange, routing_key, queue) == expected
    assert _amqp.destination(exchange, routing_key, queue) == expected  # remembered


def test_remembered_destinations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_amqp, "_destinations", {})
    for n in range(_amqp._MAX_DESTINATIONS + 50):
        assert _amqp.destination("ex", f"key-{n}", None) == f"ex:key-{n}"
    assert len(_amqp._destinations) == _amqp._MAX_DESTINATIONS


# ------------------------------------------------- the headers-only publish (pika) ---

SENT = "x-hoptrace-sent-ns"

#: Caller headers: none, empty, the caller's own entries, a stale or foreign context, junk.
CALLER_HEADERS: tuple[Any, ...] = (
    None, {}, {"kept": "yes"}, {"x-transaction-id": "c" * 32},
    {"baggage": "transaction.id=" + "d" * 32 + ",tenant=acme"},
    {"traceparent": "00-" + "e" * 32 + "-" + "f" * 16 + "-01", "tracestate": "v=1"},
    {"traceparent": "junk", "baggage": "=,;", SENT: "not a number"},
    {"traceparent": b"\xff\xfe", "x-transaction-id": 42},
    # Written by the span active in the "transaction" case: traced already, sent unchanged.
    {"traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01", "kept": "yes"},
)


def _publish_once(fast: bool, headers: Any, ambient: str, monkeypatch: Any) -> Any:
    """One headers-only publish through the fast or the general path: what ``call`` saw."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    import hoptrace

    monkeypatch.setattr(_amqp, "headers_only_now", lambda: fast)
    seen: list[Any] = []

    def call(carrier: Any) -> str:
        seen.append((carrier, _amqp._publishing.get(), hoptrace.current_transaction_id(),
                     trace.get_current_span().get_span_context()))
        return "result"

    def publish() -> Any:
        return _amqp.publish(call, headers, "rabbitmq", exchange="ex", routing_key="k",
                             headers_only=True, label="test.publish")

    token = None
    if ambient == "nested":
        token = _amqp._publishing.set(True)
    try:
        if ambient == "transaction":
            with hoptrace.transaction("job", transaction_id="a" * 32):
                sc = trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1))
                ctx = trace.set_span_in_context(trace.NonRecordingSpan(sc))
                attached = otel_context.attach(ctx)
                try:
                    assert publish() == "result"
                finally:
                    otel_context.detach(attached)
        else:
            assert publish() == "result"
    finally:
        if token is not None:
            _amqp._publishing.reset(token)
    assert _amqp._publishing.get() is False
    (carrier, guard, tx, sc), = seen
    if isinstance(carrier, dict):
        carrier = {k: ("<time>" if k == SENT and v != (headers or {}).get(SENT) else v)
                   for k, v in carrier.items()}
    return carrier, guard, tx, sc


@pytest.mark.parametrize("headers", CALLER_HEADERS)
@pytest.mark.parametrize("ambient", ("none", "transaction", "nested"))
def test_headers_only_fast_path_matches_general_path(
    headers: Any, ambient: str, monkeypatch: pytest.MonkeyPatch, no_sdk: None
) -> None:
    import hoptrace

    hoptrace.configure(propagation_only=True)
    before = copy.deepcopy(headers)
    fast = _publish_once(True, headers, ambient, monkeypatch)
    general_result = _publish_once(False, headers, ambient, monkeypatch)
    assert headers == before  # the caller's headers are never changed
    if ambient == "transaction":
        assert fast == general_result
        traced = headers is not None and "kept" in headers and "traceparent" in headers
        assert (fast[0] is None) == traced
        if not traced:
            assert fast[0]["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    else:  # a fresh trace and transaction per publish: the same shape, other IDs
        fast_carrier, general_carrier = fast[0], general_result[0]
        assert (fast_carrier is None) == (general_carrier is None)
        if fast_carrier is not None:
            assert fast_carrier.keys() == general_carrier.keys()
            fresh = ("traceparent", "baggage", "x-transaction-id")
            assert {k: v for k, v in fast_carrier.items() if k not in fresh} \
                == {k: v for k, v in general_carrier.items() if k not in fresh}
            for carrier in (fast_carrier, general_carrier):  # a valid ID kept, else a new one
                assert (carrier.get("x-transaction-id") == "c" * 32) \
                    == ((headers or {}).get("x-transaction-id") == "c" * 32)
        assert fast[1:] == general_result[1:]


def test_headers_only_fast_path_errors(monkeypatch: pytest.MonkeyPatch, no_sdk: None) -> None:
    """inject failing: counted, the message goes out unchanged; the call's error propagates."""
    import hoptrace

    hoptrace.configure(propagation_only=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("inject broke")

    monkeypatch.setattr(_amqp, "inject", broken)
    sent: list[Any] = []

    def call(carrier: Any) -> int:
        sent.append(carrier)
        return 1

    assert _amqp.publish(call, {"a": "b"}, "rabbitmq", exchange="", routing_key="q",
                         headers_only=True, label="t.fast") == 1
    assert sent == [None]
    assert hoptrace.diagnostics().get("internal_error.t.fast") == 1

    def fails(carrier: Any) -> Any:
        assert _amqp._publishing.get() is True
        raise KeyError("publish failed")

    monkeypatch.undo()
    with pytest.raises(KeyError):
        _amqp.publish(fails, None, "rabbitmq", exchange="", routing_key="q", headers_only=True)
    assert _amqp._publishing.get() is False


# ------------------------------------------------- a delivery's scope (one frame) ---

LINKS: tuple[Any, ...] = (None, ())


@pytest.mark.parametrize("seed", range(20))
def test_a_delivery_scope_sets_what_consume_scope_s_constructor_sets(seed: int) -> None:
    """DeliveryScope sets consume_scope's fields itself (positional): none may be missed."""
    from hoptrace.core import hop

    rng = random.Random(seed)
    headers = rng.choice(CALLER_HEADERS)
    fields = (
        rng.choice(("q", "ex:k:q", "")), rng.choice(("rabbitmq", "kombu")),
        rng.choice((None, "m-1", "ü" * 3)),
        rng.choice((None, ("k", 7, "c-1"), ("", None, b"c"), (3, "7", None))),
        rng.choice((None, 0, 1_700_000_000 * 10**9)), rng.choice(LINKS),
        rng.choice((None, True, False)),
    )
    destination, system, message_id, delivery, sent_ns, links, redelivered = fields
    fast = _amqp.DeliveryScope(headers, *fields)
    general_scope = hop.consume_scope(
        headers, destination, system, message_id=message_id,
        attributes=None if delivery is None else functools.partial(
            _amqp.delivery_attributes, *delivery),
        sent_ns=sent_ns, links=links, redelivered=redelivered,
    )
    slots = [name for cls in type(fast).__mro__ for name in getattr(cls, "__slots__", ())]
    assert len(slots) > 15
    for name in slots:
        unset = object()  # (a slot neither sets stays unset in both)
        general = getattr(general_scope, name, unset)
        if name == "_attributes" and general is not None:  # (the partial, called)
            general = general()
        elif name == "_delivery":  # (DeliveryScope's own: what its attributes are made of)
            continue
        assert getattr(fast, name, unset) == general, name


class _Fields:
    """A delivery's method or properties object: some fields, maybe one that raises."""

    def __init__(self, values: dict[str, Any], raising: str | None = None) -> None:
        self.__dict__.update(values)
        self._raising = raising

    def __getattr__(self, name: str) -> Any:
        if name == self.__dict__.get("_raising"):
            raise KeyError(name)  # not an AttributeError: a broken object
        raise AttributeError(name)


METHOD_FIELDS = ("exchange", "routing_key", "delivery_tag", "redelivered")
PROPERTY_FIELDS = ("headers", "message_id", "correlation_id", "timestamp")
VALUES: tuple[Any, ...] = (None, "", "ex", 7, True, False, b"id", 1_700_000_000)


def _fields_object(rng: random.Random, names: tuple[str, ...]) -> _Fields:
    values = {name: rng.choice(VALUES) for name in names if rng.random() < 0.8}
    raising = rng.choice((None, None, None, *[n for n in names if n not in values]))
    return _Fields(values, raising)


def _getattr_path(method: Any, properties: Any, queue: Any) -> tuple[Any, ...]:
    """The arguments open_from gave open_delivery_fields before its attribute fast path."""
    return (
        getattr(properties, "headers", None), "rabbitmq", getattr(method, "exchange", None),
        getattr(method, "routing_key", None), queue, getattr(properties, "message_id", None),
        getattr(method, "delivery_tag", None), getattr(properties, "correlation_id", None),
        getattr(properties, "timestamp", None), getattr(method, "redelivered", True),
    )


@pytest.mark.parametrize("seed", range(200))
def test_open_from_reads_the_fields_getattr_would(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_from's plain attribute reads (getattr only when one is missing): the same fields."""
    rng = random.Random(seed)
    method = _fields_object(rng, METHOD_FIELDS)
    properties = _fields_object(rng, PROPERTY_FIELDS)
    seen: list[tuple[Any, ...]] = []

    def fields_taken(*args: Any) -> str:
        seen.append(args)
        return "s"

    monkeypatch.setattr(_amqp, "open_delivery_fields", fields_taken)
    try:
        expected: Any = _getattr_path(method, properties, "q")
    except KeyError:
        expected = None  # a broken object: counted, no scope
    result: Any = _amqp.open_from(method, properties, "q", "rabbitmq", "test.open_from")
    if expected is None:
        assert result is None and seen == []
    else:
        assert result == "s"
        assert seen == [expected]


def test_open_from_takes_plain_reads_for_pika_s_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path is the one taken for pika's own method and properties objects."""
    pika = pytest.importorskip("pika")
    from pika.spec import Basic  # type: ignore[import-untyped]

    method = Basic.Deliver(consumer_tag="c", delivery_tag=3, redelivered=False,
                           exchange="ex", routing_key="k")
    properties = pika.BasicProperties(headers={"a": "b"}, message_id="m",
                                      correlation_id="c", timestamp=5)
    calls: list[Any] = []
    monkeypatch.setattr(_amqp, "open_delivery_fields", lambda *args: calls.append(args))

    def no_getattr(*args: Any) -> Any:
        raise AssertionError("getattr path taken")

    monkeypatch.setattr(_amqp, "getattr", no_getattr, raising=False)
    _amqp.open_from(method, properties, "q", "rabbitmq", "t")
    assert calls == [({"a": "b"}, "rabbitmq", "ex", "k", "q", "m", 3, "c", 5, False)]


# ------------------------------------------------ pika's publish without a closure ---


def _pika_publish_once(direct: bool, properties: Any, monkeypatch: Any) -> Any:
    """One pika basic_publish, by the direct headers-only path or through _traced_call."""
    import hoptrace.pika as hp

    monkeypatch.setattr(_amqp, "headers_only_now", lambda: direct)
    sent: list[Any] = []

    def original(channel: Any, exchange: Any, routing_key: Any, body: Any, props: Any,
                 mandatory: Any) -> str:
        sent.append((channel, exchange, routing_key, body, props, mandatory,
                     _amqp._publishing.get()))
        return "done"

    assert hp._wrap_basic_publish(original)("ch", "ex", "k", b"body", properties, True) == "done"
    monkeypatch.undo()
    assert _amqp._publishing.get() is False
    (channel, exchange, routing_key, body, props, mandatory, guard), = sent
    if props is None or props is properties:
        return props, (channel, exchange, routing_key, body, mandatory, guard)
    caller = (properties.headers if properties is not None else None) or {}
    fields = {k: ("<fresh>" if k in ("traceparent", "baggage", SENT)
                  or (k == "x-transaction-id" and v != caller.get(k)) else v)
              for k, v in (props.headers or {}).items()}
    return ((type(props), {**vars(props), "headers": fields}),
            (channel, exchange, routing_key, body, mandatory, guard))


@pytest.mark.parametrize("headers", CALLER_HEADERS)
@pytest.mark.parametrize("with_properties", (False, True))
def test_pika_direct_publish_matches_the_traced_call(
    headers: Any, with_properties: bool, monkeypatch: pytest.MonkeyPatch, no_sdk: None
) -> None:
    pika = pytest.importorskip("pika")
    import hoptrace

    hoptrace.configure(propagation_only=True)
    properties = (pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                       message_id="m-1", headers=copy.deepcopy(headers))
                  if with_properties else None)
    before = copy.deepcopy(vars(properties)) if properties is not None else None
    direct = _pika_publish_once(True, properties, monkeypatch)
    general_result = _pika_publish_once(False, properties, monkeypatch)
    assert direct == general_result
    if properties is not None:
        assert vars(properties) == before  # the caller's properties are never changed


@pytest.mark.parametrize("seed", range(30))
def test_pika_properties_copy_matches_copy_copy(seed: int) -> None:
    pika = pytest.importorskip("pika")
    import hoptrace.pika as hp

    rng = random.Random(seed)
    texts = ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
             "message_id", "type", "user_id", "app_id")
    numbers = ("delivery_mode", "priority", "timestamp")
    chosen: dict[str, Any] = {n: rng.choice(("x", "ü", "", None)) for n in texts
                              if rng.random() < 0.5}
    chosen.update({n: rng.choice((0, 1, 2, None)) for n in numbers if rng.random() < 0.5})
    properties = pika.BasicProperties(**chosen)
    if rng.random() < 0.3:
        properties.extra = "set later"
    carrier = {"traceparent": "t"}
    expected = copy.copy(properties)
    expected.headers = carrier
    made = hp._copy_properties(properties, carrier)
    assert type(made) is type(expected)
    assert list(vars(made).items()) == list(vars(expected).items())
    assert made.headers is carrier and properties.headers is None
    assert made.encode() == expected.encode()


# ------------------------------------------------------ a publish's scope (one frame) ---


@pytest.mark.parametrize("headers", CALLER_HEADERS)
@pytest.mark.parametrize("message_id", (None, "m-1"))
def test_a_send_scope_sets_what_produce_scope_s_constructor_sets(
    headers: Any, message_id: Any
) -> None:
    """SendScope sets produce_scope's fields itself (positional): none may be missed."""
    from hoptrace.core import hop

    attrs = {"messaging.rabbitmq.destination.routing_key": "k"}
    fast = _amqp.SendScope(headers, "ex:k", "rabbitmq", message_id, attrs)
    general_scope = hop.produce_scope(headers, "ex:k", "rabbitmq", message_id=message_id,
                                      attributes=attrs, copy=True)
    slots = [name for cls in type(fast).__mro__ for name in getattr(cls, "__slots__", ())]
    assert len(slots) > 10
    for name in slots:
        unset = object()  # (a slot neither sets stays unset in both)
        assert getattr(fast, name, unset) == getattr(general_scope, name, unset), name


def _traced_publish(headers: Any, headers_only: bool) -> Any:
    seen: list[Any] = []

    def call(carrier: Any) -> str:
        seen.append(carrier)
        return "sent"

    assert _amqp.publish(call, headers, "rabbitmq", exchange="ex", routing_key="k",
                         message_id="m-1", correlation_id="c-1", headers_only=headers_only,
                         label="test.publish") == "sent"
    (carrier,) = seen
    return carrier


@pytest.mark.parametrize("mode", ("spans", "propagation_only"))
@pytest.mark.parametrize("headers_only", (False, True))
def test_an_empty_header_dict_publishes_as_no_headers(
    mode: str, headers_only: bool, spans: Any
) -> None:
    """An empty dict is sent as None is (no copy of it made): the same headers and span."""
    import hoptrace

    hoptrace.configure(propagation_only=mode == "propagation_only")
    results = []
    candidates: tuple[Any, ...] = ({}, None)
    for headers in candidates:
        spans.clear()
        with hoptrace.transaction("job", transaction_id="b" * 32):
            carrier = _traced_publish(headers, headers_only)
        assert type(carrier) is dict
        sent = spans.named("send ex:k")
        results.append((
            sorted(carrier), carrier["x-transaction-id"] if "x-transaction-id" in carrier
            else carrier["baggage"],
            [(s.kind, dict(s.attributes or {})) for s in sent],
        ))
    empty, none = results
    assert empty == none
    assert ("b" * 32) in str(empty[1])
    assert empty[2] or mode == "propagation_only"


class _Headers(dict):  # type: ignore[type-arg]
    """A dict subclass, as some callers pass: the ABC path, not the exact-type one."""


@pytest.mark.parametrize("headers", (
    None, {}, {"task": "t"}, {"kept": "yes"}, _Headers(task="t"), _Headers(), [("task", "t")],
    "task", b"task", 0, types.MappingProxyType({"task": 1}),
))
def test_kombu_celery_check_matches_the_mapping_check(headers: Any) -> None:
    """kombu's exact-type shortcuts give what the plain ``Mapping`` check gave."""
    import hoptrace.kombu as hk

    expected = isinstance(headers, Mapping) and hk.CELERY_TASK_HEADER in headers
    assert hk._is_celery(headers) is expected


@pytest.mark.parametrize("headers", (*CALLER_HEADERS, _Headers(traceparent="x"), [("a", "b")]))
def test_traced_already_is_false_without_the_active_span(headers: Any) -> None:
    """No active span named by the headers: never traced already (whatever their type)."""
    assert _amqp.traced_already(headers) is False


@pytest.mark.parametrize("kind", (dict, _Headers, types.MappingProxyType))
def test_traced_already_names_the_active_span(kind: Any) -> None:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    sc = trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1))
    headers = kind({"traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01"})
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(sc)))
    try:
        assert _amqp.traced_already(headers) is True
        assert _amqp.traced_already(kind({"traceparent": None})) is False
    finally:
        otel_context.detach(token)
    assert _amqp.traced_already(headers) is False
