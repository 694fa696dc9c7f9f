"""Scopes held for an owner that takes no weak reference (a C consumer, ``wrap_consumer``).

hold() remembers such owner types instead of failing a weak reference at every call; the
scope of each message is still held until the next call, then closed and its context left.
"""

from __future__ import annotations

from typing import Any

import hoptrace
from hoptrace import confluent_kafka as ck
from hoptrace.core import held
from hoptrace.core.context import get_current


class _Message:
    def __init__(self, offset: int, tx: str) -> None:
        self._offset = offset
        self._headers = [("traceparent", f"00-{offset:032x}-{offset:016x}-01".encode()),
                         ("x-transaction-id", tx.encode())]

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def error(self) -> None:
        return None


def test_each_poll_holds_its_own_scope_for_an_owner_without_weak_references(
    spans: Any,
) -> None:
    hoptrace.configure(propagation_only=True)
    owner = object()  # like confluent_kafka's cimpl.Consumer: no weak reference
    before = get_current()
    seen = []
    for offset in range(1, 6):
        message = _Message(offset, f"{offset:032x}")
        got = ck._poll(lambda m=message: m, owner, "g", (), {})
        assert got is message
        hop = hoptrace.current_hop()
        assert hop is not None and hop.message_id == f"orders-0@{offset}"
        seen.append((hoptrace.current_transaction_id(), hoptrace.current_trace_id()))
        assert type(owner) in held._unreferenced
        assert len(held._stack.get()) == 1  # the previous message's scope closed
    ck.close_scope(owner)
    assert get_current() is before
    assert seen == [(f"{n:032x}", f"{n:032x}") for n in range(1, 6)]
    assert not any(record[0]() is owner for record in held._by_owner.values())
    assert hoptrace.diagnostics() == {}
