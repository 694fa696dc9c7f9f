"""aio-pika's publish and consume wrappers against the general steps they shortcut.

``Exchange.publish`` reads the message's headers and ID without ``getattr`` calls, copies a
plain ``Message`` field by field (``_with_headers``) and hands the span path a
``functools.partial`` rather than a closure (whose cells every publish paid for);
``Queue.consume`` callbacks run their scope without a second coroutine (the steps of the
former ``_amqp.run_in_async``, inline). Each test runs the same inputs through the wrapper
and through a reference written the general way (``getattr``, ``copy.copy``, a closure, a
separate coroutine), from the same random state, and compares everything observable: what
the client or the callback got and saw (message fields, arguments, the whole current
context), what came back or was raised, what is current afterwards, the spans, hoptrace's
diagnostic counts and the random draws.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import test_confluent_kafka_unit as unit
import test_send_attach as sa
from opentelemetry.context import Context, attach, detach, get_current

import hoptrace
from hoptrace import _amqp
from hoptrace.core import semconv

aio_pika = pytest.importorskip("aio_pika")
hop_aio_pika = pytest.importorskip("hoptrace.aio_pika")

from test_amqp_fast_paths import constructed, fields_of, mutated  # noqa: E402

spanless = unit.headers_only_mode
UTC = datetime.timezone.utc


class Failure(Exception):
    pass


# ------------------------------------------------------------------------ references ---


def reference_publish(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The publish wrapper written the general way: getattr reads, copy.copy, a closure."""
    def with_headers(message: Any, headers: Any) -> Any:
        outgoing = copy.copy(message)
        outgoing.headers = headers
        return outgoing

    async def publish(self: Any, message: Any, routing_key: str, *args: Any,
                      **kwargs: Any) -> Any:
        headers = getattr(message, "headers", None)
        begun = _amqp.begin_unrecorded(
            headers, routing_key, getattr(message, "message_id", None), "aio_pika.publish")
        if begun is not None:
            carrier, attached, guard = begun
            try:
                result = await original(
                    self, message if carrier is None else with_headers(message, carrier),
                    routing_key, *args, **kwargs)
            except BaseException as exc:
                _amqp._finish(attached, guard, exc)
                raise
            _amqp._finish(attached, guard)
            return result

        def send(carrier: Any) -> Awaitable[Any]:
            outgoing = message if carrier is None else with_headers(message, carrier)
            return original(self, outgoing, routing_key, *args, **kwargs)

        return await _amqp.publish_async(
            send, headers, semconv.SYSTEM_RABBITMQ,
            exchange=hop_aio_pika._exchange_name(self),
            routing_key=routing_key, message_id=getattr(message, "message_id", None),
            correlation_id=getattr(message, "correlation_id", None), label="aio_pika.publish",
        )

    return publish


async def run_in_async(scope: Any, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """The consume scope around a coroutine callback, as a coroutine of its own."""
    if scope is None:
        return await call(*args)
    try:
        result = await call(*args)
    except BaseException as exc:
        scope.close(exc)
        raise
    scope.close()
    return result


def reference_callback(queue: Any, callback: Any) -> Any:
    async def on_message(message: Any) -> Any:
        return await run_in_async(hop_aio_pika._open(queue, message), callback, message)

    return on_message


# ----------------------------------------------------------------------- observation ---


def shown(message: Any) -> Any:
    """What the client got as the message: its fields (a Message), else its type and
    attributes."""
    if isinstance(message, aio_pika.Message):
        fields = fields_of(message)
        kind, headers = fields["headers"]
        fields["headers"] = (kind, sa.untimed(headers))  # (the send time: read from the clock)
        return fields
    return (type(message), {key: sa.untimed(value) if key == "headers" else value
                            for key, value in vars(message).items()})


def untimed(attributes: Any) -> dict[str, Any]:
    """A span's attributes, the queue wait (read from the clock) as a placeholder."""
    return {key: "<wait>" if key == "hoptrace.queue_wait_ms" else value
            for key, value in (attributes or {}).items()}


def finished(recorded: Any) -> list[Any]:
    """The spans ended so far (none without an SDK), with everything they carry."""
    if recorded is None:
        return []
    return [(s.name, s.kind, s.context, s.parent, untimed(s.attributes),
             [(link.context, dict(link.attributes or {})) for link in s.links],
             s.status.status_code, [(e.name, {k: v for k, v in (e.attributes or {}).items()
                                              if k != "exception.stacktrace"})  # (the code)
                                    for e in s.events])
            for s in recorded.all()]


def behave(behaviour: str) -> Any:
    """What the client stand-in or the callback does after observing."""
    if behaviour == "leak":
        attach(Context({"leaked": True}))
    if behaviour == "raise":
        raise Failure("refused")
    if behaviour == "cancel":
        raise asyncio.CancelledError("cancelled")
    return ("result", behaviour)


def run(coro: Any, ambient: dict[Any, Any], state: Any, recorded: Any,
        seen: list[Any]) -> dict[str, Any]:
    """Run ``coro`` (it never suspends) in ``ambient`` from random ``state``; everything
    observable."""
    hoptrace.reset_diagnostics()
    _amqp.memory.forget_all()  # (each run delivers for the first time)
    if recorded is not None:
        recorded.clear()
    random.setstate(state)
    token = attach(Context(ambient))
    try:
        try:
            outcome: Any = ("returned", sa.drive(coro))
        except BaseException as exc:  # (CancelledError too: compared)
            outcome = ("raised", type(exc), str(exc))
        after = sa.snapshot(get_current())
    finally:
        detach(token)
    return {"seen": seen, "outcome": outcome, "after": after, "spans": finished(recorded),
            "diagnostics": hoptrace.diagnostics(), "draws": random.getstate()}


# ----------------------------------------------------------------------------- publish ---


class Bare:
    """A message of another class: no ``headers``, no ``message_id`` (copy.copy copies it)."""

    body = b"x"


class Properties:
    """Headers and ID behind properties that raise ``AttributeError`` or another error."""

    def __init__(self, error: type[Exception], which: str) -> None:
        self.error, self.which = error, which

    @property
    def headers(self) -> Any:
        if self.which in ("headers", "both"):
            raise self.error("headers")
        return {"k": "v"}

    @property
    def message_id(self) -> Any:
        if self.which in ("message_id", "both"):
            raise self.error("message_id")
        return "m-1"

    correlation_id = "c-1"


def messages(seed: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = [aio_pika.Message(b'{"order": 42}'),
                      aio_pika.Message(b"x", message_id="m-1", correlation_id="c-1",
                                       timestamp=datetime.datetime(2026, 1, 1, tzinfo=UTC))]
    out += [constructed(rng) for _ in range(3)] + [mutated(rng) for _ in range(3)]
    for headers in sa.AMQP_HEADERS:
        message = aio_pika.Message(b"h", message_id="m-2")
        message.headers = sa.fresh(headers)
        out.append(message)
    out.append(Bare())
    out += [Properties(error, which) for error in (AttributeError, ValueError)
            for which in ("headers", "message_id", "both")]
    return out


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}), ((), {"mandatory": True, "timeout": 3}), ((5,), {"immediate": False}),
]
KEYS: list[Any] = ["k", "", None, 7]
EXCHANGE = sa.AioExchange()


def one_publish(wrap: Callable[..., Any], message: Any, key: Any, call: Any, behaviour: str,
                ambient: dict[Any, Any], state: Any, recorded: Any) -> dict[str, Any]:
    seen: list[Any] = []
    args, kwargs = call

    async def original(exchange: Any, sent: Any, routing_key: Any, *got: Any,
                       **named: Any) -> Any:
        seen.append((exchange, shown(sent), sent is message, routing_key, got, named,
                     sa.observed()))
        return behave(behaviour)

    before = shown(message)
    result = run(wrap(original)(EXCHANGE, message, key, *args, **kwargs), ambient,
                 state, recorded, seen)
    assert shown(message) == before  # the caller's message is never changed
    return result


def compare_publishes(seed: int, recorded: Any) -> int:
    """Publish each input with the wrapper and with the reference; assert the same."""
    compared = 0
    rng = random.Random(seed)
    behaviours = ("return", "raise", "cancel", "leak")
    for n, message in enumerate(messages(seed)):
        key, call, behaviour = rng.choice(KEYS), rng.choice(CALLS), rng.choice(behaviours)
        ambient = rng.choice(sa.contexts())
        random.seed(seed * 1000 + n)
        state = random.getstate()
        got = one_publish(hop_aio_pika._wrap_publish, message, key, call, behaviour, ambient,
                          state, recorded)
        want = one_publish(reference_publish, message, key, call, behaviour, ambient, state,
                           recorded)
        assert got == want, (message, key, call, behaviour, ambient)
        compared += 1
    return compared


@pytest.mark.parametrize("seed", range(12))
def test_publish_without_spans_matches_the_general_steps(spanless: str, seed: int) -> None:
    assert compare_publishes(seed, None) > 20


@pytest.mark.parametrize("seed", range(6))
def test_publish_with_spans_matches_the_general_steps(spans: Any, seed: int) -> None:
    assert compare_publishes(seed, spans) > 20


def test_the_comparison_sees_the_headers_and_the_arguments(spanless: str) -> None:
    """What the comparison compares: the copy the client got carries the context."""
    random.seed(1)
    message = aio_pika.Message(b"x", message_id="m-1")
    got = one_publish(hop_aio_pika._wrap_publish, message, "k", CALLS[1], "return", {},
                      random.getstate(), None)
    (_, fields, same, key, args, kwargs, (trace_id, _, _, tx, _, _)), = got["seen"]
    assert not same and key == "k" and args == () and kwargs == {"mandatory": True,
                                                                   "timeout": 3}
    _, headers = fields["headers"]
    assert tx and tx in headers["baggage"]
    if spanless == "no_sdk":  # (the trace starts here; with an SDK, propagation-only: none)
        assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"


# ----------------------------------------------------------------------------- consume ---


class Delivery:
    """An ``IncomingMessage`` stand-in: the fields hoptrace reads."""

    def __init__(self, headers: Any, message_id: Any, timestamp: Any, redelivered: Any,
                 correlation_id: Any = None) -> None:
        self.headers = headers
        self.exchange = "orders"
        self.routing_key = "k"
        self.message_id = message_id
        self.delivery_tag = 7
        self.correlation_id = correlation_id
        self.timestamp = timestamp
        self.redelivered = redelivered


class Partial:
    """A delivery with only headers (open_from's getattr path)."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers


class Refusing(Delivery):
    """A delivery whose exchange cannot be read (hoptrace fails: no scope, the callback
    still runs)."""

    @property
    def exchange(self) -> Any:
        raise ValueError("no exchange")

    @exchange.setter
    def exchange(self, value: Any) -> None:
        pass


def deliveries(seed: int) -> list[Any]:
    rng = random.Random(seed)
    with hoptrace.transaction():
        wire = hoptrace.inject({})
    headers = [wire, *sa.AMQP_HEADERS]
    stamps = (None, datetime.datetime(2026, 1, 1, tzinfo=UTC), datetime.datetime(2020, 5, 5),
              1_700_000_000, -5, "soon")
    ids = (None, "m-1", "", 42, b"\xff", "a" * 300)
    out: list[Any] = []
    for carried in headers:
        out.append(Delivery(sa.fresh(carried), rng.choice(ids), rng.choice(stamps),
                            rng.choice((False, True, None, 1)), rng.choice((None, "c-1", 5))))
    out += [Partial(sa.fresh(wire)), Partial(None), Refusing(sa.fresh(wire), "m", None, False)]
    return out


def one_delivery(wrap: Callable[..., Any], message: Any, behaviour: str,
                 ambient: dict[Any, Any], state: Any, recorded: Any) -> dict[str, Any]:
    seen: list[Any] = []

    async def callback(got: Any) -> Any:
        seen.append((got is message, sa.observed()))
        return behave(behaviour)

    return run(wrap("q", callback)(message), ambient, state, recorded, seen)


def compare_deliveries(seed: int, recorded: Any) -> int:
    compared = 0
    rng = random.Random(seed)
    for n, (message, behaviour) in enumerate(itertools.product(
            deliveries(seed), ("return", "raise", "cancel", "leak"))):
        ambient = rng.choice(sa.contexts())
        random.seed(seed * 1000 + n)
        state = random.getstate()
        got = one_delivery(hop_aio_pika._wrap_callback, message, behaviour, ambient, state,
                           recorded)
        want = one_delivery(reference_callback, message, behaviour, ambient, state, recorded)
        assert got == want, (vars(message), behaviour, ambient)
        compared += 1
    return compared


@pytest.mark.parametrize("seed", range(4))
def test_consume_without_spans_matches_the_general_steps(spanless: str, seed: int) -> None:
    assert compare_deliveries(seed, None) > 50


@pytest.mark.parametrize("seed", range(3))
def test_consume_with_spans_matches_the_general_steps(spans: Any, seed: int) -> None:
    assert compare_deliveries(seed, spans) > 50


def test_the_comparison_sees_the_callback_s_context_and_its_error(spans: Any) -> None:
    """What the comparison compares: the callback ran in the message's trace, and its error
    ended the process span."""
    with hoptrace.transaction():
        headers = hoptrace.inject({})
    random.seed(2)
    got = one_delivery(hop_aio_pika._wrap_callback, Delivery(headers, "m-1", None, False),
                       "raise", {}, random.getstate(), spans)
    (same, (trace_id, _, _, tx, _, _)), = got["seen"]
    assert same and f"{trace_id:032x}" == headers["traceparent"].split("-")[1]
    assert tx and tx in headers["baggage"]
    assert got["outcome"] == ("raised", Failure, "refused")
    (name, _, _, _, attributes, _, status, events), = got["spans"]
    assert name == "process orders:k:q" and attributes["messaging.message.id"] == "m-1"
    assert status.name == "ERROR" and events[0][0] == "exception"


# --------------------------------------------------------------------- broker timestamp ---


def reference_sent_ns(timestamp: object) -> int | None:
    """``_amqp.broker_sent_ns`` without remembering the last conversion."""
    if type(timestamp) is int and timestamp > 0:
        return timestamp * 1_000_000_000
    if isinstance(timestamp, datetime.datetime):
        try:
            return int(timestamp.timestamp() * 1e9)
        except (OverflowError, OSError, ValueError):
            return None
    return None


class Shifted(datetime.datetime):
    """A datetime subclass with its own ``timestamp()`` (equal to the plain one it copies)."""

    def timestamp(self) -> float:
        return super().timestamp() + 1.0


def stamps(rng: random.Random) -> list[Any]:
    """Timestamps as deliveries carry them: runs of the same second (new objects, and the
    same object), every kind the property may hold, and values equal to a UTC one that
    must not take its conversion."""
    base = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    out: list[Any] = []
    for _ in range(400):
        second = base + datetime.timedelta(seconds=rng.randrange(5),
                                           microseconds=rng.choice((0, 0, 1, 999_999)))
        kind = rng.randrange(12)
        if kind < 5:  # aio-pika's decoder: a new UTC datetime per message
            out.append(datetime.datetime.fromtimestamp(second.timestamp(), tz=UTC))
        elif kind == 5:
            out.append(out[-1] if out else second)  # the same object again
        elif kind == 6:
            out.append(second.astimezone(plus2))  # the same instant, another tzinfo
        elif kind == 7:
            out.append(second.replace(tzinfo=None))  # naive: local time
        elif kind == 8:
            out.append(Shifted(*second.timetuple()[:6], second.microsecond, tzinfo=UTC))
        elif kind == 9:
            out.append(second.replace(fold=1))
        elif kind == 10:
            out.append(rng.choice((datetime.datetime.min.replace(tzinfo=UTC),
                                   datetime.datetime.max.replace(tzinfo=UTC),
                                   datetime.datetime.min, datetime.datetime.max)))
        else:
            out.append(rng.choice((None, 0, -1, 1_700_000_000, True, 1.5, "2026", b"x",
                                   sa.Hostile(), datetime.date(2026, 1, 1))))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_broker_time_is_the_conversion_of_each_timestamp(seed: int) -> None:
    for timestamp in stamps(random.Random(seed)):
        assert _amqp.broker_sent_ns(timestamp) == reference_sent_ns(timestamp), timestamp


def test_broker_time_remembers_the_last_utc_second() -> None:
    """What the comparison covers: a run of the same second converts once."""
    first = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    expected = _amqp.broker_sent_ns(first)
    assert expected is not None and _amqp._last_stamp == (first, expected)
    again = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # a new object, same value
    assert _amqp.broker_sent_ns(again) == expected and _amqp._last_stamp[0] is first
    shifted = Shifted(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # equal, but its own timestamp()
    assert _amqp.broker_sent_ns(shifted) == expected + 1_000_000_000
