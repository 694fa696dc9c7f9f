"""Instruction counts of hoptrace's per-message paths on the Kafka clients, with no broker.

``*_produce`` / ``*_consume``: confluent-kafka's ``produce()`` / ``poll()``; ``*_aiosend`` /
``*_getone``: aiokafka's ``send()`` / ``getone()``; ``*_kpsend`` / ``*_next``: kafka-python's
``send()`` / ``__next__``. confluent-kafka's cases call its ``_produce`` / ``_poll``; the
others call what ``instrument()`` patches in (without the patcher's own dispatch call). The
plain cases call the client's stand-in as the bench's ``static`` variant calls the client,
with the same three header pairs (a new list per send for aiokafka and kafka-python, as
that variant passes them).

The client's own calls are replaced by no-op Python stand-ins, so only hoptrace's own work is
counted. Each case runs one function N times through ``starmap``, and callgrind counts only
inside ``starmap_next``: the count is the same whatever else the machine does.

    python bench/callgrind_cases.py                  # every case under callgrind, a table
    python bench/callgrind_cases.py prop_produce     # some cases
    python bench/callgrind_cases.py --run CASE 2000  # one case, N calls (what valgrind runs)

``count_many`` counts several cases under one valgrind (``make bench``'s ``instructions``
stage): each case runs in a child forked from an interpreter that imported what they all
import, so each is counted as alone, without paying the imports under valgrind each time.

Modes (the part of a case's name before ``_``): ``plain``; ``prop`` (propagation-only);
``fast`` / ``exact`` (SDK spans, ``fast_spans`` on / off, every span sampled); ``sprop`` /
``sfast`` / ``sexact`` (``ParentBased(TraceIdRatioBased(0.01))`` and a transaction per
message); ``fwd`` (propagation-only, sending from inside a consumed message's handler: a
trace and a transaction current, the hop a service in the middle of a pathway makes; the
``prop`` sends start from an empty context, as a pathway's first producer does). See
bench/results/profile-notes.md for what the figures say.
"""

from __future__ import annotations

import collections
import importlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

CASES = (
    "plain_produce", "plain_consume", "prop_produce", "prop_consume",
    "sprop_produce", "sprop_consume", "sfast_produce", "sfast_consume",
    "sexact_produce", "sexact_consume", "fast_produce", "fast_consume",
    "exact_produce", "exact_consume",
    "plain_getone", "prop_getone", "sfast_getone", "plain_next", "prop_next", "sfast_next",
    "plain_aiosend", "prop_aiosend", "sfast_aiosend", "plain_kpsend", "prop_kpsend",
    "sfast_kpsend", "fwd_produce", "fwd_aiosend", "fwd_kpsend",
    "piece_inject_dict", "piece_inject_list", "piece_write_list", "piece_gen_tx",
    "piece_produce_scope_dict", "piece_produce_scope_list", "piece_read_dict",
    "piece_read_list", "piece_consume_scope_dict", "piece_consume_scope_list",
    "piece_record_scope", "piece_record_scope_open_close",
    "span_child_fast", "span_child_exact", "span_root_fast", "span_root_exact",
)
CALLS = 2000


def _install(mode: str) -> None:
    import hoptrace

    if mode in ("prop", "sprop", "piece", "fwd"):
        hoptrace.configure(propagation_only=True)
        return
    if mode == "plain":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampled = mode.startswith("s") or mode == "span"
    kwargs: dict[str, Any] = {"sampler": ParentBased(TraceIdRatioBased(0.01))} if sampled else {}
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(BatchSpanProcessor(
        Drop(), max_queue_size=1_000_000, schedule_delay_millis=100
    ))
    trace.set_tracer_provider(provider)


class _Message:
    """A confluent-kafka message stand-in."""

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self._headers = headers

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 42

    def key(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def error(self) -> None:
        return None


class _Record:
    """An aiokafka / kafka-python ``ConsumerRecord`` stand-in."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "timestamp_type",
                 "topic")

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.topic = "orders"
        self.partition = 0
        self.offset = 42
        self.key = None
        self.headers = headers
        self.timestamp = 1_700_000_000_000
        self.timestamp_type = 0


class _KafkaConsumer:
    """The consumer object the aiokafka / kafka-python wrappers hold records for."""

    _group_id = "g"
    config: dict[str, Any] = {"group_id": "g"}


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _Future:
    """A send future stand-in: aiokafka's and kafka-python's, as far as hoptrace uses them."""

    def add_done_callback(self, fn: Any) -> None:
        return None

    def add_callback(self, fn: Any, *args: Any) -> None:
        return None

    def add_errback(self, fn: Any, *args: Any) -> None:
        return None


_FUTURE = _Future()


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine that never suspends to the end, without a loop (its stand-ins return
    at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the stand-in never suspends")


def _record_case(mode: str, what: str, pairs: list[tuple[str, bytes]]) -> Callable[[], object]:
    """aiokafka's ``getone()`` (its coroutine run to the end without a loop: the thread's
    scope slot) or kafka-python's ``__next__``, around a stand-in that returns one record."""
    import hoptrace.aiokafka as ak
    import hoptrace.kafka_python as kp

    record = _Record(pairs)
    consumer = _KafkaConsumer()

    async def getone(consumer: Any, *partitions: Any) -> Any:
        return record

    def next_record(consumer: Any) -> Any:
        return record

    if what == "getone":
        traced = getone if mode == "plain" else ak._wrap_getone(getone)
        return lambda: run_coroutine(traced(consumer))
    traced_next = next_record if mode == "plain" else kp._wrap_next(next_record)
    return lambda: traced_next(consumer)


def _send_case(mode: str, what: str, pairs: list[tuple[str, bytes]]) -> Callable[[], object]:
    """aiokafka's ``send()`` (its coroutine run to the end without a loop) or kafka-python's
    ``send()``, around a stand-in for the client's own that returns a future at once.

    The plain client sends the three header pairs as a new list, as the bench's ``static``
    variant does; the traced one sends none (hoptrace writes them).
    """
    import hoptrace.aiokafka as ak
    import hoptrace.kafka_python as kp

    producer = object()

    async def aiosend(producer: Any, topic: str, value: Any = None, key: Any = None,
                      partition: Any = None, timestamp_ms: Any = None,
                      headers: Any = None) -> Any:
        return _FUTURE

    def kpsend(producer: Any, topic: str, value: Any = None, key: Any = None,
               headers: Any = None, partition: Any = None, timestamp_ms: Any = None) -> Any:
        return _FUTURE

    if what == "aiosend":
        if mode == "plain":
            return lambda: run_coroutine(aiosend(producer, "orders", b"x", headers=list(pairs)))
        traced = ak._wrap_send(aiosend)
        return lambda: run_coroutine(traced(producer, "orders", b"x"))
    if mode == "plain":
        return lambda: kpsend(producer, "orders", b"x", headers=list(pairs))
    traced_send = kp._wrap_send(kpsend)
    return lambda: traced_send(producer, "orders", b"x")


def _span_case(case: str) -> Callable[[], object]:
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        TraceFlags,
        set_span_in_context,
    )

    import hoptrace
    from hoptrace.core.spans import start_span

    hoptrace.configure(fast_spans=case.endswith("fast"))
    parent = set_span_in_context(NonRecordingSpan(SpanContext(0xABC, 0xDEF, False,
                                                              TraceFlags(0))))
    context = parent if "child" in case else Context()
    attrs: dict[str, Any] = {"messaging.system": "kafka", "messaging.operation.name": "send",
                             "messaging.operation.type": "send",
                             "messaging.destination.name": "orders", "transaction.id": "c" * 32}
    return lambda: start_span("send orders", context, SpanKind.PRODUCER, attrs)


def _piece_case(case: str, pairs: list[tuple[str, bytes]]) -> Callable[[], object]:
    import hoptrace
    import hoptrace.confluent_kafka as ck
    from hoptrace._config import get_settings
    from hoptrace.core import carriers, hop, ids, propagation

    settings = get_settings()
    as_dict = {k: v.decode() for k, v in pairs}
    message = _Message(pairs)

    def scope(s: Any) -> None:
        s.open()
        s.close()

    return {
        "piece_inject_dict": lambda: hoptrace.inject({}),
        "piece_inject_list": lambda: hoptrace.inject([]),
        "piece_write_list": lambda: carriers.write_headers([], as_dict, copy=False),
        "piece_gen_tx": ids.generate_transaction_id,
        "piece_produce_scope_dict": lambda: scope(
            hop.produce_scope({}, "orders", "kafka", sent_time=False)),
        "piece_produce_scope_list": lambda: scope(
            hop.produce_scope([], "orders", "kafka", sent_time=False)),
        "piece_read_dict": lambda: propagation.read(as_dict, settings),
        "piece_read_list": lambda: propagation.read(pairs, settings),
        "piece_consume_scope_dict": lambda: scope(hop.consume_scope(as_dict, "orders", "kafka")),
        "piece_consume_scope_list": lambda: scope(hop.consume_scope(pairs, "orders", "kafka")),
        "piece_record_scope": lambda: ck.processing(message, "g"),
        "piece_record_scope_open_close": lambda: scope(ck.processing(message, "g")),
    }[case]


def _configure(mode: str, pairs: list[tuple[str, bytes]]) -> None:
    """Configure hoptrace for ``mode``; for ``fwd``, make a consumed message's context current
    for every send that follows (never closed)."""
    import hoptrace
    from hoptrace.core.hop import consume_scope

    hoptrace.configure(fast_spans=not mode.endswith("exact"),
                       propagation_only=mode in ("prop", "sprop", "fwd"))
    if mode == "fwd":
        consume_scope({k: v.decode() for k, v in pairs}, "orders", "kafka").open()


def build(case: str) -> Callable[[], object]:
    """The function one call of ``case`` runs."""
    mode, _, what = case.partition("_")
    _install(mode)
    if mode == "span":
        return _span_case(what)
    import hoptrace
    import hoptrace.confluent_kafka as ck

    flag = b"00" if mode.startswith("s") else b"01"
    pairs = [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-" + flag),
             ("x-transaction-id", b"c" * 32), ("baggage", b"transaction.id=" + b"c" * 32)]
    if mode == "piece":
        return _piece_case(case, pairs)
    if mode != "plain":
        _configure(mode, pairs)
    message = _Message(pairs)
    owner = object()
    transaction = hoptrace.transaction

    def poll(*args: Any) -> Any:
        return message

    if what in ("getone", "next"):
        return _record_case(mode, what, pairs)
    if what in ("aiosend", "kpsend"):
        return _send_case(mode, what, pairs)

    if what == "consume":
        if mode == "plain":
            return lambda: poll(1.0)
        return lambda: ck._poll(poll, owner, "g", (1.0,), {})
    if mode == "plain":
        return lambda: _noop("orders", b"x", headers=pairs)
    if mode.startswith("s"):
        def produce() -> None:
            with transaction("job"):
                ck._produce(_noop, None, "orders", (b"x",), {})
        return produce
    return lambda: ck._produce(_noop, None, "orders", (b"x",), {})


def repeat_calls(one: Callable[[], object], calls: int) -> None:
    """Warm ``one`` up, then call it ``calls`` times in the loop callgrind counts."""
    for _ in range(200):  # warm-up: caches, lazy imports, the probes
        one()
    collections.deque(itertools.starmap(one, itertools.repeat((), calls)), maxlen=0)


def count_in(script: str, case: str, calls: int = CALLS) -> int:
    """Instructions per call of ``case`` of ``script`` (run as ``script --run CASE N``)."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--collect-atstart=no",
         "--toggle-collect=starmap_next", "--callgrind-out-file=/dev/null",
         sys.executable, script, "--run", case, str(calls)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(found.group(1)) // calls


def run_many(build_case: Callable[[str], Callable[[], object]], cases: list[str],
             calls: int, preload: list[str]) -> None:
    """Import ``preload``, then run each case (built, warmed up, called ``calls`` times) in
    a child forked for it, one after another; print ``case PID`` for each.

    Every case starts from the same state, as in an interpreter of its own (no case sees
    what another left: a held scope, an SDK, Celery's signals, a larger heap for the
    collector to walk), without paying for Python's start and the imports again.
    """
    for name in preload:
        importlib.import_module(name)
    for case in cases:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: its own callgrind file (--callgrind-out-file=...%p)
            code = 1
            try:
                repeat_calls(build_case(case), calls)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"case {case} failed (status {status})")
        print(f"case {case} {pid}", flush=True)


def count_many(script: str, cases: list[str], calls: int = CALLS,
               preload: tuple[str, ...] = ()) -> dict[str, int]:
    """Instructions per call of each of ``cases`` of ``script``, under one valgrind.

    :func:`run_many` runs each case in a child of one interpreter that imported
    ``preload`` (the modules every case imports anyway) first: the imports under valgrind
    (20 s and more on this machine) are paid once, and each case is counted alone, as
    :func:`count_in` counts it.
    """
    with tempfile.TemporaryDirectory(prefix="hoptrace-callgrind-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=starmap_next", f"--callgrind-out-file={tmp}/cg.%p",
             sys.executable, script, "--run-many", str(calls), ",".join(preload), *cases],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        pids = dict(re.findall(r"^case (\S+) (\d+)$", out.stdout, re.MULTILINE))
        counts = {}
        for case in cases:
            with open(os.path.join(tmp, f"cg.{pids[case]}")) as f:
                found = re.search(r"^summary: (\d+)", f.read(), re.MULTILINE)
            if found is None:
                raise RuntimeError(f"no count for {case}")
            counts[case] = int(found.group(1)) // calls
    return counts


def cli(argv: list[str], script: str, cases: tuple[str, ...],
        build_case: Callable[[str], Callable[[], object]]) -> int:
    """The command line of a callgrind script: a table of ``cases``, ``--run CASE N``, or
    ``--run-many N MODULE,... CASE...`` (:func:`count_many`)."""
    if argv[:1] == ["--run"]:
        repeat_calls(build_case(argv[1]), int(argv[2]))
        return 0
    if argv[:1] == ["--run-many"]:
        run_many(build_case, argv[3:], int(argv[1]), [m for m in argv[2].split(",") if m])
        return 0
    for case in argv or cases:
        print(f"{case:34} {count_in(script, case) / 1000:8.1f}k instructions per call",
              flush=True)
    return 0


def count(case: str) -> int:
    """Instructions per call of ``case``, by callgrind."""
    return count_in(__file__, case)


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:], __file__, CASES, build))
