"""The Kafka clients' per-message shortcuts give exactly what the general path gives.

A send without headers (kafka-python's ``send()``, aiokafka's, confluent-kafka's
``produce()``) gets its ``(name, bytes)`` pairs from the C writer: ``write_common`` appends
them to an empty list, ``pairs_of`` turns a dict of values into them. A consumed record's
message ID comes from ``record_id``, and ``consumer_record_scope`` builds the record's scope
without the class call. Each is compared here with the Python it replaces, over many inputs
of every shape, hostile ones included (non-ASCII, lone surrogates, subclasses, ints out of
range, equal header names, values whose truth test raises).
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from typing import Any

import pytest
from opentelemetry.context import Context, attach, detach
from test_send_attach import (  # noqa: F401  (spanless: a fixture)
    _INVALID,
    FRESH_SETTINGS,
    fresh_send,
    spanless,
)

import hoptrace
from hoptrace import _kafka
from hoptrace import kafka_python as hop_kafka_python
from hoptrace.core import hop, propagation

try:
    from hoptrace import _speedups  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a build without the C module
    _speedups = None

needs_c = pytest.mark.skipif(_speedups is None, reason="hoptrace._speedups is not built")


class Text(str):
    """A str subclass (its own encode is never the one used)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"not this"


class Number(int):
    """An int subclass with its own text."""

    def __str__(self) -> str:
        return "number"


class Truthless:
    """A flag whose truth test raises."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


def outcome(call: Any, *args: Any) -> Any:
    """What ``call(*args)`` returns (with each item's types) or raises."""
    try:
        value = call(*args)
    except Exception as exc:
        return ("raised", type(exc), exc.args)
    if isinstance(value, list):
        return ("list", value, [tuple(map(type, item)) if type(item) is tuple else type(item)
                                for item in value])
    return ("value", value, type(value))


# ---------------------------------------------------------------- pairs_of ---

VALUES = ["", "x", "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "é", "\U0001f600", "\udc80",
          "a\x00b", Text("t"), 1, None, b"v", 2.5]
NAMES = ["traceparent", "baggage", "", "é", 1, None, ("t",), Text("n")]


def value_dicts(seed: int) -> list[Any]:
    """Dicts of header values, every one of VALUES among them, and a few non-dicts."""
    rng = random.Random(seed)
    dicts: list[Any] = [{}, *({"k": value} for value in VALUES)]
    for _ in range(300):
        size = rng.randrange(1, 5)
        names = rng.sample(NAMES, size)
        pool = VALUES[:8] if rng.random() < 0.7 else VALUES
        dicts.append({name: rng.choice(pool) for name in names})
    return [*dicts, OrderedDict(a="x"), type("D", (dict,), {})(a="x"), [("a", "x")], "ab",
            None, 3]


def comprehension(values: Any) -> list[tuple[Any, bytes]]:
    return [(key, str.encode(value)) for key, value in values.items()]


@needs_c
@pytest.mark.parametrize("seed", range(3))
def test_pairs_of_is_the_comprehension_or_none(seed: int) -> None:
    handled = 0
    for values in value_dicts(seed):
        got = outcome(_speedups.pairs_of, values)
        if got == ("value", None, type(None)):  # refused: anything but str values in a dict
            assert type(values) is not dict or not all(isinstance(v, str)
                                                      for v in values.values()), values
            continue
        handled += 1
        assert got == outcome(comprehension, values), values
    assert handled > 100


@pytest.mark.parametrize("seed", range(3))
def test_new_pairs_is_the_comprehension(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With or without the C call, the same pairs or the same error, for any dict."""
    dicts = [d for d in value_dicts(seed) if isinstance(d, dict)]
    fast = [outcome(_kafka._new_pairs, values) for values in dicts]
    monkeypatch.setattr(_kafka, "_pairs_of", None)
    assert fast == [outcome(_kafka._new_pairs, values) for values in dicts]
    assert fast == [outcome(comprehension, values) for values in dicts]


# ------------------------------------------------- write_common into a list ---

TRACE_IDS = [None, 0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**127 + 5, 2**128 - 1,
             0x0123456789ABCDEF0FEDCBA987654321, 2**128, -1, True, Number(5), 1.0]
SPAN_IDS = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, Number(7)]
FLAGS = [False, True, 0, 1, Truthless()]
TX_KEYS = ["x-transaction-id", None, "traceparent", "baggage", "x-hoptrace-sent-ns",
           b"x-transaction-id", Text("x-transaction-id")]
TRANSACTIONS = ["c" * 32, "é" * 4, "\udc80", Text("t" * 8), "ab"]
PREFIXES = ["transaction.id=", None, "é=", Text("tx=")]
SENT_KEYS = [None, "x-hoptrace-sent-ns", "traceparent", "x-transaction-id"]


def write_args(rng: random.Random) -> tuple[Any, ...]:
    """write_common's arguments after ``values``: each the common one half of the time."""
    def pick(pool: list[Any]) -> Any:
        return pool[0] if rng.random() < 0.5 else rng.choice(pool)

    return (rng.choice(TRACE_IDS) if rng.random() < 0.5 else rng.getrandbits(128),
            rng.choice(SPAN_IDS) if rng.random() < 0.5 else rng.getrandbits(64),
            pick(FLAGS), "traceparent", pick(TX_KEYS), pick(TRANSACTIONS), "baggage",
            pick(PREFIXES), pick(SENT_KEYS))


def timeless(pairs: list[Any], sent_key: Any) -> list[Any]:
    return [(k, b"<time>" if k == sent_key and sent_key is not None else v) for k, v in pairs]


@needs_c
@pytest.mark.parametrize("seed", range(4))
def test_write_common_into_a_list_is_the_dict_encoded(seed: int) -> None:
    """The pairs are the dict's items encoded, in its order; refused, the list stays empty."""
    rng = random.Random(seed)
    listed = 0
    for _ in range(1500):
        args = write_args(rng)
        values: dict[Any, Any] = {}
        pairs: list[Any] = []
        in_dict = outcome(_speedups.write_common, values, *args)
        in_list = outcome(_speedups.write_common, pairs, *args)
        sent_key = args[-1]
        if in_list[0] == "raised":
            assert in_dict[0] == "raised" and in_dict[1] is in_list[1], args
            continue
        if in_list[1] is False:
            assert pairs == [], args
            names = [n for n, on in ((args[3], args[0] is not None), (args[4], True),
                                     (args[6], args[7] is not None), (sent_key, True))
                     if on and n is not None]
            # Refused only where a dict write fails or would differ as pairs.
            assert in_dict[1] is not True or (
                len(set(names)) < len(names) or not all(type(n) is str for n in names)
                or not args[5].isascii() or not (args[7] is None or args[7].isascii())
            ), args
            continue
        listed += 1
        assert in_dict == ("value", True, bool), args
        assert timeless(pairs, sent_key) == timeless(comprehension(values), sent_key), args
        assert [tuple(map(type, p)) for p in pairs] == [(type(k), bytes) for k in values]
    assert listed > 200


@needs_c
def test_write_common_formats_every_id_as_python_does() -> None:
    """The IDs' halves (one conversion for a 128-bit trace ID): the f-string's hex digits."""
    rng = random.Random(7)
    ids = [t for t in TRACE_IDS if type(t) is int] + [rng.getrandbits(bits) for bits in
                                                      (8, 63, 64, 65, 100, 127, 128) * 20]
    for trace_id, span_id in itertools.product(ids, [s for s in SPAN_IDS if type(s) is int]):
        values: dict[str, str] = {}
        done = _speedups.write_common(values, trace_id, span_id, False, "traceparent",
                                      "x-transaction-id", "c" * 32, "baggage", None, None)
        fits = 0 <= trace_id < 2**128 and 0 <= span_id < 2**64
        assert done is fits, (trace_id, span_id)
        if fits:
            assert values["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-00"


# -------------------------------------------------------- a fresh Kafka send ---

#: The C module's pairs_of, as loaded (the comparisons switch it off and on again).
PAIRS_OF = _kafka._pairs_of


def fresh_kafka_send(sent_time: bool, state: Any, fast: bool,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """test_send_attach's ``fresh_send`` through kafka-python's and aiokafka's
    ``attached_send(None, ...)``: the pairs they send, the context, the next random draw."""
    monkeypatch.setattr(_kafka, "_pairs_of", PAIRS_OF if fast else None)
    # (attached_send calls _kafka's own name for the real unrecorded_send.)
    monkeypatch.setattr(hop, "unrecorded_send",
                        lambda carrier, sent, copy: _kafka.attached_send(carrier, None, sent))
    return fresh_send(sent_time, state, fast, monkeypatch)


@pytest.mark.parametrize("options", FRESH_SETTINGS,
                         ids=lambda o: ",".join(map(str, o.items())) or "defaults")
def test_a_fresh_kafka_send_is_what_the_general_path_makes(
    spanless: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    hoptrace.configure(propagation_only=spanless == "propagation_only", **options)
    monkeypatch.setitem(_INVALID, "now", True)
    listed = 0
    writer = propagation._write_common

    def counted(values: Any, *args: Any) -> Any:
        nonlocal listed
        done = writer(values, *args)  # type: ignore[misc]
        listed += type(values) is list and done
        return done

    if writer is not None:
        monkeypatch.setattr(propagation, "_write_common", counted)
    for seed, sent_time in itertools.product(range(25), (True, False)):
        random.seed(seed)
        state = random.getstate()
        got = fresh_kafka_send(sent_time, state, True, monkeypatch)
        want = fresh_kafka_send(sent_time, state, False, monkeypatch)
        assert got == want, (seed, sent_time)
        assert got["inside"][0] is list
    if writer is not None and not options.get("max_baggage_bytes"):
        # Every send but the first after configure() (render's, which caches the header
        # names the shortcut reads) wrote its pairs in C.
        assert listed >= 49


def test_a_fresh_kafka_send_with_a_writer_that_refuses_lists(
    spanless: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A C writer that refuses the list (a build from before it took one): Python's dict,
    then its pairs: what the general path sends."""
    hoptrace.configure(propagation_only=spanless == "propagation_only")
    writer = propagation._write_common
    refused = 0

    def dicts_only(values: Any, *args: Any) -> Any:
        nonlocal refused
        if type(values) is list:
            refused += 1
            return False
        return writer(values, *args)  # type: ignore[misc]

    monkeypatch.setattr(propagation, "_write_common", dicts_only if writer else None)
    for seed, sent_time in itertools.product(range(10), (True, False)):
        random.seed(seed)
        state = random.getstate()
        got = fresh_kafka_send(sent_time, state, True, monkeypatch)
        assert got == fresh_kafka_send(sent_time, state, False, monkeypatch), seed
        assert "baggage" in dict(got["inside"][1])
    assert refused >= 19 or writer is None


def test_a_fresh_kafka_send_with_a_writer_that_fails(
    spanless: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A writer that raises half-way: counted, an empty list sent, the context attached."""
    hoptrace.configure(propagation_only=spanless == "propagation_only")

    def broken(values: Any, *args: Any) -> bool:
        if isinstance(values, list):
            values.append(("traceparent", b"half"))
        raise RuntimeError("writer broke")

    monkeypatch.setattr(propagation, "_write_common", broken)
    got = fresh_kafka_send(True, random.getstate(), True, monkeypatch)
    assert got["inside"][1] == [] and got["diagnostics"]
    assert got["inside"][2][3] is not None  # the transaction ID, current during the call


# ------------------------------------------------------------- record scope ---

TOPICS: list[Any] = ["orders", "", "a-b.c_d", "é", "\udc80", Text("t"), None, b"t", 5]
NUMBERS: list[Any] = [0, 1, -1, 42, 2**31, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**100,
                      True, False, Number(3), 1.5, None, "7"]


@needs_c
def test_record_id_is_the_f_string_or_none() -> None:
    handled = 0
    for topic, partition, offset in itertools.product(TOPICS, NUMBERS, NUMBERS):
        got = _speedups.record_id(topic, partition, offset)
        simple = (type(topic) is str and topic.isascii() and type(partition) is int
                  and type(offset) is int and -2**63 <= partition < 2**63
                  and -2**63 <= offset < 2**63)
        if got is None:
            assert not simple, (topic, partition, offset)
            continue
        handled += 1
        assert type(got) is str and got == f"{topic}-{partition}@{offset}"
    assert handled > 100


class Record:
    """An aiokafka / kafka-python ``ConsumerRecord`` stand-in."""

    def __init__(self, topic: Any, partition: Any, offset: Any, key: Any, headers: Any,
                 timestamp: Any, timestamp_type: Any) -> None:
        self.topic, self.partition, self.offset, self.key = topic, partition, offset, key
        self.headers, self.timestamp, self.timestamp_type = headers, timestamp, timestamp_type


def records() -> list[Record]:
    rng = random.Random(3)
    out = []
    for _ in range(400):
        out.append(Record(
            rng.choice(TOPICS), rng.choice(NUMBERS), rng.choice(NUMBERS),
            rng.choice([None, b"k", "k", b"\xff", Text("k")]),
            rng.choice([None, [], [("traceparent", b"x")], {"a": "b"}]),
            rng.choice([None, 0, -5, 1_700_000_000_000, Number(9)]),
            rng.choice([0, 1, 2, -1, None])))
    return out


def fields(scope: Any) -> dict[str, Any]:
    names = [n for cls in type(scope).__mro__ for n in getattr(cls, "__slots__", ())]
    out = {}
    for name in names:
        try:
            value = getattr(scope, name)
        except AttributeError:
            value = "<unset>"
        # (a bound method of the scope: the same function)
        out[name] = getattr(value, "__func__", value)
    return out


@pytest.mark.parametrize("group", [None, "g"])
def test_consumer_record_scope_is_the_class_call(
    group: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same fields as ``RecordScope(...)``, with or without the C message ID."""
    recs = records()

    def general(r: Record) -> dict[str, Any]:
        return fields(_kafka.RecordScope(
            r.topic, r.partition, r.offset, r.key, r.headers,
            r.timestamp if r.timestamp_type in (0, 1) else None, group))

    fast = [fields(_kafka.consumer_record_scope(r, group)) for r in recs]
    for r, got in zip(recs, fast, strict=True):
        assert got["_message_id"] == f"{r.topic}-{r.partition}@{r.offset}"
        assert type(_kafka.consumer_record_scope(r, group)) is _kafka.RecordScope
    monkeypatch.setattr(_kafka, "_record_id", None)
    assert fast == [general(r) for r in recs]
    assert fast == [fields(_kafka.consumer_record_scope(r, group)) for r in recs]


def test_kafka_python_next_holds_the_record_in_its_trace(
    spanless: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """kafka-python's ``next()``: the group from the config (or none), the record's trace
    current after it returns; a consumer whose config fails still gets its record."""
    hoptrace.configure(propagation_only=spanless == "propagation_only")
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    record = Record("orders", 1, 7, None, [("traceparent", tp.encode()),
                                           ("x-transaction-id", b"c" * 32)], 0, 0)
    seen: list[Any] = []

    class Consumer:
        config: Any = {"group_id": "g"}

    class Broken:
        @property
        def config(self) -> Any:
            raise RuntimeError("no config")

    real = _kafka.consumer_record_scope

    def spied(rec: Any, group: Any) -> Any:
        seen.append(group)
        return real(rec, group)

    monkeypatch.setattr(hop_kafka_python, "_record_scope", spied)
    wrapped = hop_kafka_python._wrap_next(lambda consumer: record)
    for consumer, group in ((Consumer(), "g"), (Broken(), None)):
        hoptrace.reset_diagnostics()
        token = attach(Context())
        try:
            assert wrapped(consumer) is record
            assert hoptrace.current_transaction_id() == "c" * 32
            from opentelemetry import trace
            assert trace.get_current_span().get_span_context().trace_id == int("a" * 32, 16)
            hoptrace.kafka_python.close_scope(consumer)
            assert hoptrace.current_transaction_id() is None
        finally:
            detach(token)
        assert seen.pop() == group
        assert not hoptrace.diagnostics()
