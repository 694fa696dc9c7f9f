"""Per-edge metrics through the OpenTelemetry Metrics API, recorded by the hop scopes.

Every integration gets them because :mod:`hoptrace.core.hop` calls this module from its
produce and consume scopes (and the HTTP edge and Celery add the origin time, retries and
dead letters). See docs/metrics.md for each metric, its attributes and buckets.

Cost: with no ``MeterProvider`` set (the API's proxy) or a no-op one, each call reads one
module attribute, compares it and returns; no attribute dict is built. The proxy provider
becomes the real one whenever the application sets it, so "off" is never cached for good:
the instruments are rebuilt the first time a scope sees another provider. With a provider,
instruments are made once and attribute dicts are cached per edge (and per edge and
``error.type``), so every record of an edge passes the same dict. Counters are hoptrace's
own locked tallies, read by observable counters at collection. An SDK histogram records
through :mod:`hoptrace.core._sdk_metrics`, which feeds the SDK's own aggregations for that
dict directly after its first record, with the same exported data.

Cardinality: the attributes are the system, operation, destination, consumer group, server
address and port, and Celery's task name; never a message or transaction ID. Temporary
RabbitMQ queues (``amq.gen-…``) are folded into one destination.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from time import perf_counter_ns as _perf_counter_ns
from typing import Any, Final, TypeAlias

from opentelemetry import metrics as otel_metrics
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider, Observation

from . import diagnostics, semconv
from .context import BAGGAGE_KEY
from .settings import METRIC_NAMES, Settings, get_settings, metric_on, on_change

try:  # the global provider, read without a call; the public getter is the fallback
    from opentelemetry.metrics import _internal as _api
except ImportError:  # pragma: no cover - another API layout
    _api = None  # type: ignore[assignment]

# Metric names (the same strings as settings.METRIC_NAMES).
SENT_MESSAGES: Final = "messaging.client.sent.messages"
CONSUMED_MESSAGES: Final = "messaging.client.consumed.messages"
OPERATION_DURATION: Final = "messaging.client.operation.duration"
PROCESS_DURATION: Final = "messaging.process.duration"
QUEUE_WAIT: Final = "hoptrace.queue_wait"
CLOCK_SKEW: Final = "hoptrace.queue_wait.clock_skew"
PATHWAY: Final = "hoptrace.pathway.duration"
RETRIES: Final = "hoptrace.retries"
DEAD_LETTERS: Final = "hoptrace.dead_letters"

# Attributes beyond the messaging ones (semconv.py holds those).
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
RETRY_KIND: Final = "hoptrace.retry.kind"
DEAD_LETTER_KIND: Final = "hoptrace.dead_letter.kind"

#: The baggage entry carrying when the transaction began (ms since the epoch).
ORIGIN_BAGGAGE_KEY: Final = "hoptrace.origin_ms"

#: The messaging semantic conventions' advisory buckets for their duration histograms (s).
SEMCONV_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                          5.0, 7.5, 10.0)
#: Queue wait and pathway buckets (s): 100 µs to 10 minutes.
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: Headers a broker adds when it dead-letters a message (RabbitMQ).
_DEATH_HEADER: Final = "x-death"
#: An origin older than this (ms) is garbage, not a transaction still running.
_MAX_ORIGIN_AGE_MS: Final = 30 * 24 * 3600 * 1000
_MAX_EDGES: Final = 2048

_SEND: Final = 0
_PROCESS: Final = 1
_OTHER: Final = 2
_OP_SEND: Final = semconv.OP_SEND
_OP_PROCESS: Final = semconv.OP_PROCESS

assert set(METRIC_NAMES) == {SENT_MESSAGES, CONSUMED_MESSAGES, OPERATION_DURATION,
                             PROCESS_DURATION, QUEUE_WAIT, CLOCK_SKEW, PATHWAY, RETRIES,
                             DEAD_LETTERS}



#: Whether ``next()`` of an ``itertools.count`` is atomic here (a GIL: no Python code runs
#: within it). A free-threaded build counts through the tally's lock instead.
_ATOMIC_NEXT: Final = bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def _count_of(counter: Any) -> int:
    """How many times ``next()`` was called on ``counter``, an ``itertools.count()``."""
    return int(repr(counter)[6:-1])  # ("count(N)": read without advancing it)


class _Tally:
    """Counts per attribute set, reported by an observable counter at each collection.

    A synchronous SDK counter costs as much per ``add`` as a histogram ``record`` (it copies,
    cleans and hashes the attributes every time); a locked dict increment costs ~1/20th, and
    an edge's own count cell (:meth:`counter`, an ``itertools.count``: one atomic C call, no
    lock) less again. The SDK still exports a monotonic cumulative sum, as for a Counter.
    """

    __slots__ = ("_cells", "_counters", "_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: One count cell per attribute set, in first-seen order.
        self._counts: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        #: id(an edge's cached attribute dict) -> (that dict, its cell): no key hashed per add.
        self._cells: dict[int, tuple[dict[str, Any], list[int]]] = {}
        #: Per attribute set, the edge count cell adding to it (beside its ``_counts`` cell).
        self._counters: dict[tuple[tuple[str, Any], ...], Any] = {}

    def add(self, amount: int, attributes: dict[str, Any]) -> None:
        bound = self._cells.get(id(attributes))
        if bound is not None and bound[0] is attributes:
            lock = self._lock
            lock.acquire()  # (not ``with``: half the instructions, the same release)
            try:
                bound[1][0] += amount
            finally:
                lock.release()
            return
        known = _tally_keys.get(id(attributes))  # an edge's cached dict: its key, built once
        cached = known is not None and known[0] is attributes
        key = known[1] if cached else tuple(attributes.items())  # type: ignore[index]
        with self._lock:
            cell = self._counts.get(key)
            if cell is None:
                cell = self._counts[key] = [0]
            cell[0] += amount
            if cached and len(self._cells) < _MAX_EDGES:
                self._cells[id(attributes)] = (attributes, cell)

    def counter(self, attributes: dict[str, Any]) -> Any:
        """The count cell of an edge's cached attribute dict: ``next(cell)`` adds one to the
        same point as ``add(1, attributes)``. None when there is none to give (a dict not an
        edge's cached one, as many cells as edges already, or no GIL to make it atomic)."""
        known = _tally_keys.get(id(attributes))
        if not _ATOMIC_NEXT or known is None or known[0] is not attributes:
            return None
        key = known[1]
        with self._lock:
            counter = self._counters.get(key)
            if counter is None:
                if len(self._counters) >= _MAX_EDGES:
                    return None
                counter = self._counters[key] = itertools.count()
                self._counts.setdefault(key, [0])  # (hoptrace asks after an add: never made)
            return counter

    def observe(self, _options: Any = None) -> list[Observation]:
        with self._lock:
            counters = self._counters
            counts = [(key, cell[0] if key not in counters
                       else cell[0] + _count_of(counters[key]))
                      for key, cell in self._counts.items()]
        return [Observation(value, dict(key)) for key, value in counts]


class _Instruments:
    """The instruments of one provider; None for each metric switched off."""

    def __init__(self, provider: MeterProvider, settings: Settings) -> None:
        meter = provider.get_meter("hoptrace", _version(), schema_url=semconv.SCHEMA_URL)

        def on(name: str) -> bool:
            return metric_on(settings, name)

        def counter(name: str, description: str) -> Any:
            if not on(name):
                return None
            # One tally per provider and metric, kept across rebuilds (a settings change):
            # the provider keeps the observable counter first made, and its callback.
            try:
                known = _tallies.setdefault(provider, {})
            except TypeError:  # a provider that takes no weak reference
                known = {}
            tally = known.get(name)
            if tally is None:
                tally = known[name] = _Tally()
                meter.create_observable_counter(
                    name, callbacks=[tally.observe], unit="{message}", description=description)
            return tally.add

        def histogram(name: str, description: str, buckets: tuple[float, ...]) -> Any:
            if not on(name):
                return None
            try:  # advisory buckets: API >= 1.23
                made = meter.create_histogram(
                    name, unit="s", description=description,
                    explicit_bucket_boundaries_advisory=list(buckets),
                )
            except TypeError:
                made = meter.create_histogram(name, unit="s", description=description)
            return _recorder(made)

        self.sent = counter(SENT_MESSAGES, "Messages the producer attempted to send.")
        self.consumed = counter(CONSUMED_MESSAGES, "Messages delivered to the application.")
        self.operation = histogram(
            OPERATION_DURATION, "Duration of a send or receive operation.", SEMCONV_BUCKETS)
        self.process = histogram(
            PROCESS_DURATION, "Duration of processing one message.", SEMCONV_BUCKETS)
        self.queue_wait = histogram(
            QUEUE_WAIT, "Time from send to the start of processing, per edge.", LATENCY_BUCKETS)
        self.skew = counter(
            CLOCK_SKEW, "Messages whose send time was after their receipt (wait clamped to 0).")
        self.pathway = histogram(
            PATHWAY, "Time from the start of the transaction to this message's processing.",
            LATENCY_BUCKETS)
        self.retries = counter(RETRIES, "Retried tasks and broker redeliveries.")
        self.dead_letters = counter(DEAD_LETTERS, "Messages dead-lettered or rejected for good.")
        # Where an edge's records may go directly (see _Edge): the counters' tallies, the SDK
        # histograms' lean paths, and what tells that the latter's bindings still hold.
        self.tallies: dict[str, _Tally] = {
            field: add.__self__ for field in _COUNTED if (add := getattr(self, field)) is not None}
        sdk = sys.modules.get(__package__ + "._sdk_metrics")
        leans = {field: lean for field in _TIMED
                 if sdk is not None and isinstance(
                     lean := getattr(getattr(self, field), "__self__", None), sdk.LeanHistogram)}
        firsts = next(iter(leans.values()), None)
        if sdk is not None and firsts is not None and firsts.enabled is not None and all(
                lean.consumer is firsts.consumer and lean.enabled is firsts.enabled
                for lean in leans.values()):
            global _record_one
            _record_one = sdk.record_one
            self.leans: dict[str, Any] = leans
            self.consumer: Any = firsts.consumer
            self.meter_config: Any = firsts.enabled
        else:
            self.leans, self.consumer, self.meter_config = {}, _NO_SDK, _NO_SDK


class _NoSdk:
    """The consumer and meter config of instruments none of which records directly."""

    _reader_storages = None

    class _config:  # (read as the SDK's ``_ProxyMeterConfig._config``)
        is_enabled = True


_NO_SDK: Final = _NoSdk()
_INF: Final = math.inf


def _no_record_one(aggregation: Any, amount: float, attributes: Any, trace_based: bool) -> None:
    raise RuntimeError("no SDK histogram records directly")  # pragma: no cover - never bound


#: ``_sdk_metrics.record_one`` once an SDK histogram may record directly (imported then).
_record_one: Callable[[Any, float, Any, bool], None] = _no_record_one
#: The instruments an edge counts, and those it times (the fields of _Instruments and _Edge).
_COUNTED: Final = ("sent", "consumed")
_TIMED: Final = ("operation", "process", "queue_wait", "pathway")


class _Edge:
    """One edge's attribute dict and, for the instruments ``live``, where its records go.

    Bound lazily, per instrument: after an edge's first count through its tally, its own
    count cell (:meth:`_Tally.counter`); after its first record through an SDK histogram's
    lean path, the one aggregation that path feeds for the edge's dict
    (:meth:`LeanHistogram.single`), which the hooks then feed with
    :func:`~hoptrace.core._sdk_metrics.record_one`, exactly as that path would. Before each
    use the hooks check what the lean path checks (the instruments are ``live``, the
    readers' storages are those the aggregations were found in, the meter is enabled, the
    value is finite and not negative); when not, a record goes the general way.
    """

    __slots__ = ("attrs", "consumed", "live", "operation", "pathway", "process",
                 "queue_wait", "sent", "storages", "trace_based")

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs
        self.live: _Instruments | None = None
        self.storages: Any = None
        self.trace_based = False
        self.sent: Any = None  # count cells: next() adds one
        self.consumed: Any = None
        self.operation: Any = None  # aggregations, recorded into by record_one
        self.process: Any = None
        self.queue_wait: Any = None
        self.pathway: Any = None

    def rebind(self, live: _Instruments) -> None:
        """Forget every binding: they are bound again for ``live`` as records come."""
        with _lock:  # (a binding is made under it too, for the edge's live and storages)
            self.live = live
            self.storages = live.consumer._reader_storages
            self.sent = self.consumed = None
            self.operation = self.process = self.queue_wait = self.pathway = None


def _count_general(edge: _Edge, live: _Instruments, field: str) -> None:
    """Count one for ``edge`` through ``live``'s tally, then bind the edge's count cell."""
    getattr(live, field)(1, edge.attrs)
    tally = live.tallies.get(field)
    if tally is not None:
        counter = tally.counter(edge.attrs)
        with _lock:
            if edge.live is live:  # (not rebound for other instruments meanwhile)
                setattr(edge, field, counter)


def _record_general(edge: _Edge, live: _Instruments, field: str, value: float) -> None:
    """Record ``value`` for ``edge`` the general way, then bind the edge's aggregation."""
    getattr(live, field)(value, edge.attrs)
    lean = live.leans.get(field)
    if lean is None or edge.live is not live:
        return
    found = lean.single(edge.attrs)
    if found is not None:
        with _lock:
            if edge.live is live and found[1] is edge.storages:  # (as above)
                setattr(edge, field, found[0])
                edge.trace_based = found[2]


#: What a scope's close records: its kind, start time (``perf_counter_ns``), edge and
#: instruments. (A plain tuple: a NamedTuple's ``tuple.__new__`` costs five times more.)
Record: TypeAlias = tuple[int, int, _Edge, _Instruments]


def _recorder(histogram: Any) -> Callable[[float, dict[str, Any]], None]:
    """How to record into ``histogram``: the lean path for an SDK histogram, else ``record``."""
    if type(histogram).__module__.startswith("opentelemetry.sdk."):
        try:
            from ._sdk_metrics import LeanHistogram, lean_histogram
        except ImportError:  # pragma: no cover - another SDK layout
            pass
        else:
            lean = lean_histogram(histogram)
            # (Its bound ``record``: a call through the instance's ``__call__`` costs more.)
            recorder = lean.record if isinstance(lean, LeanHistogram) else lean
            return recorder
    return histogram.record  # type: ignore[no-any-return]


def _version() -> str:
    from . import __version__

    return __version__


_UNSET: Final = object()
#: Where the hooks read the global provider (the API's module, else a provider never seen).
provider_source: Final[Any] = (
    _api if _api is not None else type("_NoApi", (), {"_METER_PROVIDER": object()}))
#: The global provider for which metrics are off, with no explicit provider; _UNSET when not
#: known off. The hooks' first check, one comparison that returns when metrics are off:
#: ``provider_source._METER_PROVIDER is off_provider``. A caller may make the same check
#: inline to skip a hook's call (it is kept current here; a hook called anyway is the same).
off_provider: object = _UNSET
#: provider -> metric name -> the tally its observable counter reports
_tallies: weakref.WeakKeyDictionary[Any, dict[str, _Tally]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_explicit: MeterProvider | None = None
_seen: object = _UNSET
_live: _Instruments | None = None
_edges: dict[tuple[object, ...], _Edge] = {}
#: (system, operation, destination) -> the edge in ``_edges``, for scopes without extras
_plain_edges: dict[tuple[object, ...], _Edge] = {}
#: id(an edge's cached attribute dict) -> (that dict, its items as a tally key)
_tally_keys: dict[int, tuple[dict[str, Any], tuple[tuple[str, Any], ...]]] = {}
#: (id(an edge's attribute dict), error.type) -> (that dict, it with error.type)
_error_edges: dict[tuple[int, str], tuple[dict[str, Any], dict[str, Any]]] = {}


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Record into ``provider`` instead of the global one (None: back to the global one)."""
    global _explicit, _seen, off_provider
    with _lock:
        _explicit = provider
        _seen = off_provider = _UNSET


def _reset(_settings: Settings | None = None) -> None:
    global _seen, off_provider
    with _lock:
        _seen = off_provider = _UNSET
        _edges.clear()
        _plain_edges.clear()
        _tally_keys.clear()
        _error_edges.clear()


on_change(_reset)


def _current_provider() -> object:
    if _explicit is not None:
        return _explicit
    if _api is not None:
        return _api._METER_PROVIDER
    provider = otel_metrics.get_meter_provider()  # pragma: no cover - another API layout
    return None if type(provider).__name__ == "_ProxyMeterProvider" else provider


def _instruments() -> _Instruments | None:
    """The live instruments, or None when no provider records (checked on every call)."""
    if _api is not None and (_api._METER_PROVIDER if _explicit is None else _explicit) is _seen:
        return _live  # (the provider seen last: the common case, inlined)
    provider = _current_provider()
    if provider is _seen:
        return _live
    return _rebuild(provider)


def _rebuild(seen: object) -> _Instruments | None:
    global _seen, _live, off_provider
    with _lock:
        provider = seen
        if provider is None and os.environ.get("OTEL_PYTHON_METER_PROVIDER"):
            provider = otel_metrics.get_meter_provider()  # loads the named provider
        live: _Instruments | None = None
        settings = get_settings()
        if (
            isinstance(provider, MeterProvider)
            and not isinstance(provider, NoOpMeterProvider)
            and "*" not in settings.disabled_metrics
            and not _readerless(provider)
        ):
            try:
                live = _Instruments(provider, settings)
            except Exception as exc:
                diagnostics.internal_error("metrics.instruments", exc)
        _live = live
        _seen = seen
        off_provider = seen if live is None and _explicit is None and provider is seen else _UNSET
        return live


def _readerless(provider: object) -> bool:
    """Whether ``provider`` is an SDK ``MeterProvider`` with no metric reader, now and until
    one is added: what it is given goes nowhere, so hoptrace records nothing into it.

    ``opentelemetry-instrument`` sets such a provider with ``OTEL_METRICS_EXPORTER=none``.
    Metrics count as off there, as with no provider, so that the hooks cost one comparison
    and the unrecorded and dropped sends and opens keep their shortcuts. A reader added or
    removed later (``add_metric_reader``, SDK 1.43+) goes through its measurement consumer,
    which :func:`_watch` makes forget this answer; the next hook decides again. Always False
    for a provider whose consumer is not that shape, or whose methods cannot be watched.
    Called under ``_lock``.
    """
    consumer = getattr(provider, "_measurement_consumer", None)
    if type(getattr(consumer, "_reader_storages", None)) is not dict or not _watch(consumer):
        return False
    return not consumer._reader_storages  # type: ignore[union-attr]  # (read once watched)


def _watch(consumer: Any) -> bool:
    """Make ``consumer``'s ``add_metric_reader`` and ``remove_metric_reader`` (where it has
    them) forget the provider last seen once they return: True when both are watched (or
    absent: the SDK fixes its readers when the provider is made)."""
    for name in ("add_metric_reader", "remove_metric_reader"):
        method = getattr(consumer, name, None)
        if method is None or getattr(method, "_hoptrace_watched", False):
            continue

        def watched(reader: Any, _method: Any = method) -> Any:
            try:
                return _method(reader)
            finally:
                _forget_provider()

        watched._hoptrace_watched = True  # type: ignore[attr-defined]
        try:
            setattr(consumer, name, watched)  # (on the instance: the class stays the SDK's)
        except (AttributeError, TypeError):
            return False
    return True


def _forget_provider() -> None:
    """Decide again, at the next hook, whether the global provider records (its readers
    changed)."""
    global _seen, off_provider
    with _lock:
        _seen = off_provider = _UNSET


def enabled() -> bool:
    """Return whether hoptrace records metrics now (a provider is set, some metric is on)."""
    if provider_source._METER_PROVIDER is off_provider:
        return False  # metrics off (no provider, or a no-op one): the hooks' one comparison
    return _instruments() is not None


# --------------------------------------------------------------------- attributes


def _edge_fields(extra: object) -> tuple[Any, Any, Any, Any, Any]:
    """The metric-worthy fields of a scope's extra attributes (a mapping or a callable)."""
    if extra is None:
        return None, None, None, None, None
    if callable(extra):
        try:
            extra = extra()
        except Exception as exc:
            diagnostics.internal_error("metrics.attributes", exc)
            return None, None, None, None, None
    if not isinstance(extra, Mapping):
        return None, None, None, None, None
    get = extra.get
    return (get(semconv.MESSAGING_DESTINATION_NAME), get(semconv.MESSAGING_CONSUMER_GROUP_NAME),
            get(SERVER_ADDRESS), get(SERVER_PORT), get(semconv.CELERY_TASK_NAME))


def _low_cardinality(destination: str) -> str:
    """Fold RabbitMQ's server-named temporary queues (``amq.gen-…``) into one name."""
    at = destination.find("amq.gen-")
    return destination if at < 0 else destination[:at] + "amq.gen-*"


def edge_attributes(system: str, operation: str, destination: str, extra: object) -> dict[str, Any]:
    """The attributes of one edge's metrics (cached: the same dict for the same edge)."""
    return _edge(system, operation, destination, extra).attrs


def _edge(system: str, operation: str, destination: str, extra: object) -> _Edge:
    """One edge, with its attribute dict (cached: the same edge for the same attributes)."""
    if extra is None:  # no extra attributes: the edge by a shorter key
        edge = _plain_edges.get((system, operation, destination))
        if edge is not None:
            return edge
    named, group, address, port, task = _edge_fields(extra)
    if isinstance(named, str) and named:
        destination = named
    key = (system, operation, destination, group, address, port, task)
    edge = _edges.get(key)
    if edge is not None:
        return edge
    attrs: dict[str, Any] = {
        semconv.MESSAGING_SYSTEM: system,
        semconv.MESSAGING_OPERATION_NAME: operation,
        semconv.MESSAGING_DESTINATION_NAME: _low_cardinality(destination),
    }
    if isinstance(group, str) and group:
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
    if isinstance(address, str) and address:
        attrs[SERVER_ADDRESS] = address
    if isinstance(port, int) and not isinstance(port, bool):
        attrs[SERVER_PORT] = port
    if isinstance(task, str) and task:
        attrs[semconv.CELERY_TASK_NAME] = task
    edge = _Edge(attrs)
    if len(_edges) < _MAX_EDGES:
        _edges[key] = edge
        _tally_keys[id(attrs)] = (attrs, tuple(attrs.items()))
        if extra is None:
            _plain_edges[(system, operation, destination)] = edge
    else:  # (not cached: its dict gets no count cell, see _Tally.counter)
        diagnostics.count("metrics.edges_over_cache")
    return edge


def _with_error(attrs: dict[str, Any], error: str) -> dict[str, Any]:
    """``attrs`` plus ``error.type``: one dict per edge and error type, like the edge's own."""
    key = (id(attrs), error)
    known = _error_edges.get(key)
    if known is not None and known[0] is attrs:
        return known[1]
    with_error = {**attrs, ERROR_TYPE: error}
    if len(_error_edges) < _MAX_EDGES:
        _error_edges[key] = (attrs, with_error)
    return with_error


def error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# --------------------------------------------------------------------- origin (pathway)


def stamp_baggage(baggage: Any) -> Any:
    """Return ``baggage`` with the transaction's origin time added, if the pathway is on.

    A baggage that carries an origin already (from upstream) keeps it. Returns ``baggage``
    itself when metrics are off or the pathway metric is switched off: no bytes on the wire.
    """
    live = _instruments()
    if live is None or live.pathway is None:
        return baggage
    return _stamped(baggage)


def _stamped(baggage: Any) -> Any:
    """``baggage`` with the origin time added unless it carries one (the pathway is on)."""
    try:
        if baggage and ORIGIN_BAGGAGE_KEY in baggage:
            return baggage
        origin = _origin_now()
        return {**baggage, ORIGIN_BAGGAGE_KEY: origin} if baggage else {ORIGIN_BAGGAGE_KEY: origin}
    except Exception as exc:
        diagnostics.internal_error("metrics.stamp_origin", exc)
        return baggage


#: The last origin stamped: (ms since the epoch, as text), reused within that millisecond.
_last_origin: tuple[int, str] = (-1, "")


def _origin_now() -> str:
    """Now, in ms since the epoch, as the origin entry's text."""
    global _last_origin
    now_ms = time.time_ns() // 1_000_000
    last = _last_origin
    if last[0] != now_ms:  # (str() of a 13-digit int costs more than the clock)
        last = _last_origin = (now_ms, str(now_ms))
    return last[1]


def stamp_origin(ctx: Context) -> Context:
    """Return ``ctx`` whose baggage carries the origin time (``ctx`` itself when off)."""
    if provider_source._METER_PROVIDER is off_provider:
        return ctx  # metrics off (no provider, or a no-op one): one comparison
    # (_instruments(), inlined for the provider seen last, global or explicit)
    live = (_live if _api is not None
            and (_api._METER_PROVIDER if _explicit is None else _explicit) is _seen
            else _instruments())
    if live is None or live.pathway is None:
        return ctx
    baggage = ctx.get(BAGGAGE_KEY)
    if baggage is None:  # (a transaction starting here: _stamped's step, without its call)
        global _last_origin
        now_ms = time.time_ns() // 1_000_000  # (_origin_now, inlined)
        last = _last_origin
        if last[0] != now_ms:
            last = _last_origin = (now_ms, str(now_ms))
        return Context({**ctx, BAGGAGE_KEY: {ORIGIN_BAGGAGE_KEY: last[1]}})
    stamped = _stamped(baggage)
    if stamped is baggage:
        return ctx
    return Context({**ctx, BAGGAGE_KEY: stamped})


#: The last origin text read and its value (a str equals no ``object()``).
_last_read: tuple[object, int] = (object(), 0)


def origin_ms(baggage: object, now_ms: int) -> int | None:
    """The origin time a baggage carries (ms since the epoch), or None if absent or garbage."""
    global _last_read
    if type(baggage) is not dict and (not baggage or not isinstance(baggage, Mapping)):
        return None
    raw = baggage.get(ORIGIN_BAGGAGE_KEY)
    if type(raw) is not str:
        return None
    last = _last_read
    if raw == last[0]:  # (the same text as the last one read: its value, already checked)
        value = last[1]
    else:
        if not 0 < len(raw) <= 16 or not raw.isdigit() or not raw.isascii():
            return None
        value = int(raw)
        _last_read = (raw, value)
    if now_ms - value > _MAX_ORIGIN_AGE_MS:
        return None
    return value


# --------------------------------------------------------------------- scope hooks


def send_started(system: str, destination: str, extra: object) -> Record | None:
    """Start timing a send; :func:`closed` records it. None when metrics are off."""
    if provider_source._METER_PROVIDER is off_provider:
        return None  # metrics off (no provider, or a no-op one): one comparison
    # (_instruments(), inlined for the provider seen last, global or explicit)
    live = (_live if _api is not None
            and (_api._METER_PROVIDER if _explicit is None else _explicit) is _seen
            else _instruments())
    if live is None or (live.sent is None and live.operation is None):
        return None
    try:
        edge = _plain_edges.get((system, _OP_SEND, destination)) if extra is None else None
        if edge is None:  # (_edge's first step, inlined: no call for a known edge)
            edge = _edge(system, _OP_SEND, destination, extra)
        return (_SEND, _perf_counter_ns(), edge, live)
    except Exception as exc:
        diagnostics.internal_error("metrics.send", exc)
        return None


def consumed(  # noqa: C901 - each metric's step written out: no call per record
    system: str,
    operation: str,
    destination: str,
    extra: object,
    queue_wait_ms: float | None,
    skew: bool,
    baggage: object,
    now_ns: int,
    redelivered: bool | None,
    carrier: object,
) -> Record | None:
    """Record one delivery (count, queue wait, skew, pathway, redelivery, dead letter).

    Returns the record :func:`closed` completes with the processing duration, or None when
    metrics are off.
    """
    if provider_source._METER_PROVIDER is off_provider:
        return None  # metrics off (no provider, or a no-op one): one comparison
    # (_instruments(), inlined for the provider seen last, global or explicit)
    live = (_live if _api is not None
            and (_api._METER_PROVIDER if _explicit is None else _explicit) is _seen
            else _instruments())
    if live is None:
        return None
    try:
        edge = _plain_edges.get((system, operation, destination)) if extra is None else None
        if edge is None:  # (_edge's first step, inlined: no call for a known edge)
            edge = _edge(system, operation, destination, extra)
        if edge.live is not live or edge.storages is not live.consumer._reader_storages:
            edge.rebind(live)  # (other instruments, or a reader added or removed)
        direct = live.meter_config._config.is_enabled
        attrs = edge.attrs
        if live.consumed is not None:
            cell = edge.consumed
            if cell is not None:
                next(cell)
            else:
                _count_general(edge, live, "consumed")
        if queue_wait_ms is not None and live.queue_wait is not None:
            wait = queue_wait_ms / 1e3
            aggregation = edge.queue_wait
            if aggregation is not None and direct and 0 <= wait < _INF:
                _record_one(aggregation, wait, attrs, edge.trace_based)
            else:
                _record_general(edge, live, "queue_wait", wait)
        if skew and live.skew is not None:
            live.skew(1, attrs)
        if baggage and live.pathway is not None:
            now_ms = now_ns // 1_000_000
            origin = origin_ms(baggage, now_ms)
            if origin is not None:
                age = now_ms - origin
                age_s = (age if age > 0 else 0) / 1e3  # (max(0, age), no call)
                aggregation = edge.pathway
                if aggregation is not None and direct and age_s < _INF:
                    _record_one(aggregation, age_s, attrs, edge.trace_based)
                else:
                    _record_general(edge, live, "pathway", age_s)
        if redelivered is True and live.retries is not None:
            live.retries(1, {**attrs, RETRY_KIND: "redelivery"})
        if (
            live.dead_letters is not None
            and (type(carrier) is dict or isinstance(carrier, Mapping))
            and carrier.get(_DEATH_HEADER)
        ):
            live.dead_letters(1, {**attrs, DEAD_LETTER_KIND: "x-death"})
        # (Returned even with the duration switched off: Celery counts retries through it.)
        kind = _PROCESS if operation == _OP_PROCESS else _OTHER
        return (kind, _perf_counter_ns(), edge, live)
    except Exception as exc:
        diagnostics.internal_error("metrics.consume", exc)
        return None


def closed(record: Record | None, exc: BaseException | None) -> None:
    """Record a scope's end: a send's count and duration, or a processing duration."""
    if record is None:
        return
    # (live: the instruments of the open; a provider set in between is no matter)
    kind, start, edge, live = record
    try:
        duration = (_perf_counter_ns() - start) / 1e9
        if exc is not None:
            _closed_with_error(kind, edge.attrs, live, duration, exc)
            return
        if edge.live is not live or edge.storages is not live.consumer._reader_storages:
            edge.rebind(live)  # (other instruments, or a reader added or removed)
        if kind == _SEND and live.sent is not None:
            cell = edge.sent
            if cell is not None:
                next(cell)
            else:
                _count_general(edge, live, "sent")
        if kind == _PROCESS:
            if live.process is not None:
                aggregation = edge.process
                if (aggregation is not None and live.meter_config._config.is_enabled
                        and 0 <= duration < _INF):
                    _record_one(aggregation, duration, edge.attrs, edge.trace_based)
                else:
                    _record_general(edge, live, "process", duration)
        elif live.operation is not None:
            aggregation = edge.operation
            if (aggregation is not None and live.meter_config._config.is_enabled
                    and 0 <= duration < _INF):
                _record_one(aggregation, duration, edge.attrs, edge.trace_based)
            else:
                _record_general(edge, live, "operation", duration)
    except Exception as error:
        diagnostics.internal_error("metrics.close", error)


def _closed_with_error(kind: int, attrs: dict[str, Any], live: _Instruments, duration: float,
                       exc: BaseException) -> None:
    """:func:`closed` for a scope that ended with ``exc``: the edge's dict with error.type."""
    attrs = _with_error(attrs, error_type(exc))
    if kind == _SEND and live.sent is not None:
        live.sent(1, attrs)
    if kind == _PROCESS:
        if live.process is not None:
            live.process(duration, attrs)
    elif live.operation is not None:
        live.operation(duration, attrs)


def retried(record: Record | None, kind: str = "retry") -> None:
    """Count one retry of the message whose consume scope holds ``record``."""
    _count(record, "retries", RETRY_KIND, kind)


def dead_lettered(record: Record | None, kind: str) -> None:
    """Count one message the consumer dead-lettered (``kind`` says how, e.g. ``rejected``)."""
    _count(record, "dead_letters", DEAD_LETTER_KIND, kind)


def _count(record: Record | None, which: str, key: str, kind: str) -> None:
    if record is None:
        return
    add: Callable[[int, dict[str, Any]], None] | None = getattr(record[3], which)
    if add is None:
        return
    try:
        add(1, {**record[2].attrs, key: kind})
    except Exception as exc:
        diagnostics.internal_error("metrics." + which, exc)


__all__: Final = [
    "CLOCK_SKEW",
    "CONSUMED_MESSAGES",
    "DEAD_LETTERS",
    "LATENCY_BUCKETS",
    "OPERATION_DURATION",
    "ORIGIN_BAGGAGE_KEY",
    "PATHWAY",
    "PROCESS_DURATION",
    "QUEUE_WAIT",
    "RETRIES",
    "SEMCONV_BUCKETS",
    "SENT_MESSAGES",
    "Record",
    "closed",
    "consumed",
    "dead_lettered",
    "edge_attributes",
    "enabled",
    "error_type",
    "origin_ms",
    "retried",
    "send_started",
    "stamp_baggage",
    "stamp_origin",
    "use_meter_provider",
]
