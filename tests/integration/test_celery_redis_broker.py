"""Celery with Redis as the broker (and result backend), real prefork worker process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery, chain
from celery_apps.harness import Worker, running_worker
from celery_apps.traced_app import build_app, span_record

import hoptrace
import hoptrace.celery

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_env(redis_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Celery, Worker]]:
    queue = f"hoptrace-celery-redis-{uuid.uuid4().hex[:8]}"
    app = build_app(redis_url, redis_url, queue, name="redis-producer")
    out = tmp_path_factory.mktemp("celery-redis")
    hoptrace.celery.instrument(app)
    try:
        with running_worker(redis_url, redis_url, out, app, queue=queue) as worker:
            yield app, worker
    finally:
        hoptrace.celery.uninstrument()


def test_delay_over_redis(redis_env: tuple[Celery, Worker], spans: Any) -> None:
    app, worker = redis_env
    with hoptrace.transaction("redis") as tx:
        result = app.tasks["traced.echo"].delay("redis")
    seen = result.get(timeout=30)
    (process,) = worker.records.process_spans(result.id)
    send = span_record(spans.one("send traced.echo"))
    assert process["parent_id"] == send["span_id"]
    assert process["trace_id"] == send["trace_id"] == seen["trace_id"]
    assert seen["transaction_id"] == tx.transaction_id
    assert process["attributes"]["hoptrace.queue_wait_ms"] >= 0


def test_chain_and_retry_over_redis(redis_env: tuple[Celery, Worker], spans: Any) -> None:
    app, worker = redis_env
    add, flaky = app.tasks["traced.add"], app.tasks["traced.flaky"]
    with hoptrace.transaction("redis chain") as tx:
        chained = chain(add.s(2, 3), add.s(4)).apply_async()
        retried = flaky.delay(1)
    assert chained.get(timeout=30) == 9
    assert retried.get(timeout=30)["transaction_id"] == tx.transaction_id
    (first,) = worker.records.process_spans(chained.parent.id)
    (second,) = worker.records.process_spans(chained.id)
    second_send = [s for s in worker.records.spans()
                   if s["kind"] == "PRODUCER"
                   and s["attributes"].get("messaging.message.id") == chained.id]
    assert len(second_send) == 1 and second_send[0]["parent_id"] == first["span_id"]
    assert second["parent_id"] == second_send[0]["span_id"]
    assert {first["attributes"]["hoptrace.transaction.id"],
            second["attributes"]["hoptrace.transaction.id"]} == {tx.transaction_id}
    attempt0, attempt1 = worker.records.process_spans(retried.id, 2)
    assert attempt0["parent_id"] == attempt1["parent_id"]
    assert [link["span_id"] for link in attempt1["links"]] == [attempt0["span_id"]]
