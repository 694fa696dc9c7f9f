"""Every core bad-input case over every consumer path, against the real brokers.

Each case of ``tests/unit/test_bad_input.py::CASES`` is published raw (no hoptrace on the
producer side) as one message per path, converted to what the transport can carry, and
consumed with hoptrace. Per (path, case): the handler ran exactly once; a valid trace ID and
transaction ID were current inside it; the trace and the transaction ID are fresh exactly
when the case says so; a rejection of the broken field was counted; nothing escaped.

Celery is covered by ``test_celery_worker.py`` and is not repeated here. The aio-pika
iterator over a ``connect_robust()`` connection (a subclass with its own ``__anext__``) runs
as a test of its own.
Cases a transport cannot carry are shown as ``n-a`` with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brokers
import pytest

import hoptrace

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location(
    "hoptrace_unit_bad_input_cases",
    Path(__file__).resolve().parents[1] / "unit" / "test_bad_input.py")
assert _spec is not None and _spec.loader is not None
_cases_module = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_cases_module)
CASES: list[Any] = list(_cases_module.CASES)
TRACE: str = _cases_module.TRACE
TX: str = _cases_module.TX

HEX32 = re.compile(r"[0-9a-f]{32}")
TX_SHAPE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
TIMEOUT_S = 15.0


class NotRepresentable(Exception):
    """The case cannot be expressed on this transport; the message says why."""


def kafka_headers(carrier: Any) -> list[tuple[str, bytes | None]]:
    """The case as Kafka headers: bytes values only (str as UTF-8, None kept)."""
    pairs = carrier.items() if isinstance(carrier, dict) else carrier
    out: list[tuple[str, bytes | None]] = []
    for key, value in pairs:
        if isinstance(value, str):
            out.append((key, value.encode()))
        elif value is None or isinstance(value, bytes):
            out.append((key, value))
        else:
            raise NotRepresentable(
                f"Kafka header values are bytes: {type(value).__name__} values not representable")
    return out


def amqp_headers(carrier: Any, *, json_only: bool = False) -> dict[str, Any]:
    """The case as an AMQP header table (str/bytes/int/None/list/nested table)."""
    if not isinstance(carrier, dict):
        raise NotRepresentable("duplicate keys cannot be expressed in an AMQP header table")
    if json_only and any(isinstance(v, bytes) for v in carrier.values()):
        raise NotRepresentable("kombu's redis transport stores headers as JSON: no bytes")
    return dict(carrier)


@dataclass
class Seen:
    """What one handler call observed."""

    trace_id: str | None
    tx: str | None
    counted: dict[str, int]


@dataclass
class PathRun:
    """The outcome of one consumer path over the case list."""

    seen: dict[int, list[Seen]] = field(default_factory=dict)
    not_representable: dict[int, str] = field(default_factory=dict)
    error: BaseException | None = None
    context_left: bool = False


class Observer:
    """Records, per message, the current IDs and the rejections counted since the last one."""

    def __init__(self, run: PathRun) -> None:
        self.run = run
        self.before = self._counters()
        self.calls = 0

    @staticmethod
    def _counters() -> dict[str, int]:
        return hoptrace.diagnostics()

    def __call__(self, marker: bytes | str | int) -> None:
        now = self._counters()
        delta = {k: v - self.before.get(k, 0) for k, v in now.items() if v != self.before.get(k, 0)}
        self.before = now
        self.calls += 1
        self.run.seen.setdefault(int(marker), []).append(
            Seen(hoptrace.current_trace_id(), hoptrace.current_transaction_id(), delta))


def check(case: Any, seen: list[Seen]) -> str | None:
    """None when the path handled the case correctly, else what went wrong."""
    if len(seen) != 1:
        return f"handler ran {len(seen)} times"
    one = seen[0]
    if one.trace_id is None or not HEX32.fullmatch(one.trace_id) or one.trace_id == "0" * 32:
        return f"bad trace id {one.trace_id!r}"
    if one.tx is None or not TX_SHAPE.fullmatch(one.tx):
        return f"bad transaction id {one.tx!r}"
    if (one.trace_id != TRACE) is not case.fresh_trace:
        return f"fresh trace expected={case.fresh_trace} got trace {one.trace_id}"
    if (one.tx != TX) is not case.fresh_tx:
        return f"fresh transaction expected={case.fresh_tx} got {one.tx!r}"
    if one.counted.get(f"rejected.{case.reason}", 0) < 1:
        return f"rejected.{case.reason} not counted (counted: {one.counted})"
    internal = [k for k in one.counted if k.startswith("internal_error.")]
    if internal:
        return f"hoptrace internal error: {internal}"
    return None


# --- Kafka -------------------------------------------------------------------------------


def publish_kafka(bootstrap: str, topic: str, run_template: PathRun) -> int:
    """Publish every representable case once (key = case index); return how many."""
    from aiokafka import AIOKafkaProducer

    async def produce() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        sent = 0
        try:
            for index, case in enumerate(CASES):
                try:
                    headers = kafka_headers(case.carrier)
                except NotRepresentable as why:
                    run_template.not_representable[index] = str(why)
                    continue
                await producer.send_and_wait(topic, b"x", key=str(index).encode(),
                                             headers=headers, partition=0)
                sent += 1
        finally:
            await producer.stop()
        return sent

    return asyncio.run(produce())


def kafka_aiokafka(bootstrap: str, topic: str, total: int, observe: Observer,
                   use_getone: bool) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    import hoptrace.aiokafka as hk

    async def consume() -> None:
        consumer = hk.TracedConsumer(AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False))
        consumer.assign([TopicPartition(topic, 0)])
        async with consumer:
            if use_getone:
                while observe.calls < total:
                    msg = await consumer.getone()  # awaited in this task: its scope is current here
                    observe(msg.key.decode())
            else:
                async for msg in consumer:
                    observe(msg.key.decode())
                    if observe.calls == total:
                        break

    asyncio.run(asyncio.wait_for(consume(), TIMEOUT_S * 2))


def kafka_confluent(bootstrap: str, topic: str, total: int, observe: Observer) -> None:
    import confluent_kafka

    import hoptrace.confluent_kafka as hc

    consumer = hc.Consumer({"bootstrap.servers": bootstrap,
                            "group.id": f"hoptrace-matrix-{uuid.uuid4().hex[:8]}",
                            "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    try:
        for _ in range(int(TIMEOUT_S / 0.25) + total):
            msg = consumer.poll(0.25)
            if msg is None or msg.error() is not None:
                continue
            observe(msg.key().decode())
            if observe.calls == total:
                break
    finally:
        consumer.close()


def kafka_python_iterator(bootstrap: str, topic: str, total: int, observe: Observer) -> None:
    import kafka

    import hoptrace.kafka_python as hkp

    consumer = hkp.TracedConsumer(kafka.KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=int(TIMEOUT_S * 1000)))
    consumer.assign([kafka.TopicPartition(topic, 0)])
    try:
        for msg in consumer:
            observe(msg.key.decode())
            if observe.calls == total:
                break
    finally:
        consumer.close()


# --- AMQP --------------------------------------------------------------------------------


def publish_pika(amqp_url: str, run: PathRun) -> tuple[str, int]:
    """Declare a fresh queue and publish every representable case raw with pika."""
    import pika

    queue = f"hoptrace-matrix-{uuid.uuid4().hex[:10]}"
    sent = 0
    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, arguments={"x-expires": 60_000})
        for index, case in enumerate(CASES):
            try:
                headers = amqp_headers(case.carrier)
            except NotRepresentable as why:
                run.not_representable[index] = str(why)
                continue
            channel.basic_publish("", queue, str(index).encode(),
                                  pika.BasicProperties(headers=headers))
            sent += 1
    return queue, sent


def delete_pika_queue(amqp_url: str, queue: str) -> None:
    import pika

    with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
        conn.channel().queue_delete(queue)


def pika_path(amqp_url: str, queue: str, total: int, observe: Observer, how: str) -> None:
    import pika

    import hoptrace.pika

    hoptrace.pika.instrument()
    try:
        with pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url))) as conn:
            channel = conn.channel()
            if how == "basic_consume":
                def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
                    observe(body)
                    ch.basic_ack(method.delivery_tag)

                channel.basic_consume(queue, on_message)
                deadline = TIMEOUT_S / 0.1
                while observe.calls < total and deadline > 0:
                    conn.process_data_events(time_limit=0.1)
                    deadline -= 1
            elif how == "consume":
                for method, _props, body in channel.consume(queue, inactivity_timeout=TIMEOUT_S):
                    if method is None:
                        break
                    observe(body)
                    channel.basic_ack(method.delivery_tag)
                    if observe.calls == total:
                        break
                channel.cancel()
            else:
                misses = 0
                while observe.calls < total and misses < TIMEOUT_S / 0.05:
                    method, _props, body = channel.basic_get(queue)
                    if method is None:
                        misses += 1
                        conn.sleep(0.05)
                        continue
                    observe(body)
                    channel.basic_ack(method.delivery_tag)
    finally:
        hoptrace.pika.uninstrument()


def aio_pika_path(amqp_url: str, queue_name: str, total: int, observe: Observer,
                  how: str, robust: bool) -> None:
    import aio_pika

    import hoptrace.aio_pika

    async def consume() -> None:
        connect = aio_pika.connect_robust if robust else aio_pika.connect
        connection = await connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(queue_name, ensure=True)
            if how == "iterator":
                async with queue.iterator() as messages:
                    async for incoming in messages:
                        observe(incoming.body)
                        await incoming.ack()
                        if observe.calls == total:
                            break
            else:
                done = asyncio.Event()

                async def on_message(incoming: Any) -> None:
                    observe(incoming.body)
                    await incoming.ack()
                    if observe.calls == total:
                        done.set()

                tag = await queue.consume(on_message)
                await asyncio.wait_for(done.wait(), TIMEOUT_S)
                await queue.cancel(tag)

    hoptrace.aio_pika.instrument()
    try:
        asyncio.run(asyncio.wait_for(consume(), TIMEOUT_S * 2))
    finally:
        hoptrace.aio_pika.uninstrument()


def kombu_path(url: str, total_run: PathRun, observe_factory: Callable[[], Observer]) -> None:
    import kombu

    import hoptrace.kombu

    name = f"hoptrace-matrix-{uuid.uuid4().hex[:10]}"
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct", auto_delete=True),
                        routing_key="matrix", auto_delete=True)
    json_only = url.startswith("redis")
    with kombu.Connection(url) as conn:
        sent = 0
        producer = conn.Producer()
        for index, case in enumerate(CASES):
            try:
                headers = amqp_headers(case.carrier, json_only=json_only)
            except NotRepresentable as why:
                total_run.not_representable[index] = str(why)
                continue
            producer.publish({"n": index}, exchange=queue.exchange, routing_key="matrix",
                             declare=[queue], headers=headers)
            sent += 1
        observe = observe_factory()
        hoptrace.kombu.instrument()
        try:
            def on_message(body: Any, message: Any) -> None:
                observe(body["n"])
                message.ack()

            with conn.Consumer(queue, callbacks=[on_message]):
                while observe.calls < sent:
                    conn.drain_events(timeout=TIMEOUT_S)
        finally:
            hoptrace.kombu.uninstrument()
            try:
                queue(conn.channel()).delete()
            except Exception:
                pass


# --- the matrix --------------------------------------------------------------------------


def run_path(run: PathRun, body: Callable[[Observer], None]) -> None:
    """Run one consumer path, recording an escaped exception instead of raising it."""
    try:
        body(Observer(run))
    except Exception as exc:  # the matrix reports it as FAIL for every case
        run.error = exc
    run.context_left = hoptrace.current_transaction_id() is not None


def test_bad_input_matrix(amqp_url: str, redis_url: str, kafka_bootstrap: str, spans: Any,
                          request: pytest.FixtureRequest) -> None:
    runs: dict[str, PathRun] = {}

    topic = f"hoptrace-matrix-{uuid.uuid4().hex[:10]}"
    kafka_template = PathRun()
    kafka_total = publish_kafka(kafka_bootstrap, topic, kafka_template)
    try:
        for name, path in [
            ("aiokafka async-for", lambda o: kafka_aiokafka(kafka_bootstrap, topic, kafka_total,
                                                            o, use_getone=False)),
            ("aiokafka getone", lambda o: kafka_aiokafka(kafka_bootstrap, topic, kafka_total,
                                                         o, use_getone=True)),
            ("confluent poll", lambda o: kafka_confluent(kafka_bootstrap, topic, kafka_total, o)),
            ("kafka-python iter", lambda o: kafka_python_iterator(kafka_bootstrap, topic,
                                                                  kafka_total, o)),
        ]:
            runs[name] = PathRun(not_representable=dict(kafka_template.not_representable))
            run_path(runs[name], path)
    finally:
        delete_kafka_topic(kafka_bootstrap, topic)

    for name, how in [("pika basic_consume", "basic_consume"), ("pika consume()", "consume"),
                      ("pika basic_get", "basic_get")]:
        runs[name] = PathRun()
        queue, total = publish_pika(amqp_url, runs[name])
        try:
            run_path(runs[name], functools.partial(pika_path, amqp_url, queue, total, how=how))
        finally:
            delete_pika_queue(amqp_url, queue)

    for name, url in [("kombu amqp", amqp_url), ("kombu redis", redis_url)]:
        runs[name] = PathRun()
        run = runs[name]
        try:
            kombu_path(url, run, functools.partial(Observer, run))
        except Exception as exc:
            run.error = exc
        run.context_left = hoptrace.current_transaction_id() is not None

    for name, how, robust in [("aio-pika callback", "callback", True),
                              ("aio-pika iterator", "iterator", False)]:
        run_aio_pika(runs, name, amqp_url, how, robust)

    failures, lines = report(runs)
    write_lines(request, lines)
    assert not failures, "\n".join(failures)
    assert hoptrace.current_transaction_id() is None


def run_aio_pika(runs: dict[str, PathRun], name: str, amqp_url: str, how: str,
                 robust: bool) -> None:
    """Publish the cases to a fresh queue and consume them on one aio-pika path."""
    runs[name] = PathRun()
    queue, total = publish_pika(amqp_url, runs[name])
    try:
        run_path(runs[name], lambda o: aio_pika_path(amqp_url, queue, total, o, how, robust))
    finally:
        delete_pika_queue(amqp_url, queue)


def test_bad_input_aio_pika_robust_iterator(amqp_url: str, spans: Any,
                                            request: pytest.FixtureRequest) -> None:
    runs: dict[str, PathRun] = {}
    run_aio_pika(runs, "aio-pika robust iterator", amqp_url, "iterator", True)
    failures, lines = report(runs)
    write_lines(request, [line for line in lines if line.startswith("bad-input matrix")])
    assert not failures, "\n".join(failures)


def write_lines(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Write lines to the terminal whether or not output is captured."""
    writer = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if writer is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        for line in lines:
            writer.write_line(line)


def report(runs: dict[str, PathRun]) -> tuple[list[str], list[str]]:
    """Check every cell; return (failures, printable matrix lines)."""
    paths = list(runs)
    width = max(len(c.name) for c in CASES)
    header = "case".ljust(width) + " | " + " | ".join(paths)
    lines = ["", "hoptrace bad-input matrix (celery: covered by test_celery_worker.py)", header,
             "-" * len(header)]
    failures: list[str] = []
    notes: dict[str, str] = {}
    passed = checks = na = 0
    for index, case in enumerate(CASES):
        cells = []
        for path in paths:
            run = runs[path]
            if index in run.not_representable:
                na += 1
                notes.setdefault(f"{path}: {run.not_representable[index]}", "")
                cell = "n-a"
            else:
                checks += 1
                problem = (f"exception escaped: {run.error!r}" if run.error is not None
                           else check(case, run.seen.get(index, [])))
                if problem is None:
                    passed += 1
                    cell = "ok"
                else:
                    failures.append(f"{path} / {case.name}: {problem}")
                    cell = "FAIL"
            cells.append(cell.center(len(path)))
        lines.append(case.name.ljust(width) + " | " + " | ".join(cells))
    for path, run in runs.items():
        fresh = [seen[0].trace_id for index, seen in run.seen.items()
                 if CASES[index].fresh_trace and len(seen) == 1]
        if len(set(fresh)) != len(fresh):
            failures.append(f"{path}: fresh-trace cases share a trace ID: {fresh}")
        unknown = set(run.seen) - set(range(len(CASES)))
        if unknown:
            failures.append(f"{path}: messages matching no case: {sorted(unknown)}")
        if run.context_left:
            failures.append(f"{path}: a consume scope stayed attached after the run")
    lines.append(f"bad-input matrix: {len(CASES)} cases x {len(paths)} paths = "
                 f"{len(CASES) * len(paths)} cells: {checks} checks, {passed} passed, "
                 f"{checks - passed} failed, {na} not representable")
    lines.extend(f"  n-a  {note}" for note in notes)
    lines.extend(f"  FAIL {failure}" for failure in failures)
    return failures, lines


def delete_kafka_topic(bootstrap: str, topic: str) -> None:
    """Delete the matrix topic (best effort)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        except Exception:
            pass
        finally:
            await admin.close()

    asyncio.run(delete())
