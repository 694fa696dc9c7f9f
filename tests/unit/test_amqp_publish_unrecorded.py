"""kombu's and aio-pika's publish without a span or metric: ``_amqp.begin_unrecorded``.

When no span is made (propagation-only, or no SDK) and metrics are off, the two wrappers
take ``_amqp.begin_unrecorded`` and call the client themselves: no closure, no
``_amqp.publish`` frames, and no messaging system or destination worked out (only a span
uses them). Each test here publishes twice from the same random state, once that way and
once through ``_amqp.publish`` (``_amqp._unrecorded_fast`` off), and compares everything
``test_send_attach.one_send`` observes: the headers the client got, the context it saw,
what it returned or raised, what is current afterwards, and hoptrace's diagnostic counts.
Publishes nested in the client's call (a retry errback, a serializer, a second wrapper)
must still go out unchanged, whichever path the outer one took.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import test_confluent_kafka_unit as unit
import test_send_attach as sa
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current

import hoptrace
from hoptrace import _amqp
from hoptrace import aio_pika as hop_aio_pika
from hoptrace import kombu as hop_kombu

spanless = unit.headers_only_mode

#: Routing keys and message IDs: the shortcut takes str and None, the rest take _begin's
#: own path (their text conversion, its failures and counts).
KEYS: list[Any] = [None, "", "k", 7, sa.Hostile()]
IDS: list[Any] = [None, "m-1", "", 42, sa.Hostile(), b"\xff"]


def kombu_positional(headers: Any, behaviour: str, seen: list[Any]) -> Any:
    """kombu's publish with its arguments by position (the wrapper names them)."""
    def publish(producer: Any, body: Any, **kwargs: Any) -> Any:
        assert kwargs["retry"] is True and kwargs["exchange"] == "orders"
        return sa.client_call(behaviour, kwargs.get("headers"), seen)

    traced = hop_kombu._wrap_publish(publish)
    traced(sa.KombuProducer(), {"order": 42}, "k", None, False, False, 0, None, None, None,
           headers, None, "orders", True, message_id="m-1")
    return None


def nested(client: str) -> Any:
    """A publish whose client publishes twice more through the same wrapper: with no
    headers, and with the headers it was given (a second wrapper's call)."""
    def kombu(headers: Any, behaviour: str, seen: list[Any]) -> Any:
        traced: Any = None

        def publish(producer: Any, body: Any, **kwargs: Any) -> Any:
            if len(seen) == 0:
                sa.client_call("return", kwargs.get("headers"), seen)
                traced(producer, body, routing_key="inner", headers=None)
                traced(producer, body, routing_key="inner", headers=kwargs.get("headers"))
                return sa.client_call(behaviour, None, seen)
            return sa.client_call("return", kwargs.get("headers"), seen)

        traced = hop_kombu._wrap_publish(publish)
        traced(sa.KombuProducer(), {"order": 42}, routing_key="k", headers=headers)
        return None

    def aio_pika(headers: Any, behaviour: str, seen: list[Any]) -> Any:
        import aio_pika as client

        message = client.Message(b"x", message_id="m-1")
        message.headers = headers
        traced: Any = None

        async def publish(exchange: Any, sent: Any, routing_key: str) -> Any:
            if len(seen) == 0:
                sa.client_call("return", sent.headers, seen)
                await traced(exchange, client.Message(b"y"), "inner")
                await traced(exchange, sent, "inner")
                return sa.client_call(behaviour, None, seen)
            return sa.client_call("return", sent.headers, seen)

        traced = hop_aio_pika._wrap_publish(publish)
        sa.drive(traced(sa.AioExchange(), message, "k"))
        return None

    return {"kombu": kombu, "aio-pika": aio_pika}[client]


def keyed(client: str, key: Any, message_id: Any) -> Any:
    """A publish with routing key ``key`` and message ID ``message_id``."""
    def kombu(headers: Any, behaviour: str, seen: list[Any]) -> Any:
        def publish(producer: Any, body: Any, **kwargs: Any) -> Any:
            return sa.client_call(behaviour, kwargs.get("headers"), seen)

        hop_kombu._wrap_publish(publish)(sa.KombuProducer(), {}, routing_key=key,
                                         headers=headers, message_id=message_id)
        return None

    def aio_pika(headers: Any, behaviour: str, seen: list[Any]) -> Any:
        message = _Message(headers, message_id)

        async def publish(exchange: Any, sent: Any, routing_key: Any) -> Any:
            return sa.client_call(behaviour, sent.headers, seen)

        sa.drive(hop_aio_pika._wrap_publish(publish)(sa.AioExchange(), message, key))
        return None

    return {"kombu": kombu, "aio-pika": aio_pika}[client]


class _Message:
    """A message of another class (copied by ``copy.copy``), with any message ID."""

    def __init__(self, headers: Any, message_id: Any) -> None:
        self.headers = headers
        self.message_id = message_id
        self.correlation_id = None


def compare(client: str, send: Any, headers_list: list[Any], monkeypatch: pytest.MonkeyPatch,
            behaviours: tuple[str, ...] = sa.BEHAVIOURS) -> int:
    """Publish each case with the shortcut on, then off; assert the same observations.
    Returns how many publishes took the shortcut (a result other than None)."""
    taken = []
    real = _amqp.begin_unrecorded

    def counted(*args: Any) -> Any:
        result = real(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(_amqp, "begin_unrecorded", counted)
    monkeypatch.setitem(sa.CLIENTS, client, (send, []))
    cases = list(itertools.product(headers_list, range(len(sa.contexts())), behaviours))
    for n, (headers, which, behaviour) in enumerate(cases):
        random.seed(n)
        state = random.getstate()
        monkeypatch.setattr(_amqp, "_unrecorded_fast", True)
        got = sa.one_send(client, headers, sa.contexts()[which], behaviour, state)
        monkeypatch.setattr(_amqp, "_unrecorded_fast", False)
        want = sa.one_send(client, headers, sa.contexts()[which], behaviour, state)
        assert got == want, (headers, sa.contexts()[which], behaviour)
    return sum(taken)


@pytest.mark.parametrize("options", sa.SETTINGS,
                         ids=lambda o: ",".join(map(str, o.items())) or "defaults")
@pytest.mark.parametrize("client", ["kombu", "aio-pika"])
def test_the_shortcut_publishes_what_the_general_path_does(
    spanless: str, client: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(propagation_only=spanless == "propagation_only", **options)
    send, shapes = sa.CLIENTS[client]
    taken = compare(client, send, shapes, monkeypatch)
    # Every publish took it (the shortcut on), whatever its headers: it answers for all.
    assert taken == len(shapes) * len(sa.contexts()) * len(sa.BEHAVIOURS)


def test_kombu_positional_arguments(spanless: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert compare("kombu", kombu_positional, sa.AMQP_HEADERS, monkeypatch) > 0


@pytest.mark.parametrize("client", ["kombu", "aio-pika"])
def test_nested_publishes_go_out_unchanged(
    spanless: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert compare(client, nested(client), sa.AMQP_HEADERS, monkeypatch) > 0
    # What the comparison compared: the inner publishes got exactly what they were given.
    state = random.getstate()
    got = sa.one_send(client, {"k": "v"}, {}, "return", state)
    (outer, _), (first, _), (second, _), _ = got["seen"]
    assert outer is not None and "baggage" in outer
    assert first == (None if client == "kombu" else {}) and second == outer


@pytest.mark.parametrize("client", ["kombu", "aio-pika"])
def test_other_routing_keys_and_message_ids(
    spanless: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, message_id in itertools.product(KEYS, IDS):
        compare(client, keyed(client, key, message_id), [None, {"k": "v"}], monkeypatch,
                ("return", "leak and raise"))


@pytest.mark.parametrize("client", ["kombu", "aio-pika"])
def test_with_spans_the_general_path_runs(
    spans: Any, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span to make: no shortcut, the guard down again, the span made once."""
    taken: list[Any] = []
    real = _amqp.begin_unrecorded

    def recorded(*args: Any) -> Any:
        taken.append(real(*args))
        return taken[-1]

    monkeypatch.setattr(_amqp, "begin_unrecorded", recorded)
    send = nested(client)
    seen: list[Any] = []
    token = attach(Context())
    try:
        send(None, "return", seen)
        assert get_current() == Context()
    finally:
        detach(token)
    # The outer publish: no shortcut. The nested ones: untraced (the guard is up), as
    # _begin answers them.
    assert taken == [None, _amqp._UNTRACED, _amqp._UNTRACED]
    (outer, _), (first, _), (second, _), _ = seen
    assert "traceparent" in outer and second == outer
    assert first == (None if client == "kombu" else {})
    finished = spans.all()
    assert len(finished) == 1 and finished[0].kind == trace.SpanKind.PRODUCER
    assert not _amqp._publishing.get()
