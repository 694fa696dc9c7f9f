"""Celery's solo and threads pools in a worker process, and a 10,000-task leak check on a
prefork worker process (one child, so every task runs in the process we inspect)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery
from celery_apps.harness import Worker, running_worker
from celery_apps.traced_app import build_app, span_record

import hoptrace
import hoptrace.celery

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["solo", "threads"])
def pool(
    request: pytest.FixtureRequest, amqp_url: str, redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Celery, Worker]]:
    queue = f"hoptrace-celery-{request.param}-{uuid.uuid4().hex[:8]}"
    app = build_app(amqp_url, redis_url, queue, name=f"pool-{request.param}")
    out = tmp_path_factory.mktemp(f"celery-{request.param}")
    hoptrace.celery.instrument(app)
    try:
        with running_worker(amqp_url, redis_url, out, app, queue=queue, pool=request.param,
                            concurrency=2) as worker:
            yield app, worker
    finally:
        hoptrace.celery.uninstrument()


def test_delay_through_the_pool(pool: tuple[Celery, Worker], spans: Any) -> None:
    app, worker = pool
    with hoptrace.transaction("pool") as tx:
        result = app.tasks["traced.echo"].delay("pool")
    seen = result.get(timeout=30)
    (process,) = worker.records.process_spans(result.id)
    send = span_record(spans.one("send traced.echo"))
    assert process["parent_id"] == send["span_id"]
    assert process["trace_id"] == send["trace_id"] == seen["trace_id"]
    assert seen["transaction_id"] == tx.transaction_id
    assert seen["span_id"] == process["span_id"]


def test_retry_through_the_pool(pool: tuple[Celery, Worker], spans: Any) -> None:
    app, worker = pool
    with hoptrace.transaction("pool retry") as tx:
        result = app.tasks["traced.flaky"].delay(1)
    assert result.get(timeout=30)["transaction_id"] == tx.transaction_id
    first, second = worker.records.process_spans(result.id, 2)
    send = span_record(spans.one("send traced.flaky"))
    assert first["parent_id"] == second["parent_id"] == send["span_id"]
    assert first["span_id"] != second["span_id"]
    assert [link["span_id"] for link in second["links"]] == [first["span_id"]]
    assert second["attributes"]["messaging.message.retry.count"] == 1


def test_ten_thousand_tasks_leave_no_state_behind(
    amqp_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory, spans: Any
) -> None:
    """10,000 tasks through one prefork child: nothing tracked afterwards, every span ended.

    (The child's RSS over such a run is a figure, not a pass/fail check:
    ``bench/soak_bench.py --clients celery``.)
    """
    queue = f"hoptrace-celery-leak-{uuid.uuid4().hex[:8]}"
    app = build_app(amqp_url, redis_url, queue, name="leak")
    add, stats = app.tasks["traced.add"], app.tasks["traced.process_stats"]
    out = tmp_path_factory.mktemp("celery-leak")
    rounds, per_round = 20, 500
    samples = []
    hoptrace.celery.instrument(app)
    try:
        with running_worker(amqp_url, redis_url, out, app, queue=queue, concurrency=1,
                            extra_env={"HOPTRACE_CELERY_SPANS": "count"}):
            baseline = stats.delay().get(timeout=30)
            for number in range(rounds):
                with hoptrace.transaction("burst"):
                    for i in range(per_round):
                        add.apply_async((i, number), ignore_result=True)
                # One child runs the FIFO queue in order: this answers after the burst ran.
                samples.append(stats.delay().get(timeout=120))
                spans.clear()  # the producer side records too (sampled traces), but keeps none
    finally:
        hoptrace.celery.uninstrument()
    assert {s["pid"] for s in samples} == {baseline["pid"]}
    last = samples[-1]
    # Only the stats task itself is running when it answers.
    assert all(s["running"] == 1 for s in samples)
    assert last["live"] == {"consume_scope": 1, "produce_scope": 0}
    # Every process span ended and was exported: the readiness check, the adds, the baseline
    # and the earlier stats tasks (the answering one is still open).
    assert last["spans"]["CONSUMER"] == 1 + rounds * per_round + 1 + (len(samples) - 1)
