"""Celery with a real prefork worker in a separate process: RabbitMQ broker, Redis results.

The test process is the producer (spans in memory, through the ``spans`` fixture); the worker
writes its spans and log records to JSON-lines files that the tests read back. Every test
asserts trace IDs, parent span IDs, links and transaction IDs, across the process boundary.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery, chain, chord, group
from celery.beat import ScheduleEntry, Scheduler
from celery_apps.harness import Worker, running_worker
from celery_apps.traced_app import build_app, span_record

import hoptrace
import hoptrace.celery

pytestmark = pytest.mark.integration


@dataclass
class Env:
    producer: Celery
    worker: Worker
    broker: str
    backend: str

    def task(self, name: str) -> Any:
        return self.producer.tasks[f"traced.{name}"]


@pytest.fixture(scope="module")
def env(amqp_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    queue = f"hoptrace-celery-{uuid.uuid4().hex[:10]}"
    producer = build_app(amqp_url, redis_url, queue, name="producer")
    out = tmp_path_factory.mktemp("celery-worker")
    hoptrace.celery.instrument(producer)
    try:
        with running_worker(amqp_url, redis_url, out, producer, queue=queue) as worker:
            yield Env(producer, worker, amqp_url, redis_url)
    finally:
        hoptrace.celery.uninstrument()


def all_spans(spans: Any, env: Env) -> list[dict[str, Any]]:
    """Producer spans (this process) and worker spans, in one list of records."""
    return [span_record(s) for s in spans.all()] + env.worker.records.spans()


def send_span(records: list[dict[str, Any]], task_id: str) -> dict[str, Any]:
    found = [
        r for r in records
        if r["kind"] == "PRODUCER" and r["attributes"].get("messaging.message.id") == task_id
    ]
    assert len(found) == 1, f"expected one send span for {task_id}, got {found}"
    return found[0]


def assert_hop(records: list[dict[str, Any]], process: dict[str, Any], tx: str) -> dict[str, Any]:
    """The process span is a child of the send span of the same task, in one transaction."""
    send = send_span(records, process["attributes"]["messaging.message.id"])
    assert process["parent_id"] == send["span_id"]
    assert process["trace_id"] == send["trace_id"]
    assert process["attributes"]["hoptrace.transaction.id"] == tx
    assert recorded_transaction(records, send) == tx
    return send


def recorded_transaction(records: list[dict[str, Any]], span: dict[str, Any]) -> str | None:
    """The transaction ID on ``span`` or, for a send that leaves it out, on its nearest
    ancestor (the transaction's root, a process span): where a search by the ID finds it."""
    by_id = {r["span_id"]: r for r in records}
    current: dict[str, Any] | None = span
    while current is not None:
        if "hoptrace.transaction.id" in current["attributes"]:
            return current["attributes"]["hoptrace.transaction.id"]  # type: ignore[no-any-return]
        current = by_id.get(current["parent_id"])
    return None


@dataclass
class Edge:
    """The transaction, trace and span IDs of a ``hoptrace.transaction`` block."""

    transaction_id: str = ""
    trace_id: str = ""
    span_id: str = ""


@contextmanager
def edge(name: str) -> Iterator[Edge]:
    found = Edge()
    with hoptrace.transaction(name) as tx:
        found.transaction_id = tx.transaction_id
        found.trace_id = hoptrace.current_trace_id() or ""
        found.span_id = hoptrace.current_span_id() or ""
        yield found


def test_delay_one_trace_transaction_logs_and_queue_wait(env: Env, spans: Any) -> None:
    with edge("checkout") as tx:
        result = env.task("echo").delay("hello")
        assert hoptrace.current_span_id() == tx.span_id  # send scope closed
    seen = result.get(timeout=30)
    assert seen["pid"] != os.getpid()

    (process,) = env.worker.records.process_spans(result.id)
    send = spans.one("send traced.echo")
    assert send.parent is not None and send.parent.span_id == int(tx.span_id, 16)
    assert process["parent_id"] == f"{send.context.span_id:016x}"
    assert process["trace_id"] == f"{send.context.trace_id:032x}"
    assert process["name"] == "process traced.echo"
    assert process["attributes"]["messaging.destination.name"] == env.worker.queue
    assert process["attributes"]["celery.task.state"] == "SUCCESS"
    assert process["attributes"]["hoptrace.queue_wait_ms"] >= 0
    assert seen == {**seen, "transaction_id": tx.transaction_id, "trace_id": process["trace_id"],
                    "span_id": process["span_id"]}

    logs = env.worker.records.wait_for(
        lambda logs: any(f"[{result.id}] succeeded" in r["message"] for r in logs), "logs"
    )
    mine = [r for r in logs if r["message"] == "echo task running hello"]
    done = [r for r in logs if f"[{result.id}] succeeded" in r["message"]]
    assert len(mine) == 1 and len(done) == 1
    for record in (mine[0], done[0]):
        assert record["transaction_id"] == tx.transaction_id
        assert record["trace_id"] == process["trace_id"]
        assert record["span_id"] == process["span_id"]
        assert record["messaging_message_id"] == result.id


@pytest.mark.parametrize("delay", ["countdown", "eta"])
def test_apply_async_countdown_and_eta(env: Env, spans: Any, delay: str) -> None:
    options: dict[str, Any] = (
        {"countdown": 1}
        if delay == "countdown"
        else {"eta": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)}
    )
    with edge("later") as tx:
        result = env.task("echo").apply_async(("later",), **options)
    seen = result.get(timeout=30)
    (process,) = env.worker.records.process_spans(result.id)
    assert_hop(all_spans(spans, env), process, tx.transaction_id)
    assert seen["transaction_id"] == tx.transaction_id
    # The wait from publish to start includes the requested delay (1 s).
    assert process["attributes"]["hoptrace.queue_wait_ms"] >= 900


def test_send_task_by_name_for_a_task_the_producer_does_not_know(env: Env, spans: Any) -> None:
    bare = Celery("bare", broker=env.broker, backend=env.backend, set_as_current=False)
    assert "traced.remote_only" not in bare.tasks
    with edge("remote") as tx:
        result = bare.send_task("traced.remote_only", args=("x",), queue=env.worker.queue)
        # The send span has ended and the caller's context is back.
        assert hoptrace.current_span_id() == tx.span_id
    seen = result.get(timeout=30)
    send = spans.one("send traced.remote_only")
    assert send.end_time is not None
    (process,) = env.worker.records.process_spans(result.id)
    assert_hop(all_spans(spans, env), process, tx.transaction_id)
    assert seen["transaction_id"] == tx.transaction_id
    assert seen["trace_id"] == f"{send.context.trace_id:032x}"


def test_chain_each_link_is_a_child_of_the_send_that_published_it(env: Env, spans: Any) -> None:
    add, echo = env.task("add"), env.task("echo")
    with edge("chain") as tx:
        result = chain(add.s(1, 2), add.s(3), echo.si("end of chain")).apply_async()
    seen = result.get(timeout=30)
    ids = [result.parent.parent.id, result.parent.id, result.id]
    processes = [env.worker.records.process_spans(task_id)[0] for task_id in ids]
    records = all_spans(spans, env)
    sends = [assert_hop(records, p, tx.transaction_id) for p in processes]
    # The caller publishes the first link; each task publishes the next one from its process span.
    assert sends[0]["parent_id"] == tx.span_id
    assert sends[1]["parent_id"] == processes[0]["span_id"]
    assert sends[2]["parent_id"] == processes[1]["span_id"]
    assert {p["trace_id"] for p in processes} == {tx.trace_id}
    assert seen["transaction_id"] == tx.transaction_id


def test_group_and_chord_header_and_callback(env: Env, spans: Any) -> None:
    add, total, echo = env.task("add"), env.task("total"), env.task("echo")
    with edge("fan-out") as tx:
        grouped = group(echo.s(f"g{i}") for i in range(3)).apply_async()
        chorded = chord([add.s(i, i) for i in range(3)], total.s()).apply_async()
    assert [r["transaction_id"] for r in grouped.get(timeout=30)] == [tx.transaction_id] * 3
    seen = chorded.get(timeout=30)
    assert seen["total"] == 0 + 2 + 4
    assert seen["transaction_id"] == tx.transaction_id

    header_ids = [r.id for r in chorded.parent.results]
    group_processes = [env.worker.records.process_spans(r.id)[0] for r in grouped.results]
    header_processes = [env.worker.records.process_spans(i)[0] for i in header_ids]
    (callback,) = env.worker.records.process_spans(chorded.id)
    records = all_spans(spans, env)
    for process in group_processes + header_processes:
        send = assert_hop(records, process, tx.transaction_id)
        assert send["parent_id"] == tx.span_id
    callback_send = assert_hop(records, callback, tx.transaction_id)
    # The header task that finished last publishes the callback, inside its process span.
    assert callback_send["parent_id"] in {p["span_id"] for p in header_processes}


def test_starmap_runs_in_the_callers_transaction(env: Env, spans: Any) -> None:
    with edge("starmap") as tx:
        result = env.task("add").starmap([(10, 20), (30, 40)]).apply_async(queue=env.worker.queue)
    assert result.get(timeout=30) == [30, 70]
    (process,) = env.worker.records.process_spans(result.id)
    assert process["name"] == "process celery.starmap"
    assert_hop(all_spans(spans, env), process, tx.transaction_id)
    logs = env.worker.records.wait_for(
        lambda logs: sum(r["message"] in ("add 10 + 20", "add 30 + 40") for r in logs) >= 2, "logs"
    )
    for record in logs:
        if record["message"] in ("add 10 + 20", "add 30 + 40"):
            assert record["transaction_id"] == tx.transaction_id
            assert record["span_id"] == process["span_id"]


def test_task_publishing_a_task(env: Env, spans: Any) -> None:
    with edge("nested") as tx:
        result = env.task("publish_child").delay()
    parent_seen = result.get(timeout=30)
    child_seen = env.producer.AsyncResult(parent_seen["child_id"]).get(timeout=30)
    (parent,) = env.worker.records.process_spans(result.id)
    (child,) = env.worker.records.process_spans(parent_seen["child_id"])
    records = all_spans(spans, env)
    assert_hop(records, parent, tx.transaction_id)
    child_send = assert_hop(records, child, tx.transaction_id)
    assert child_send["parent_id"] == parent["span_id"]
    assert child_seen["transaction_id"] == parent_seen["transaction_id"] == tx.transaction_id
    assert child_seen["trace_id"] == parent_seen["trace_id"]


@pytest.mark.parametrize("task_name", ["flaky", "auto_flaky"])
def test_retries_are_linked_siblings_in_one_transaction(
    env: Env, spans: Any, task_name: str
) -> None:
    with edge("retry") as tx:
        result = env.task(task_name).delay(2)
    assert result.get(timeout=30)["retries"] == 2
    attempts = env.worker.records.process_spans(result.id, count=3)
    assert len(attempts) == 3
    # One span per attempt: backends merge or drop spans that share a (trace, span) ID.
    assert len({a["span_id"] for a in attempts}) == 3, [a["span_id"] for a in attempts]
    original = spans.one(f"send traced.{task_name}")
    for number, attempt in enumerate(attempts):
        # Every attempt hangs off the original send span: no ever-deeper nesting.
        assert attempt["parent_id"] == f"{original.context.span_id:016x}"
        assert attempt["trace_id"] == f"{original.context.trace_id:032x}"
        assert attempt["attributes"]["hoptrace.transaction.id"] == tx.transaction_id
        assert attempt["attributes"].get("messaging.message.retry.count", 0) == number
        if number:
            previous = attempts[number - 1]
            assert [(link["span_id"], link["attributes"]) for link in attempt["links"]] == [
                (previous["span_id"], {"hoptrace.link.reason": "retry"})
            ]
        else:
            assert attempt["links"] == []
    assert [a["attributes"]["celery.task.state"] for a in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert [e["attributes"]["exception.message"] for e in attempts[0]["events"]] == [
        "attempt 0 failed" if task_name == "flaky" else "auto attempt 0 failed"
    ]
    # Each retry publish is a send span inside the attempt that asked for it.
    worker_sends = [
        s for s in env.worker.records.spans()
        if s["kind"] == "PRODUCER" and s["attributes"].get("messaging.message.id") == result.id
    ]
    assert sorted(s["parent_id"] for s in worker_sends) == sorted(
        a["span_id"] for a in attempts[:2]
    )
    assert sorted(s["attributes"]["messaging.message.retry.count"] for s in worker_sends) == [1, 2]
    # Celery's own "retry" log lines carry the attempt's IDs.
    logs = env.worker.records.wait_for(
        lambda logs: sum(f"[{result.id}] retry:" in r["message"] for r in logs) == 2, "logs"
    )
    retry_lines = [r for r in logs if f"[{result.id}] retry:" in r["message"]]
    assert sorted(r["span_id"] for r in retry_lines) == sorted(a["span_id"] for a in attempts[:2])
    assert {r["transaction_id"] for r in retry_lines} == {tx.transaction_id}


def test_pool_process_killed_before_ack_redelivery_links_the_dead_attempt(
    env: Env, spans: Any
) -> None:
    """acks_late task whose prefork child is SIGKILLed: the retry links to the dead attempt.

    The dead attempt's span never ends, so only its log line shows it; the redelivered run's
    process span must link to the span ID in that line, in the same trace and transaction.
    """
    with edge("killed") as tx:
        result = env.task("die_once").delay()
    assert result.get(timeout=60)["transaction_id"] == tx.transaction_id
    (again,) = env.worker.records.process_spans(result.id)
    logs = env.worker.records.wait_for(
        lambda logs: sum("die_once running" in r["message"] for r in logs) == 2, "logs"
    )
    # Each pool process writes its own log file: tell the two runs apart by what they saw.
    runs = {r["message"].rsplit("=", 1)[1]: r for r in logs if "die_once running" in r["message"]}
    assert sorted(runs) == ["False", "True"]
    dead_line, retry_line = runs["False"], runs["True"]
    send = spans.one("send traced.die_once")
    assert again["parent_id"] == f"{send.context.span_id:016x}"
    assert again["trace_id"] == dead_line["trace_id"] == f"{send.context.trace_id:032x}"
    assert {dead_line["transaction_id"], again["attributes"]["hoptrace.transaction.id"]} == {
        tx.transaction_id
    }
    assert [(link["span_id"], link["attributes"]) for link in again["links"]] == [
        (dead_line["span_id"], {"hoptrace.link.reason": "redelivery"})
    ]
    assert retry_line["span_id"] == again["span_id"] != dead_line["span_id"]


def test_retry_attempt_killed_before_ack_is_redelivered_with_a_span_of_its_own(
    env: Env, spans: Any
) -> None:
    """acks_late retry whose pool process is SIGKILLed: three runs, three span IDs.

    The retry (attempt 1) carries the original send's context, like every retry, so neither
    its first run (the dead one, seen only in its log line) nor its redelivered run may take
    the span ID derived from that send: that ID is attempt 0's. The redelivered run links to
    attempt 0, the attempt it retries, and only to it.
    """
    with edge("killed retry") as tx:
        result = env.task("retry_then_die").delay()
    assert result.get(timeout=60)["transaction_id"] == tx.transaction_id
    first, again = env.worker.records.process_spans(result.id, count=2)
    logs = env.worker.records.wait_for(
        lambda logs: sum("retry_then_die running" in r["message"] for r in logs) == 3, "logs"
    )
    runs = {
        r["message"].split(", ", 1)[1]: r for r in logs if "retry_then_die running" in r["message"]
    }
    assert sorted(runs) == [
        "retries=0, redelivered=False", "retries=1, redelivered=False",
        "retries=1, redelivered=True",
    ]
    dead_line = runs["retries=1, redelivered=False"]
    assert runs["retries=0, redelivered=False"]["span_id"] == first["span_id"]
    assert runs["retries=1, redelivered=True"]["span_id"] == again["span_id"]
    assert len({first["span_id"], dead_line["span_id"], again["span_id"]}) == 3
    send = spans.one("send traced.retry_then_die")
    for run in (first, again):
        assert run["parent_id"] == f"{send.context.span_id:016x}"
        assert run["trace_id"] == f"{send.context.trace_id:032x}"
        assert run["attributes"]["hoptrace.transaction.id"] == tx.transaction_id
    assert dead_line["trace_id"] == first["trace_id"]
    assert dead_line["transaction_id"] == tx.transaction_id
    assert "messaging.message.retry.count" not in first["attributes"]
    assert again["attributes"]["messaging.message.retry.count"] == 1
    assert [(link["span_id"], link["attributes"]) for link in again["links"]] == [
        (first["span_id"], {"hoptrace.link.reason": "retry"})
    ]


def test_failure_records_exception_error_status_and_logs_the_transaction(
    env: Env, spans: Any
) -> None:
    with edge("failing") as tx:
        result = env.task("boom").delay("kaboom")
    with pytest.raises(KeyError):
        result.get(timeout=30)
    (process,) = env.worker.records.process_spans(result.id)
    assert process["status"] == "ERROR"
    assert process["attributes"]["celery.task.state"] == "FAILURE"
    (event,) = process["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "KeyError"
    logs = env.worker.records.wait_for(
        lambda logs: any(f"[{result.id}] raised unexpected" in r["message"] for r in logs), "logs"
    )
    (line,) = [r for r in logs if f"[{result.id}] raised unexpected" in r["message"]]
    assert line["level"] == "ERROR"
    assert "KeyError('kaboom')" in line["message"]
    assert line["transaction_id"] == tx.transaction_id
    assert line["trace_id"] == process["trace_id"]
    assert line["span_id"] == process["span_id"]


def test_beat_publish_starts_a_new_transaction(env: Env, spans: Any) -> None:
    scheduler = Scheduler(env.producer, lazy=True)
    entry = ScheduleEntry(
        name="tick", task="traced.echo", schedule=datetime.timedelta(seconds=30),
        args=("beat",), options={"queue": env.worker.queue}, app=env.producer,
    )
    with edge("ambient") as ambient:
        first = scheduler.apply_async(entry, advance=False)
        second = scheduler.apply_async(entry, advance=False)
        assert hoptrace.current_transaction_id() == ambient.transaction_id
    seen = [first.get(timeout=30), second.get(timeout=30)]
    transactions = {s["transaction_id"] for s in seen}
    assert len(transactions) == 2 and ambient.transaction_id not in transactions
    beats = spans.named("beat tick")
    assert len(beats) == 2 and all(b.parent is None for b in beats)
    records = all_spans(spans, env)
    for result, answer in ((first, seen[0]), (second, seen[1])):
        (beat,) = [b for b in beats
                   if b.attributes["hoptrace.transaction.id"] == answer["transaction_id"]]
        (process,) = env.worker.records.process_spans(result.id)
        send = assert_hop(records, process, answer["transaction_id"])
        assert send["parent_id"] == f"{beat.context.span_id:016x}"


def _raw_publish(env: Env, name: str, args: tuple[Any, ...], extra: dict[str, Any]) -> str:
    """Publish a protocol-2 task message by hand (no instrumentation), with ``extra`` headers."""
    task_id = str(uuid.uuid4())
    message = env.producer.amqp.as_task_v2(task_id, name, args=args)
    headers = {**message.headers, **extra}
    with env.producer.connection_for_write() as conn:
        conn.Producer().publish(
            message.body, routing_key=env.worker.queue, headers=headers, serializer="json",
            correlation_id=task_id, reply_to="",
        )
    return task_id


BAD_HEADERS: dict[str, dict[str, Any]] = {
    "garbage-traceparent": {"traceparent": "zz-not-a-traceparent-at-all"},
    "bytes-values": {
        "traceparent": b"\xff\xfe\x00binary",
        "x-transaction-id": b"\xc3\x28\xa0\xa1",
    },
    "crlf-transaction-id": {"x-transaction-id": "abc\r\nX-Injected: 1"},
    "huge-baggage": {"baggage": ",".join(f"k{i}={'v' * 200}" for i in range(400))},
}


def test_bad_raw_messages_run_once_with_a_new_trace_and_a_warning(env: Env) -> None:
    task_ids = {
        case: _raw_publish(env, "traced.echo", (case,), headers)
        for case, headers in BAD_HEADERS.items()
    }
    results = {case: env.producer.AsyncResult(i).get(timeout=30) for case, i in task_ids.items()}
    sentinel = env.task("echo").delay("after bad input")
    assert sentinel.get(timeout=30)["label"] == "after bad input"
    assert env.worker.alive()
    transactions = set()
    for case, task_id in task_ids.items():
        seen = results[case]
        (process,) = env.worker.records.process_spans(task_id)
        assert process["parent_id"] is None, case  # a new trace
        assert seen["trace_id"] == process["trace_id"], case
        assert seen["transaction_id"] and "\n" not in seen["transaction_id"], case
        assert process["attributes"]["hoptrace.context.rejected"], case
        transactions.add(seen["transaction_id"])
    assert len(transactions) == len(task_ids)
    # Exactly once: one success log line per message, even after a later task ran.
    logs = env.worker.records.wait_for(
        lambda logs: any(f"[{sentinel.id}] succeeded" in r["message"] for r in logs), "logs"
    )
    for task_id in task_ids.values():
        assert sum(f"[{task_id}] succeeded" in r["message"] for r in logs) == 1
    warnings = " ".join(r["message"] for r in logs if r["logger"] == "hoptrace")
    for reason in (
        "traceparent.format",
        "traceparent.encoding",
        "transaction_id.encoding",
        "transaction_id.format",
        "baggage.size",
    ):
        assert f"[rejected.{reason}," in warnings, reason


def test_no_scope_stays_open_in_the_worker(env: Env) -> None:
    results = [env.task("echo").delay(str(i)) for i in range(20)]
    for result in results:
        result.get(timeout=30)
    # The only open execution is the task asking (each child process answers for itself).
    counts = {env.task("open_executions").delay().get(timeout=30) for _ in range(6)}
    assert counts == {1}
