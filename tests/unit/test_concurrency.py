"""Each asyncio task and each thread keeps its own transaction: zero cross-contamination."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import hoptrace


@pytest.mark.parametrize("mode", ["spans", "no_sdk"])
def test_1000_asyncio_tasks_publish_and_consume_without_leaks(
    mode: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(mode)
    n = 1000

    async def main() -> list[tuple[str, str, str, str]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        results: list[tuple[str, str, str, str]] = []

        async def producer(i: int) -> None:
            async with hoptrace.transaction(transaction_id=f"tx-{i}"):
                await asyncio.sleep(0)
                headers = hoptrace.inject({"i": str(i)})
                await asyncio.sleep(0)
                assert hoptrace.current_transaction_id() == f"tx-{i}"
                await inbox.put(headers)

        async def handle(headers: dict[str, Any]) -> None:
            async with hoptrace.consume_scope(headers, "q", "memory"):
                await asyncio.sleep(0)  # let other handlers interleave
                results.append(
                    (
                        headers["i"],
                        hoptrace.current_transaction_id() or "",
                        hoptrace.current_trace_id() or "",
                        headers["traceparent"][3:35],
                    )
                )

        await asyncio.gather(*(producer(i) for i in range(n)))
        # Half the handlers in tasks of their own, interleaving; the other half one after
        # another in this one task, where a scope that left its context attached would show:
        # gather's tasks each work on a copy of the context, so they alone could not.
        await asyncio.gather(*(handle(inbox.get_nowait()) for _ in range(n // 2)))
        while not inbox.empty():
            await handle(inbox.get_nowait())
            left = (hoptrace.current_transaction_id(), hoptrace.current_trace_id())
            assert left == (None, None), f"a scope left its context attached: {left}"
        return results

    results = asyncio.run(main())
    assert len(results) == n
    for i, tx, trace_id, sent_trace in results:
        assert tx == f"tx-{i}"
        assert trace_id == sent_trace
    assert len({r[2] for r in results}) == n


def test_16_threads_publish_and_consume_without_leaks(spans: Any) -> None:
    per_thread = 200
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    barrier = threading.Barrier(16)
    errors: list[str] = []

    def produce(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            with hoptrace.transaction(transaction_id=f"t{t}-{i}"):
                inbox.put(hoptrace.inject({"expect": f"t{t}-{i}"}))
                if hoptrace.current_transaction_id() != f"t{t}-{i}":
                    errors.append("producer leak")

    def consume(_: int) -> None:
        for _ in range(per_thread):
            headers = inbox.get(timeout=30)
            with hoptrace.consume_scope(headers, "q", "memory"):
                if hoptrace.current_transaction_id() != headers["expect"]:
                    errors.append(f"consumer leak {headers['expect']}")
                if hoptrace.current_trace_id() != headers["traceparent"][3:35]:
                    errors.append("trace leak")
            if hoptrace.current_transaction_id() is not None:
                errors.append("context left attached")

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(produce, t) for t in range(16)]
        futures += [pool.submit(consume, t) for t in range(16)]
        for future in futures:
            future.result()
    assert errors == []
    assert len(spans.named("process q")) == 16 * per_thread
