"""Instruction counts of hoptrace's per-message paths on the AMQP clients and Celery.

The method of ``bench/callgrind_cases.py``: the client's network calls are replaced by no-op
stand-ins, so only hoptrace's own work is counted; each case runs one function N times
through ``starmap``, and callgrind counts only inside ``starmap_next``.

    python bench/callgrind_amqp.py                      # every case under callgrind, a table
    python bench/callgrind_amqp.py prop_pika_publish    # some cases
    python bench/callgrind_amqp.py --run CASE 2000      # one case, N calls (what valgrind runs)

A case is ``{mode}_{client}_{path}``: mode ``plain`` (the client uninstrumented, the same
stand-ins) or ``prop`` (hoptrace propagation-only); one message published, or one delivered
and handled, per call. The consumed messages carry what hoptrace's own publish wrote
(``traceparent``, ``baggage``, ``x-hoptrace-sent-ns``), as each client decodes it.

* pika: ``publish`` (``Channel.basic_publish``), ``consume`` (a ``basic_consume`` callback),
  ``get`` (``BlockingChannel.basic_get``: the previous message's scope released, the next
  one's held);
* kombu: ``publish`` (``Producer.publish``), ``consume`` (``Consumer._receive_callback``);
* aiopika: ``publish`` (``Exchange.publish``), ``consume`` (a ``Queue.consume`` callback),
  coroutines driven by ``send(None)``, with no event loop;
* celery: ``publish`` (``amqp.send_task_message``), ``run`` (``task_prerun`` and
  ``task_postrun`` sent the way Celery's task tracer sends them: ``celery.app.trace``'s
  ``send_prerun`` / ``send_postrun``, which hoptrace may replace by a direct call).
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_cases  # the shared runner

CLIENT_CASES = (
    "pika_publish", "pika_consume", "pika_get", "kombu_publish", "kombu_consume",
    "aiopika_publish", "aiopika_consume", "celery_publish", "celery_run",
)
CASES = tuple(f"{mode}_{case}" for case in CLIENT_CASES for mode in ("plain", "prop"))
PAYLOAD = b'{"order": 42}'
QUEUE = "bench-queue-0123456789abc"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


async def _anoop(*args: Any, **kwargs: Any) -> None:
    return None


_drive = callgrind_cases.run_coroutine


def _wire_headers() -> dict[str, Any]:
    """The headers hoptrace's propagation-only publish writes, as a consumer decodes them."""
    import hoptrace

    headers = hoptrace.inject({})
    from pika import data  # type: ignore[import-untyped]

    pieces: list[bytes] = []
    data.encode_table(pieces, headers)
    decoded, _ = data.decode_table(b"".join(pieces), 0)
    return dict(decoded)


def _install(mode: str) -> None:
    import hoptrace

    if mode == "prop":
        hoptrace.configure(propagation_only=True)


# ------------------------------------------------------------------------------- pika ---


class _PikaChannel:
    """A channel stand-in: something to own a held scope."""


def _pika(mode: str, path: str, headers: dict[str, Any]) -> Callable[[], object]:
    import pika
    from pika.spec import Basic  # type: ignore[import-untyped]

    import hoptrace.pika as hp

    channel = _PikaChannel()
    if path == "publish":
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=1)
        if mode == "plain":
            return lambda: _noop(channel, "", QUEUE, PAYLOAD, properties, False)
        publish = hp._wrap_basic_publish(_noop)
        return lambda: publish(channel, "", QUEUE, PAYLOAD, properties)
    method = Basic.Deliver(consumer_tag="ctag1.0", delivery_tag=7, redelivered=False,
                           exchange="", routing_key=QUEUE)
    props = pika.BasicProperties(content_type="application/json", delivery_mode=1,
                                 headers=headers)
    if path == "consume":
        def on_message(ch: Any, method: Any, props: Any, body: Any) -> None:
            return None

        callback = on_message if mode == "plain" else hp._wrap_callback(QUEUE, on_message)
        return lambda: callback(channel, method, props, PAYLOAD)
    got = (Basic.GetOk(delivery_tag=7, redelivered=False, exchange="", routing_key=QUEUE,
                       message_count=0), props, PAYLOAD)

    def basic_get(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        return got

    get = basic_get if mode == "plain" else hp._wrap_blocking_basic_get(basic_get)
    return lambda: get(channel, QUEUE, True)


# ------------------------------------------------------------------------------ kombu ---


class _Client:
    class transport:
        driver_type = "amqp"


class _Connection:
    client = _Client()


class _KombuChannel:
    connection = _Connection()


class _KombuQueue:
    name = QUEUE


class _KombuProducer:
    channel = _KombuChannel()
    exchange = None
    routing_key = None


class _KombuConsumer:
    channel = _KombuChannel()
    _active_tags = {QUEUE: "None1"}
    queues = [_KombuQueue()]


class _KombuMessage:
    """A ``kombu.transport.pyamqp.Message`` stand-in: the attributes the callback reads."""

    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers
        self.delivery_info = {"consumer_tag": "None1", "delivery_tag": 7, "redelivered": False,
                              "exchange": "bench", "routing_key": "k"}
        self.properties = {"content_type": "application/json", "content_encoding": "utf-8",
                           "application_headers": headers, "delivery_mode": 2, "priority": 0}


def _kombu(mode: str, path: str, headers: dict[str, Any]) -> Callable[[], object]:
    from kombu.entity import Exchange

    import hoptrace.kombu as hk

    if path == "publish":
        producer = _KombuProducer()
        exchange = Exchange("bench", type="direct")  # type: ignore[no-untyped-call]
        publish = _noop if mode == "plain" else hk._wrap_publish(_noop)
        return lambda: publish(producer, {"order": 42}, exchange=exchange, routing_key="k",
                               headers=None)
    consumer = _KombuConsumer()
    message = _KombuMessage(headers)
    receive = _noop if mode == "plain" else hk._wrap_receive(_noop)
    return lambda: receive(consumer, message)


# --------------------------------------------------------------------------- aio-pika ---


class _AioExchange:
    name = ""


class _AioIncoming:
    """An ``aio_pika.IncomingMessage`` stand-in: the attributes hoptrace reads."""

    def __init__(self, headers: dict[str, Any], message_id: str, timestamp: Any) -> None:
        self.headers = headers
        self.exchange = ""
        self.routing_key = QUEUE
        self.message_id = message_id
        self.delivery_tag = 7
        self.correlation_id = None
        self.timestamp = timestamp
        self.redelivered = False


def _aio_pika(mode: str, path: str, headers: dict[str, Any]) -> Callable[[], object]:
    import aio_pika

    import hoptrace.aio_pika as ha

    if path == "publish":
        exchange = _AioExchange()
        message = aio_pika.Message(PAYLOAD)
        publish = _anoop if mode == "plain" else ha._wrap_publish(_anoop)
        return lambda: _drive(publish(exchange, message, QUEUE))
    sent = aio_pika.Message(PAYLOAD, message_id="5f0c2e4b6a0d4e2f9b1c3d5e7f9a1b2c",
                            timestamp=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    incoming = _AioIncoming(headers, str(sent.message_id), sent.timestamp)

    async def on_message(message: Any) -> None:
        return None

    callback = on_message if mode == "plain" else ha._wrap_callback(QUEUE, on_message)
    return lambda: _drive(callback(incoming))


# ----------------------------------------------------------------------------- celery ---


def _celery(mode: str, path: str, headers: dict[str, Any]) -> Callable[[], object]:
    from celery import Celery  # type: ignore[import-untyped]
    from celery.app import trace  # type: ignore[import-untyped]

    import hoptrace.celery as hc

    app = Celery("bench", broker="memory://", set_as_current=False)

    @app.task(name="bench.order")  # type: ignore[untyped-decorator]
    def order(n: int) -> None:
        return None

    if mode != "plain":
        hc.instrument(app)
    if path == "publish":
        # A protocol-2 message as Celery builds it for every apply_async.
        template = app.amqp.as_task_v2("8d1c0c59-6a4e-4f7e-9c7a-2b1f0c3d4e5f", "bench.order",
                                       args=(1,), kwargs={})
        send = _noop if mode == "plain" else hc._wrap_sender(_noop)
        producer = object()

        def publish() -> None:
            headers, properties, body, sent_event = template
            send(producer, "bench.order", (dict(headers), properties, body, sent_event),
                 exchange="", routing_key="celery")

        return publish
    from celery.app.task import Context  # type: ignore[import-untyped]

    task_id = "8d1c0c59-6a4e-4f7e-9c7a-2b1f0c3d4e5f"
    request = Context({
        "lang": "py", "task": "bench.order", "id": task_id, "root_id": task_id,
        "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
        **headers,
        "delivery_info": {"exchange": "", "routing_key": "celery", "redelivered": False,
                          "priority": 0},
        "args": (1,), "kwargs": {}, "is_eager": False, "hostname": "bench@local",
    })

    class _Task:
        name = "bench.order"

    task = _Task()
    task.request = request  # type: ignore[attr-defined]
    # What Celery's task tracer calls: the signals' own send, or hoptrace's direct call.
    prerun, postrun = trace.send_prerun, trace.send_postrun

    def run() -> None:
        prerun(sender=task, task_id=task_id, task=task, args=(1,), kwargs={})
        postrun(sender=task, task_id=task_id, task=task, args=(1,), kwargs={}, retval=None,
                state="SUCCESS")

    return run


# ------------------------------------------------------------------------------- main ---

_CLIENTS = {"pika": _pika, "kombu": _kombu, "aiopika": _aio_pika, "celery": _celery}


def build(case: str) -> Callable[[], object]:
    """The function one call of ``case`` runs."""
    mode, client, path = case.split("_", 2)
    headers = _wire_headers()  # before configure: what a traced producer sends
    _install(mode)
    return _CLIENTS[client](mode, path, headers)


if __name__ == "__main__":
    raise SystemExit(callgrind_cases.cli(sys.argv[1:], __file__, CASES, build))
