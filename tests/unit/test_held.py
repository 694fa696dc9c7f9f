"""The one held-scope mechanism (``hoptrace.core.held``), without any broker.

A wrapped call returns a message and holds its process scope open; the handler runs after the
call returned. These tests pin when that scope closes (the owner's next call, its settle
point, the end of the loop, the owner closing) and what a message sent meanwhile joins.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

import hoptrace
from hoptrace.core import held, semconv
from hoptrace.core.hop import consume_scope, produce_scope


class Consumer:
    """A stand-in for a client object that owns held scopes (weak-referenceable)."""


def published() -> tuple[dict[str, str], str]:
    """Return the headers of a message sent in a new transaction, and that transaction ID."""
    with hoptrace.transaction("edge") as tx:
        return hoptrace.inject({}), tx.transaction_id


def poll(consumer: Consumer, headers: dict[str, str], key: object = None,
         settles: bool = True) -> None:
    """What every wrapped poll does: release the owner's scope, then hold the new one."""
    held.release(consumer)
    held.hold(consumer, consume_scope(headers, "orders", "kafka"), key, settles=settles)


def send_trace_id() -> int:
    """Send an unrelated message now; return the trace ID its ``send`` span got."""
    with produce_scope(None, "other", "kafka") as scope:
        assert scope.span is not None
        return scope.span.get_span_context().trace_id


def test_the_scope_is_current_until_the_owner_s_next_call(spans: Any) -> None:
    consumer = Consumer()
    before = otel_context.get_current()
    first, tx1 = published()
    second, tx2 = published()
    poll(consumer, first)
    assert hoptrace.current_transaction_id() == tx1
    poll(consumer, second)
    assert hoptrace.current_transaction_id() == tx2
    held.release(consumer)
    assert otel_context.get_current() is before
    assert len(spans.named("process orders")) == 2


def test_a_message_sent_between_polls_joins_the_last_consumed_trace(spans: Any) -> None:
    """The hazard, as measured on confluent-kafka: held, an unrelated send is a child."""
    consumer = Consumer()
    headers, _ = published()
    poll(consumer, headers)
    process = trace.get_current_span().get_span_context()
    assert send_trace_id() == process.trace_id
    held.release(consumer)


def test_after_the_settle_point_a_send_starts_its_own_trace(spans: Any) -> None:
    consumer = Consumer()
    headers, _ = published()
    poll(consumer, headers)
    process = trace.get_current_span().get_span_context()
    held.settle(consumer)  # commit / store_offsets / ack
    assert hoptrace.current_transaction_id() is None
    assert send_trace_id() != process.trace_id
    (span,) = spans.named("process orders")
    assert span.end_time is not None


def test_with_holding_off_nothing_is_held_and_scoped_gives_exact_boundaries(
    spans: Any,
) -> None:
    hoptrace.configure(hold_consume_scope=False)
    consumer = Consumer()
    headers, tx = published()
    poll(consumer, headers)
    assert hoptrace.current_transaction_id() is None
    assert not spans.named("process orders")
    seen = [
        hoptrace.current_transaction_id()
        for _ in held.scoped([headers], lambda h: consume_scope(h, "orders", "kafka"))
    ]
    assert seen == [tx]
    assert hoptrace.current_transaction_id() is None
    (process,) = spans.named("process orders")
    assert send_trace_id() != process.context.trace_id


def test_a_settle_closes_only_the_message_it_covers_and_only_from_its_context(
    spans: Any,
) -> None:
    channel = Consumer()
    headers, tx = published()
    poll(channel, headers, key=7)
    held.settle(channel, 6)  # another delivery
    assert hoptrace.current_transaction_id() == tx
    token = otel_context.attach(otel_context.set_value("inner", 1))
    held.settle(channel, 7)  # inside a context the handler attached: left to the next call
    otel_context.detach(token)
    assert hoptrace.current_transaction_id() == tx
    held.settle(channel, 9, multiple=True)  # 9 and every earlier tag
    assert hoptrace.current_transaction_id() is None


def test_a_scope_held_through_settles_ignores_them(spans: Any) -> None:
    channel = Consumer()
    headers, tx = published()
    poll(channel, headers, key=1, settles=False)  # a consume() loop body that acks early
    held.settle(channel, 1)
    assert hoptrace.current_transaction_id() == tx
    held.release(channel)
    assert hoptrace.current_transaction_id() is None


def test_leaving_a_for_loop_early_closes_the_last_scope(spans: Any) -> None:
    consumer = Consumer()
    messages = [published() for _ in range(3)]
    feed = iter(messages)

    def step() -> str:
        headers, tx = next(feed)
        poll(consumer, headers)
        return tx

    for tx in held.HeldIteration(consumer, step):
        assert hoptrace.current_transaction_id() == tx
        break
    assert hoptrace.current_transaction_id() is None
    (process,) = spans.named("process orders")
    assert process.end_time is not None


def test_held_items_close_on_exception_and_close_the_client_generator(spans: Any) -> None:
    channel = Consumer()
    closed: list[bool] = []
    headers, tx = published()

    def client_generator() -> Iterator[dict[str, str]]:
        try:
            yield headers
            yield headers
        finally:
            closed.append(True)

    def scope_of(item: dict[str, str]) -> consume_scope:
        return consume_scope(item, "orders", "kafka")

    try:
        for _item in held.held_items(channel, client_generator(), scope_of):
            assert hoptrace.current_transaction_id() == tx
            raise RuntimeError("handler failed")
    except RuntimeError:
        pass
    assert hoptrace.current_transaction_id() is None
    assert closed == [True]


def test_another_thread_neither_sees_nor_closes_the_scope(spans: Any) -> None:
    consumer = Consumer()
    headers, tx = published()
    poll(consumer, headers)
    seen: list[str | None] = []

    def other() -> None:
        seen.append(hoptrace.current_transaction_id())
        held.release(consumer)
        held.settle(consumer)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None]
    assert hoptrace.current_transaction_id() == tx
    held.release(consumer)


def test_tasks_keep_their_own_scopes_and_a_gone_task_s_scope_ends(spans: Any) -> None:
    consumer = Consumer()
    (h1, _), (h2, tx2) = published(), published()

    async def main() -> None:
        # A child task that held a scope and ended (wait_for on Python < 3.12 does this).
        await asyncio.create_task(_hold_in_task(consumer, h1))
        assert hoptrace.current_transaction_id() is None
        assert not spans.named("process orders")  # still open: its task never came back
        poll(consumer, h2)  # the next call ends the gone task's span
        assert hoptrace.current_transaction_id() == tx2
        assert len(spans.named("process orders")) == 1
        # A living task inheriting this context neither closes nor restores our scope.
        await asyncio.create_task(_release_in_task(consumer))
        assert hoptrace.current_transaction_id() == tx2
        assert len(spans.named("process orders")) == 1  # ours is still open
        held.release(consumer)  # this task's own release closes it and restores
        assert hoptrace.current_transaction_id() is None

    asyncio.run(main())
    assert len(spans.named("process orders")) == 2
    assert all(s.end_time is not None for s in spans.named("process orders"))


async def _hold_in_task(consumer: Consumer, headers: dict[str, str]) -> None:
    poll(consumer, headers)


async def _release_in_task(consumer: Consumer) -> None:
    held.release(consumer)


def test_release_all_ends_every_task_s_span_when_the_owner_closes(spans: Any) -> None:
    iterator = Consumer()
    headers, _ = published()

    async def worker(started: asyncio.Event, done: asyncio.Event) -> None:
        poll(iterator, headers)
        started.set()
        await done.wait()

    async def main() -> None:
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
        tasks = [asyncio.create_task(worker(*pair)) for pair in events]
        for started, _ in events:
            await started.wait()
        held.release_all(iterator)
        for _, done in events:
            done.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    processes = spans.named("process orders")
    assert len(processes) == 2 and all(s.end_time is not None for s in processes)


def test_a_thread_that_ended_holding_a_scope_has_its_span_ended_at_the_next_call(
    spans: Any,
) -> None:
    """Dead threads leak no scope: the owner's next call, from any thread, ends its span."""
    consumer = Consumer()
    (h1, tx1), (h2, tx2) = published(), published()
    seen: list[str | None] = []

    def worker() -> None:
        poll(consumer, h1)  # holds, then the thread ends without another call
        seen.append(hoptrace.current_transaction_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [tx1]
    assert not spans.named("process orders")  # its scope is still open: nobody came back
    poll(consumer, h2)
    ended = spans.named("process orders")
    assert len(ended) == 1 and ended[0].attributes[semconv.TRANSACTION_ID] == tx1
    assert hoptrace.current_transaction_id() == tx2
    held.release(consumer)
    assert len(spans.named("process orders")) == 2


def test_threads_polling_one_owner_keep_their_own_scopes(spans: Any) -> None:
    consumer = Consumer()
    (h1, tx1), (h2, tx2) = published(), published()
    ready, go = threading.Event(), threading.Event()
    seen: list[str | None] = []

    def worker() -> None:
        poll(consumer, h1)
        ready.set()
        go.wait()
        seen.append(hoptrace.current_transaction_id())
        held.release(consumer)

    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait()
    poll(consumer, h2)  # the worker is alive: its scope stays open and current there
    assert hoptrace.current_transaction_id() == tx2
    assert not spans.named("process orders")
    go.set()
    thread.join()
    assert seen == [tx1]
    held.release(consumer)
    assert sorted(s.attributes[semconv.TRANSACTION_ID] for s in spans.named("process orders")) == sorted(
        [tx1, tx2])


def test_an_owner_that_held_a_scope_can_be_collected(spans: Any) -> None:
    """The per-owner bookkeeping keeps no strong reference to the owner."""
    import gc
    import weakref

    consumer = Consumer()
    alive = weakref.ref(consumer)
    headers, _ = published()
    poll(consumer, headers)
    held.release(consumer)
    del consumer
    gc.collect()
    assert alive() is None
    assert not any(record[0]() is None for record in held._by_owner.values())


def test_closing_from_another_thread_ends_the_polling_thread_s_span(spans: Any) -> None:
    """``releasing_all`` (kafka-python's ``close``): a consumer closed from another thread at
    shutdown ends the span the polling thread still holds; that thread's context is its own."""

    class Closing(Consumer):
        closed = False

        @held.releasing_all
        def close(self) -> None:
            self.closed = True

    consumer = Closing()
    headers, tx = published()
    polled, finish = threading.Event(), threading.Event()
    seen: list[str | None] = []

    def polling() -> None:
        poll(consumer, headers)
        polled.set()
        finish.wait()
        seen.append(hoptrace.current_transaction_id())

    thread = threading.Thread(target=polling)
    thread.start()
    polled.wait()
    consumer.close()
    ended = [s for s in spans.named("process orders") if s.end_time is not None]
    finish.set()
    thread.join()
    assert consumer.closed and len(ended) == 1
    assert seen == [tx]  # left to the polling thread
    assert len(spans.named("process orders")) == 1
