"""The redelivery memory's per-delivery write: ``DeliveryMemory.keep`` and ``_amqp``'s inline
``remember``.

Every AMQP delivery that makes a span is remembered (its message key → the span context it
ran in), so that a later redelivery or dead-lettered copy links to it. ``_amqp`` reads that
span context by index (``_SC_TUPLE``) and hands the entry to ``DeliveryMemory.keep``, which
on an interpreter with a GIL runs its ``OrderedDict`` steps without the lock. Compared here:

* a delivery through pika's consumer callback three ways: a first delivery kept by
  ``_speedups.keep_delivery`` (its key and ``keep`` in one C call), by the index read, and by
  ``memory.remember``'s property reads, over carriers (hostile ones too), ambient contexts,
  the broker's flag, ``x-death`` headers and samplers that drop, keep or that hoptrace does
  not know: everything the handler saw and the memory left, in order, entry types included;
* ``keep_delivery`` alone against ``message_key`` and ``keep`` over random headers, message
  IDs, span contexts and memory sizes (it declines, changing nothing, exactly where the types
  are not the ones it reads);
* ``keep`` without the lock against the locked steps over random key sequences (a key seen
  again moves last; the oldest beyond the size goes first);
* ``keep`` from many threads at once: nothing raises, the size bound holds;
* the end-to-end promise: a redelivery processed under a sampled ambient span still links
  to its dropped first delivery's span, through the memory.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import OrderedDict
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_amqp_sampled_delivery import _delivered
from test_consume_dropped_fast_path import SAMPLERS, install  # noqa: F401
from test_consume_fast_path import AMBIENTS, CARRIERS, _ambient, _fuzzed

import hoptrace
from hoptrace import _amqp, _redelivery
from hoptrace import pika as hop_pika
from hoptrace.core import hop
from hoptrace.core.context import get_current

TP = "00-" + "a" * 32 + "-" + "b" * 16 + "-00"
DEATH = [{"queue": "q", "reason": "rejected", "count": 1}]
HEADERS: list[Any] = [
    *CARRIERS, *_fuzzed(8),
    {"traceparent": TP, "baggage": "transaction.id=" + "c" * 32},
    {"traceparent": TP, "x-death": DEATH},
    {"traceparent": TP.replace("-00", "-01")},
    {"traceparent": TP, "x-hoptrace-sent-ns": "1700000000000000000"},
    {"x-death": DEATH},
]


def _memory() -> list[Any]:
    """The memory's entries in order, with the type of each entry's fields."""
    return [(key, entry, tuple(type(field) for field in entry))
            for key, entry in _amqp.memory._seen.items()]


#: How a delivery is remembered: ``_speedups.keep_delivery`` for a first delivery (else the
#: index read), the index read alone, or ``memory.remember``'s property reads.
MODES = ("c", "index", "general")
KEEP_C = _amqp._keep_c


def _one(mode: str, headers: Any, redelivered: Any, ambient: str, ids: Any,
         exporter: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(_amqp, "_SC_TUPLE", mode != "general")
    monkeypatch.setattr(_amqp, "_keep_c", KEEP_C if mode == "c" else None)
    with _ambient(ambient):
        got = _delivered(True, headers, redelivered, ids, exporter, monkeypatch)
    got["memory in order"] = _memory()
    return got


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_inline_remember_keeps_what_remember_keeps(
    sampler: str, install: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    assert _amqp._SC_TUPLE  # (else the comparison compares one path with itself)
    assert KEEP_C is not None or _amqp._propagation._speedups is None
    exporter, ids = install(SAMPLERS[sampler]())
    hoptrace.configure(fast_spans=True)
    remembered = 0
    for headers, redelivered, ambient in itertools.product(
        HEADERS, (False, True, None), AMBIENTS
    ):
        got = [_one(mode, headers, redelivered, ambient, ids, exporter, monkeypatch)
               for mode in MODES]
        assert got[0] == got[2], (headers, redelivered, ambient)
        assert got[1] == got[2], (headers, redelivered, ambient)
        remembered += len(got[0]["memory in order"]) > 1  # (one is _delivered's own entry)
    assert remembered > 0


# ------------------------------ _speedups.keep_delivery against the Python steps ---

_SENT = "x-hoptrace-sent-ns"


class _SubContext(SpanContext):
    """A SpanContext subclass: not the exact type keep_delivery reads by index."""


def _texts(rng: random.Random) -> Any:
    return rng.choice((None, TP, TP.replace("a", "d"), "", b"bytes", 7, "é" * 3))


def _random_headers(rng: random.Random) -> Any:
    headers: dict[Any, Any] = {}
    for name in ("traceparent", _SENT, "x-death", b"traceparent", "other"):
        if rng.random() < 0.6:
            headers[name] = _texts(rng)
    roll = rng.random()
    if roll < 0.05:
        return type("Sub", (dict,), {})(headers)
    if roll < 0.08:
        return list(headers.items())
    if roll < 0.1:
        return None
    return headers


def _random_active(rng: random.Random) -> Any:
    trace_id = rng.choice((0, 1, 2**128 - 1, rng.getrandbits(128)))
    span_id = rng.choice((0, 1, 2**64 - 1, rng.getrandbits(64)))
    flags = TraceFlags(rng.choice((0, 1, 3)))
    roll = rng.random()
    if roll < 0.05:
        return _SubContext(trace_id, span_id, False, flags)
    if roll < 0.07:
        return None
    return SpanContext(trace_id, span_id, rng.random() < 0.5, flags)


def _python_keep(memory: Any, headers: Any, text_id: Any, sent_header: str, active: Any) -> None:
    """What open_delivery_fields does for a first delivery without keep_delivery."""
    key = _redelivery.message_key(headers, text_id)
    if key is not None and active is not None and active.is_valid:
        memory.keep(key, (active.trace_id, active.span_id, int(active.trace_flags)))


@pytest.mark.skipif(KEEP_C is None, reason="the C module is not built (HOPTRACE_PURE_PYTHON)")
@pytest.mark.parametrize("size", [0, 1, 3, 40])
def test_keep_delivery_keeps_what_the_python_steps_keep(size: int) -> None:
    from hoptrace.core import settings as _settings

    assert _settings.get_settings().sent_time_header == _SENT  # (what message_key reads)
    rng = random.Random(size)
    c_memory, py_memory = _redelivery.DeliveryMemory(size), _redelivery.DeliveryMemory(size)
    declined = kept = 0
    for _ in range(3000):
        headers, active = _random_headers(rng), _random_active(rng)
        text_id = rng.choice((None, "m-1", "m-2", "", b"m-1"))
        done = KEEP_C(c_memory._seen, c_memory._size, headers, text_id, _SENT, active,
                      SpanContext)
        exact = (type(headers) is dict and type(active) is SpanContext
                 and (text_id is None or type(text_id) is str))
        assert done is exact, (headers, text_id, active)  # declines all else, and only that
        if not done:
            declined += 1
            _python_keep(c_memory, headers, text_id, _SENT, active)
        _python_keep(py_memory, headers, text_id, _SENT, active)
        assert list(c_memory._seen.items()) == list(py_memory._seen.items()), (headers, active)
        assert all(type(f) is int for e in c_memory._seen.values() for f in e)
        kept += len(c_memory._seen) > 0
    assert declined > 100 and (kept > 1000 or size == 0)


@pytest.mark.skipif(KEEP_C is None, reason="the C module is not built (HOPTRACE_PURE_PYTHON)")
def test_keep_delivery_declines_what_it_does_not_know() -> None:
    memory = _redelivery.DeliveryMemory(4)
    active = SpanContext(5, 6, False, TraceFlags(1))
    headers = {"traceparent": TP}
    for seen, size in ((dict(), 4), (type("O", (OrderedDict,), {})(), 4),
                       (memory._seen, 4.0), (memory._seen, -1)):
        assert KEEP_C(seen, size, headers, None, _SENT, active, SpanContext) is False
        assert len(seen) == 0
    assert KEEP_C(memory._seen, 4, headers, None, 7, active, SpanContext) is False
    assert KEEP_C(memory._seen, 4, headers, None, _SENT, active, int) is False
    assert len(memory._seen) == 0
    with pytest.raises(TypeError):
        KEEP_C(memory._seen, 4, headers)
    assert KEEP_C(memory._seen, 4, headers, None, _SENT, active, SpanContext) is True
    assert memory.links(hash((TP, None, None)), headers, True)[0].context.span_id == 6  # type: ignore[index]


def _locked(size: int, keys: list[int]) -> list[Any]:
    memory = _redelivery.DeliveryMemory(size)
    for n, key in enumerate(keys):
        memory._keep(key, (key, n + 1, n & 1))
    return list(memory._seen.items())


def _lock_free(size: int, keys: list[int]) -> list[Any]:
    memory = _redelivery.DeliveryMemory(size)
    for n, key in enumerate(keys):
        memory.keep(key, (key, n + 1, n & 1))
    return list(memory._seen.items())


@pytest.mark.parametrize("size", [0, 1, 2, 5, 50])
def test_keep_without_the_lock_keeps_what_the_locked_steps_keep(size: int) -> None:
    assert _redelivery._LOCK_FREE  # (this interpreter has a GIL)
    rng = random.Random(size)
    for _ in range(200):
        keys = [rng.randrange(12) for _ in range(rng.randrange(40))]
        assert _lock_free(size, keys) == _locked(size, keys), keys


def test_keep_with_the_lock_on_a_free_threaded_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redelivery, "_LOCK_FREE", False)
    rng = random.Random(7)
    for _ in range(50):
        keys = [rng.randrange(8) for _ in range(30)]
        assert _lock_free(4, keys) == _locked(4, keys)
        memory = _redelivery.DeliveryMemory(4)
        memory.keep(3, (3, 4, 0))
        assert memory.links(3, None, True)[0].context.span_id == 4  # type: ignore[index]


def test_keep_from_many_threads_never_raises_and_stays_bounded() -> None:
    memory = _redelivery.DeliveryMemory(50)
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for n in range(4000):
                key = rng.randrange(120)
                memory.keep(key, (key, n + 1, 0))
                memory.links(rng.randrange(120), None, True)
        except BaseException as exc:  # (what the test looks for)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert 0 < len(memory) <= 50
    assert all(entry[0] == key for key, entry in memory._seen.items())


class _Method:
    def __init__(self, redelivered: Any) -> None:
        self.exchange, self.routing_key, self.delivery_tag = "orders", "k", 7
        self.redelivered = redelivered


class _Properties:
    def __init__(self, headers: Any) -> None:
        self.headers, self.message_id, self.correlation_id = headers, "m-9", None
        self.timestamp = None


def test_a_redelivery_under_a_sampled_span_links_to_its_dropped_first_delivery(
    install: Any  # noqa: F811
) -> None:
    """The first delivery's span is a dropped child with the fixed first-attempt ID; its
    redelivery, processed under a sampled ambient span (so its span records, the producer a
    link), links to that first attempt only through the memory."""
    exporter, _ = install(ParentBased(TraceIdRatioBased(0.01)))
    _amqp.memory.forget_all()
    headers = {"traceparent": TP, "baggage": "transaction.id=" + "c" * 32}
    seen: list[Any] = []

    def handler(channel: Any, method: Any, properties: Any, body: Any) -> None:
        seen.append(trace.get_current_span().get_span_context())

    callback = hop_pika._wrap_callback("q", handler)
    callback(object(), _Method(False), _Properties(dict(headers)), b"body")
    first = seen[-1]
    remote = SpanContext(int("a" * 32, 16), int("b" * 16, 16), True, TraceFlags(0))
    assert first.span_id == hop.first_attempt_span_id(remote, "orders:k:q")
    assert exporter.get_finished_spans() == ()
    sampled = NonRecordingSpan(SpanContext(0x99, 0x98, False, TraceFlags(1)))
    with trace.use_span(sampled):  # (a request's sampled span, current)
        before = get_current()
        callback(object(), _Method(True), _Properties(dict(headers)), b"body")
        assert get_current() is before
    process, = (s for s in exporter.get_finished_spans() if s.name.startswith("process"))
    redelivery = [link for link in process.links
                  if dict(link.attributes or {}).get("hoptrace.link.reason") == "redelivery"]
    assert [(link.context.trace_id, link.context.span_id) for link in redelivery] == [
        (first.trace_id, first.span_id)]
    assert seen[-1].trace_id == 0x99 and process.context.trace_id == 0x99


def test_an_ordered_dict_is_what_keep_orders() -> None:
    """(What the comparison above leans on: the locked steps are an LRU.)"""
    assert _locked(2, [1, 2, 1, 3]) == list(OrderedDict([(1, (1, 3, 0)), (3, (3, 4, 1))]).items())


class _Hostile(str):
    """A header name equal to another, whose comparison runs Python code (here, taking the
    traceparent out of the headers while keep_delivery looks up the send-time header)."""

    headers: dict[Any, Any] = {}
    reuse: list[str] = []

    def __hash__(self) -> int:
        return hash(_SENT)

    def __eq__(self, other: object) -> bool:
        gone = type(self).headers.pop("traceparent", None)
        if gone is not None:  # (its memory reused at once, were it freed)
            size = len(gone)
            del gone
            type(self).reuse = ["".join(["z"] * size) for _ in range(8)]
        return str.__eq__(self, other)


@pytest.mark.skipif(KEEP_C is None, reason="the C module is not built (HOPTRACE_PURE_PYTHON)")
def test_keep_delivery_holds_what_it_found_while_python_code_runs() -> None:
    """A header key of a str subclass makes the lookups run Python code: the value found
    first must stay alive (it is hashed into the key afterwards)."""
    memory = _redelivery.DeliveryMemory(4)
    active = SpanContext(5, 6, False, TraceFlags(1))
    for _ in range(50):
        headers: dict[Any, Any] = {"traceparent": "".join(["00-", "a" * 32, "-", "b" * 16, "-01"])}
        headers[_Hostile("x-other")] = "v"  # (same hash as the send-time header's name)
        _Hostile.headers = headers
        expected = hash((headers["traceparent"], None, "m-1"))
        assert KEEP_C(memory._seen, 4, headers, "m-1", _SENT, active, SpanContext) is True
        assert "traceparent" not in headers  # (the comparison ran)
        assert list(memory._seen.items())[-1] == (expected, (5, 6, 1))


def test_a_failure_remembering_an_opened_delivery_keeps_the_scope(
    install: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Remembering runs after the scope opened (its context attached): a failure there is
    counted and the scope still returned, so its caller closes it and the context goes."""
    install(ParentBased(TraceIdRatioBased(0.01)))

    def fails(*args: Any) -> Any:
        raise RuntimeError("memory failed")

    for keep, remembered in ((fails, _amqp._remembered), (None, fails)):
        monkeypatch.setattr(_amqp, "_keep_c", keep)
        monkeypatch.setattr(_amqp, "_remembered", remembered)
        hoptrace.reset_diagnostics()
        before = get_current()
        scope = _amqp.open_delivery_fields(
            {"traceparent": TP}, "rabbitmq", "ex", "k", "q", "m-1", 7, None, None, False)
        assert scope is not None and scope.span is not None
        assert get_current() is not before  # (open: the handler's context attached)
        scope.close()
        assert get_current() is before
        assert hoptrace.diagnostics().get("internal_error.amqp.open_delivery") == 1
