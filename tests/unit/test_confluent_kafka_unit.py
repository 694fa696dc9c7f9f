"""confluent-kafka's produce() without a span to make: just the headers, as the scope wrote them.

No broker: the client's ``produce`` is a stand-in that keeps what it was given.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate

import hoptrace
from hoptrace import _kafka
from hoptrace import confluent_kafka as ck

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")
TX = re.compile(r"[0-9a-f]{32}")
CARRIED = "c" * 32
#: A user's own traceparent already in the list (another trace).
USER_TRACEPARENT = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"


@pytest.fixture(params=["propagation_only", "no_sdk"])
def headers_only_mode(request: pytest.FixtureRequest) -> str:
    """Both ways a send makes no span: propagation-only with an SDK, or no SDK at all."""
    if request.param == "propagation_only":
        request.getfixturevalue("spans")
        hoptrace.configure(propagation_only=True)
    else:
        request.getfixturevalue("no_sdk")
    assert _kafka.headers_only()
    return str(request.param)


def produced(headers: Any = None, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Produce through hoptrace's wrapper; return the headers and arguments the client got."""
    got: list[dict[str, Any]] = []

    def client_produce(topic: str, *args: Any, **kw: Any) -> None:
        assert topic == "orders" and args == (b"v",)
        got.append(kw)

    if headers is not None:
        kwargs["headers"] = headers
    ck._produce(client_produce, None, "orders", (b"v",), kwargs)
    (sent,) = got
    return sent["headers"], sent


def scoped(headers: Any = None, timestamp_given: bool = False) -> Any:
    """The headers the send scope writes for the same send (the reference)."""
    scope = _kafka.send_scope("orders", headers, b"k", timestamp_given)
    carrier = scope.carrier
    scope.close()
    return carrier


def names(headers: Any) -> list[str]:
    return [k for k, _ in headers] if isinstance(headers, list) else list(headers)


def text(headers: Any) -> dict[str, str]:
    if isinstance(headers, list):
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in headers}
    return dict(headers)


def test_inside_a_transaction_the_headers_are_the_scopes_own(headers_only_mode: str) -> None:
    with hoptrace.transaction() as tx:
        trace_id = hoptrace.current_trace_id()
        fast, kwargs = produced(key=b"k")
        reference = scoped()
    assert "on_delivery" not in kwargs  # no span: the caller's callbacks are left alone
    assert fast == reference  # same names, order and values: no new span in either path
    values = text(fast)
    assert "x-transaction-id" not in values  # the baggage entry carries the ID
    match = TRACEPARENT.fullmatch(values["traceparent"])
    assert match is not None and match.group(1) == trace_id
    assert values["baggage"] == "transaction.id=" + tx.transaction_id
    assert all(isinstance(v, bytes) for _, v in fast)
    assert hoptrace.current_transaction_id() is None


def test_outside_a_transaction_each_send_gets_its_own(headers_only_mode: str) -> None:
    fast = [produced()[0] for _ in range(3)]
    reference = scoped()
    assert all(names(h) == names(reference) for h in fast)
    ids = [text(h)["baggage"].removeprefix("transaction.id=") for h in fast]
    assert all(TX.fullmatch(i) for i in ids) and len(set(ids)) == 3
    assert all(text(h)["baggage"] == "transaction.id=" + i for h, i in zip(fast, ids, strict=True))
    if headers_only_mode == "no_sdk":  # minted: a trace of its own per send, unsampled
        traces = {text(h)["traceparent"] for h in fast}
        assert len(traces) == 3 and all(t.endswith("-00") for t in traces)
    else:  # with an SDK, only an active span gives a trace
        assert all("traceparent" not in text(h) for h in fast)


def test_user_headers_and_a_carried_transaction_id_keep_their_meaning(
    headers_only_mode: str,
) -> None:
    user = [("app", b"1"), ("x-transaction-id", CARRIED.encode()),
            ("traceparent", USER_TRACEPARENT)]
    before = list(user)
    fast, _ = produced(user)
    reference = scoped(user)
    assert user == before and fast is not user  # a copy: the caller's list is untouched
    assert names(fast) == names(reference)
    values, expected = text(fast), text(reference)
    assert values["app"] == "1"
    assert values["x-transaction-id"] == expected["x-transaction-id"] == CARRIED
    assert values["baggage"] == "transaction.id=" + CARRIED
    # Replaced by a minted trace without an SDK; kept as the user's own with one.
    assert (values["traceparent"] == USER_TRACEPARENT.decode()) == (
        expected["traceparent"] == USER_TRACEPARENT.decode()
    ) == (headers_only_mode == "propagation_only")
    # Inside a transaction, the current one wins over the carried ID, in both paths.
    with hoptrace.transaction() as tx:
        inside, _ = produced(user)
        reference = scoped(user)
    assert inside == reference
    assert text(inside)["x-transaction-id"] == tx.transaction_id


def test_a_malformed_transaction_in_the_context_counts_as_none(headers_only_mode: str) -> None:
    from opentelemetry import context

    from hoptrace.core.context import TRANSACTION_KEY

    token = context.attach(context.set_value(TRANSACTION_KEY, 12345))
    try:
        fresh, _ = produced()
        carried, _ = produced([("x-transaction-id", CARRIED.encode())])
        reference = scoped([("x-transaction-id", CARRIED.encode())])
    finally:
        context.detach(token)
    assert TX.fullmatch(text(fresh)["baggage"].removeprefix("transaction.id="))
    assert text(carried)["x-transaction-id"] == text(reference)["x-transaction-id"] == CARRIED


def test_dict_headers_are_copied(headers_only_mode: str) -> None:
    user = {"app": "1"}
    with hoptrace.transaction() as tx:
        fast, _ = produced(user)
        reference = scoped(user)
    assert user == {"app": "1"} and fast is not user
    assert fast == reference and fast["baggage"] == "transaction.id=" + tx.transaction_id


def test_send_time_only_when_the_caller_set_the_timestamp(headers_only_mode: str) -> None:
    with hoptrace.transaction():
        plain, _ = produced()
        stamped, kwargs = produced(timestamp=1_700_000_000_000)
        reference = scoped(timestamp_given=True)
    assert kwargs["timestamp"] == 1_700_000_000_000
    assert names(stamped) == names(reference) == [*names(plain), "x-hoptrace-sent-ns"]
    assert int(text(stamped)["x-hoptrace-sent-ns"]) > 0


def test_headers_the_client_rejects_go_to_it_unchanged(headers_only_mode: str) -> None:
    _, kwargs = produced("not headers")
    assert kwargs["headers"] == "not headers"
    assert not any(k.startswith("internal_error") for k in hoptrace.diagnostics())


def test_a_non_w3c_propagator_writes_its_own_headers(headers_only_mode: str) -> None:
    from opentelemetry.propagators.b3 import B3MultiFormat

    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(B3MultiFormat())
    try:
        with hoptrace.transaction() as tx:
            fast, _ = produced()
            reference = scoped()
    finally:
        propagate.set_global_textmap(saved)
    assert names(fast) == names(reference)
    values = text(fast)
    assert "traceparent" not in values and "x-b3-traceid" in values
    assert values == text(reference)
    assert values["x-transaction-id"] == tx.transaction_id


def test_with_spans_the_delivery_report_still_ends_the_send_span(spans: Any) -> None:
    assert not _kafka.headers_only()
    reported: list[Any] = []

    class Message:
        def partition(self) -> int:
            return 2

        def offset(self) -> int:
            return 41

    with hoptrace.transaction() as tx:
        headers, kwargs = produced(on_delivery=lambda err, msg: reported.append((err, msg)))
    assert not spans.named("send orders")  # open until the report
    message = Message()
    kwargs["on_delivery"](None, message)
    assert reported == [(None, message)]
    span = spans.one("send orders")
    assert span.attributes["messaging.kafka.offset"] == 41
    assert span.attributes["messaging.destination.partition.id"] == "2"
    values = text(headers)
    assert values["traceparent"] == (
        f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
    )
    assert values["baggage"] == "transaction.id=" + tx.transaction_id


@pytest.fixture(autouse=True)
def _no_context_left_behind() -> Iterator[None]:
    yield
    assert hoptrace.current_transaction_id() is None


class _Record:
    """A consumed message as confluent-kafka hands it over (its accessors are methods)."""

    def __init__(self, headers: Any, offset: int = 7) -> None:
        self._headers, self._offset = headers, offset

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def headers(self) -> Any:
        if self._headers == "raises":
            raise RuntimeError("headers down")
        return self._headers


@pytest.mark.parametrize("mode", ["spans", "no_sdk"])
def test_poll_holds_each_records_scope_and_survives_a_broken_record(
    mode: str, request: pytest.FixtureRequest
) -> None:
    """poll() returns every record; a record's transaction is current until the next poll;
    a record whose scope cannot be made is returned all the same, counted, nothing held."""
    request.getfixturevalue(mode)
    with hoptrace.transaction(transaction_id="a" * 32):
        sent = hoptrace.inject([])
    records = [_Record(sent), _Record("raises", 8), _Record(None, 9)]
    owner = object()
    polled = iter(records)
    seen = []
    for _ in records:
        record = ck._poll(lambda: next(polled), owner, "grp", (), {})
        seen.append((record.offset(), hoptrace.current_transaction_id()))
    ck._poll(lambda: None, owner, "grp", (), {})  # the next poll releases the last one
    assert seen[0] == (7, "a" * 32)
    assert seen[1] == (8, None)
    assert seen[2][0] == 9 and seen[2][1] is not None and seen[2][1] != "a" * 32
    assert hoptrace.diagnostics().get("internal_error.kafka.consume") == 1
