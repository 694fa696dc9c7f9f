"""A lean path for hoptrace's histogram records into the OTel SDK (imported only with an SDK).

An SDK ``Histogram.record`` builds a ``Measurement`` (copying and cleaning the attributes),
asks the exemplar filter, then, for each reader's storage and each View matching the
instrument, copies the attributes again, filters them by the View's keys, hashes them and
looks up the aggregation that holds their point. For hoptrace's instruments the attributes of
an edge are one dict, built once and never changed, so all of that gives the same
aggregations every time.

:class:`LeanHistogram` wraps one SDK histogram. The first record of each attribute dict goes
through ``Histogram.record``; then it finds, in each reader's storage, the aggregation the SDK
made for it (one per matching View; a View's ``DropAggregation`` is left out). Later records
of the same dict take the exemplar filter's decision as the SDK takes it (its trace-based and
always-off filters inlined, any other one asked with the same arguments), and call each
aggregation's own ``aggregate`` with a measurement of the same fields. For the SDK's
explicit-bucket aggregation with its aligned-bucket reservoir, of the shape this module knows
(:func:`_offer_inlined`), :func:`_aggregate` makes ``aggregate``'s own steps instead, under
the aggregation's lock: the bucket count, sum, min and max, then the reservoir's offer. With
one such aggregation (one reader, one matching View) and the trace-based or always-off filter,
the common case, :meth:`LeanHistogram.record` makes all of those steps itself, and writes the
SDK's ``ExemplarBucket`` fields as its ``offer`` does (:func:`record_one`). The temporality, the
collection and the exported points remain the SDK's own doing.

At first use, :func:`lean_histogram` checks that the SDK's record path has a shape this module
knows (opentelemetry-sdk 1.20 to 1.45; the names each step reads, as ``_sdk_spans`` does). A
record goes the SDK's whole way when the shape is unknown, the value is not finite and
non-negative, the instrument's meter is disabled, a reader was added or removed since the
aggregations were found (a new storage mapping), the aggregations cannot be found exactly
once each (an attribute set past the SDK's cardinality limit shares the overflow point, which
is not its own), a reader has delta temporality and the SDK drops the aggregations at each
collection (1.45.2 and later), or more attribute dicts come than this module keeps bindings
for.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import types
from bisect import bisect_left
from collections.abc import Mapping
from time import time_ns
from typing import Any, Final, NamedTuple

from opentelemetry.sdk.metrics._internal import _view_instrument_match as _match
from opentelemetry.sdk.metrics._internal import aggregation as _aggregation
from opentelemetry.sdk.metrics._internal import instrument as _instrument
from opentelemetry.sdk.metrics._internal import measurement_consumer as _consumer
from opentelemetry.sdk.metrics._internal import metric_reader_storage as _storage
from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY

from .ids import TUPLE_LAYOUT
from .otel_shims import get_current  # the same Context as the API's, one C call

_logger = logging.getLogger("hoptrace")

_INF: Final = math.inf
#: At most this many attribute dicts bound per histogram; more take the SDK's whole path.
_MAX_BINDINGS: Final = 4096


class _Measurement(NamedTuple):
    """The fields of the SDK's ``Measurement`` that an aggregation reads, built in C."""

    value: float
    time_unix_nano: int
    instrument: Any
    context: Any
    attributes: Any


_new_measurement = tuple.__new__
#: The binding of an attribute dict not bound yet (no dict is this ``None``).
_UNBOUND: Final = (None, None, None, None, None)

# The names each step of the SDK's record path reads (recursively through nested code), for
# the versions this module knows. Read from opentelemetry-sdk 1.20.0 to 1.45.2's sources.
_RECORD_NAMES: Final = (
    # 1.20-1.27: record(amount, attributes); no exemplars
    frozenset({"Measurement", "_logger", "_measurement_consumer", "consume_measurement",
               "name", "warning"}),
    # 1.28-1.40: a context and a time
    frozenset({"Measurement", "_logger", "_measurement_consumer", "consume_measurement",
               "get_current", "name", "time_ns", "warning"}),
    # 1.41-1.43: a disabled meter goes to the API's no-op
    frozenset({"Measurement", "_is_enabled", "_logger", "_measurement_consumer",
               "consume_measurement", "get_current", "name", "record", "super", "time_ns",
               "warning"}),
    # 1.44-1.45: non-finite values dropped
    frozenset({"Measurement", "_is_enabled", "_logger", "_measurement_consumer",
               "consume_measurement", "get_current", "isfinite", "math", "name", "record",
               "super", "time_ns", "warning"}),
)
_CONSUMER_NAMES: Final = (
    frozenset({"_reader_storages", "consume_measurement", "values"}),  # 1.20-1.27
    frozenset({"_reader_storages", "_sdk_config", "attributes", "consume_measurement",
               "context", "exemplar_filter", "should_sample", "time_unix_nano", "value",
               "values"}),  # 1.28-1.45
)
_STORAGE_NAMES: Final = frozenset({"_get_or_init_view_instrument_match",
                                   "consume_measurement", "instrument"})
_GET_MATCHES_NAMES: Final = frozenset({
    "_DEFAULT_VIEW", "_ViewInstrumentMatch", "_handle_view_instrument_match",
    "_instrument_class_aggregation", "_instrument_view_instrument_matches", "_lock", "append",
})
_MATCH_BASE: Final = frozenset({
    "DefaultAggregation", "__class__", "_aggregation", "_attribute_keys",
    "_attributes_aggregation", "_create_aggregation", "_instrument",
    "_instrument_class_aggregation", "_lock", "_view", "aggregate", "attributes", "isinstance",
    "items",
})
_MATCH_NAMES: Final = (
    _MATCH_BASE | {"frozenset", "_start_time_unix_nano"},  # 1.20-1.26
    _MATCH_BASE | {"frozenset", "time_ns"},  # 1.27
    _MATCH_BASE | {"frozenset", "time_ns", "_exemplar_reservoir_factory"},  # 1.28-1.41
    _MATCH_BASE | {"frozenset", "time_ns", "_exemplar_reservoir_factory", "dict"},  # 1.42-1.44
    _MATCH_BASE | {"_hash_attributes", "time_ns", "_exemplar_reservoir_factory", "dict"},  # 1.45
)
_MATCH_COLLECT_NAMES: Final = frozenset({"_attributes_aggregation", "_lock", "append",
                                         "collect", "values"})

# 1.45.2: a cardinality limit per View and instrument (attribute sets beyond it share one
# overflow point), and, under a reader with delta temporality, a synchronous instrument's
# aggregations dropped at each collection (``_reset_on_collect``). The storage makes its
# matches in a method of its own, and the match finds or makes an aggregation in another.
_GET_MATCHES_LIMITED: Final = frozenset({
    "_DEFAULT_VIEW", "_handle_view_instrument_match", "_instrument_view_instrument_matches",
    "_lock", "_new_view_instrument_match", "append",
})
_NEW_MATCH_NAMES: Final = frozenset({
    "AggregationTemporality", "DELTA", "_Asynchronous", "_DEFAULT_CARDINALITY_LIMIT",
    "_ViewInstrumentMatch", "__class__", "_aggregation_cardinality_limit",
    "_instrument_class_aggregation", "_instrument_class_cardinality_limit",
    "_instrument_class_temporality", "get", "isinstance",
})
_MATCH_LIMITED: Final = frozenset({
    "_attribute_keys", "_attributes_aggregation", "_get_or_create_aggregation",
    "_hash_attributes", "_lock", "_reset_on_collect", "_view", "aggregate", "attributes",
    "dict", "get", "items",
})
_MAKE_AGGREGATION_LIMITED: Final = frozenset({
    "DefaultAggregation", "_OVERFLOW_ATTRIBUTES", "_OVERFLOW_KEY", "__class__",
    "_aggregation", "_attributes_aggregation", "_cardinality_limit", "_create_aggregation",
    "_exemplar_reservoir_factory", "_instrument", "_instrument_class_aggregation",
    "_previous_collection_start_nanos", "_view", "dict", "get", "isinstance", "len", "time_ns",
})
_MATCH_COLLECT_LIMITED: Final = frozenset({
    "AggregationTemporality", "DELTA", "_attributes_aggregation", "_lock",
    "_previous_collection_start_nanos", "_reset_on_collect", "append", "collect", "values",
})


def _names(function: object) -> frozenset[str] | None:
    """The names a plain function's code reads, nested code included; None if not plain."""
    if type(function) is not types.FunctionType:
        return None
    found: set[str] = set()
    stack = [function.__code__]
    while stack:
        code = stack.pop()
        found.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(found)


def _sdk_version() -> tuple[int, ...]:
    try:
        from opentelemetry.sdk.version import __version__
    except ImportError:  # pragma: no cover - every SDK release has it
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", __version__)[:2])


def _shape() -> tuple[str | None, bool]:
    """Why the installed SDK's record path is not one this module knows (None if it is).

    The second value says whether it offers exemplars (1.28 and later).
    """
    version = _sdk_version()
    if not (1, 20) <= version <= (1, 45):
        return f"opentelemetry-sdk {'.'.join(map(str, version)) or '?'} is not one it knows", False
    record = _names(_instrument.Histogram.__dict__.get("record"))
    if record not in _RECORD_NAMES:
        return "Histogram.record has a shape it does not know", False
    consumer = _names(_consumer.SynchronousMeasurementConsumer.__dict__.get("consume_measurement"))
    if consumer not in _CONSUMER_NAMES:
        return "the measurement consumer has a shape it does not know", False
    storage = _storage.MetricReaderStorage.__dict__
    get_matches = _names(storage.get("_get_or_init_view_instrument_match"))
    limited = get_matches == _GET_MATCHES_LIMITED  # 1.45.2: see _GET_MATCHES_LIMITED
    if (_names(storage.get("consume_measurement")) != _STORAGE_NAMES
            or (get_matches != _GET_MATCHES_NAMES and not limited)
            or (limited and _names(storage.get("_new_view_instrument_match"))
                != _NEW_MATCH_NAMES)):
        return "the reader storage has a shape it does not know", False
    match = _match._ViewInstrumentMatch.__dict__
    consume = _names(match.get("consume_measurement"))
    collect = _names(match.get("collect"))
    if limited:
        known = (consume == _MATCH_LIMITED and collect == _MATCH_COLLECT_LIMITED
                 and _names(match.get("_get_or_create_aggregation")) == _MAKE_AGGREGATION_LIMITED)
    else:
        known = consume in _MATCH_NAMES and collect == _MATCH_COLLECT_NAMES
    if not known:
        return "the view-instrument match has a shape it does not know", False
    exemplars = consumer == _CONSUMER_NAMES[1]
    if exemplars != (record != _RECORD_NAMES[0]):
        return "the SDK's record steps disagree on exemplars", False
    return None, exemplars


_known: tuple[str | None, bool] | None = None


def _strictly_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same keys, and values of the same types that compare equal (True is not 1)."""
    if len(a) != len(b):
        return False
    for key, value in a.items():
        if key not in b:
            return False
        other = b[key]
        if type(other) is not type(value) or other != value:
            return False
    return True


class LeanHistogram:
    """Records into one SDK histogram; see the module docstring."""

    __slots__ = ("_bindings", "_consumer", "_exemplars", "_gated", "_histogram", "_proxy",
                 "_record")

    def __init__(self, histogram: Any, exemplars: bool) -> None:
        self._histogram = histogram
        self._record = histogram.record
        self._consumer = histogram._measurement_consumer
        self._exemplars = exemplars
        self._gated = "_is_enabled" in (_names(type(histogram).record) or ())
        #: The meter's config proxy when ``_is_enabled`` can be read from it without calls.
        self._proxy = _meter_config_proxy(histogram) if self._gated else None
        #: id(attribute dict) -> (that dict, the storages mapping it was found in, the
        #: aggregations' ``aggregate`` methods or None when they could not be found exactly,
        #: the exemplar filter's ``should_sample`` or a marker for an inlined one, the one
        #: aggregation ``record`` feeds itself or None)
        self._bindings: dict[int, tuple[Any, Any, Any, Any, Any]] = {}

    def record(self, amount: float, attributes: dict[str, Any]) -> None:
        """Record ``amount`` for ``attributes`` (a dict the caller never changes).

        (hoptrace calls this bound method, not the instance: a call through ``__call__``
        costs ~850 instructions more.)
        """
        bound = self._bindings.get(id(attributes), _UNBOUND)
        if bound[0] is not attributes or bound[1] is not self._consumer._reader_storages:
            self._record(amount, attributes)
            self._bind(attributes)
            return
        aggregation = bound[4]
        if aggregation is None or not 0 <= amount < _INF:  # not the one-aggregation case,
            self._general(amount, attributes, bound)  # or a value the SDK warns about or drops
            return
        proxy = self._proxy  # (SDK 1.41+: the meter's enabled flag, read without calls)
        if proxy is None or not proxy._config.is_enabled \
                or self._histogram._meter_config is not proxy:
            self._general(amount, attributes, bound)  # (a disabled meter: the SDK's way)
            return
        # One explicit-bucket aggregation (one reader, one View) and the trace-based or the
        # always-off exemplar filter: the steps of _general, _trace_based and _aggregate.
        record_one(aggregation, amount, attributes, bound[3] is _TRACE_BASED)

    __call__ = record

    def single(self, attributes: dict[str, Any]) -> tuple[Any, Any, bool] | None:
        """For a caller that records ``attributes`` through :func:`record_one` itself.

        ``(aggregation, storages, trace_based)`` when ``record`` would feed that one
        aggregation itself, bound in the storages mapping ``storages``, with the exemplar
        filter trace-based (True) or always off. Before each record the caller checks what
        ``record`` checks: ``storages`` is still :attr:`consumer`'s ``_reader_storages``, the
        meter is enabled (:attr:`enabled`), the value is finite and not negative. None
        otherwise: the caller takes ``record``.
        """
        bound = self._bindings.get(id(attributes), _UNBOUND)
        if (bound[0] is not attributes or bound[4] is None
                or bound[1] is not self._consumer._reader_storages
                or self._proxy is None or self._histogram._meter_config is not self._proxy):
            return None  # (as ``record``: its own path needs the meter's flag read so)
        return bound[4], bound[1], bound[3] is _TRACE_BASED

    @property
    def consumer(self) -> Any:
        """The SDK's measurement consumer (its ``_reader_storages``: the readers' storages)."""
        return self._consumer

    @property
    def enabled(self) -> Any:
        """The meter's config proxy, whose ``_config.is_enabled`` is the meter's enabled flag
        (None: not that shape, and :meth:`single` gives None)."""
        return self._proxy

    def _general(self, amount: float, attributes: dict[str, Any],
                 bound: tuple[Any, Any, Any, Any, Any]) -> None:
        """Record through each bound aggregation (any number, any filter), or the SDK's way."""
        if bound[2] is None or not 0 <= amount < _INF:  # aggregations not found exactly,
            self._record(amount, attributes)  # or a value the SDK warns about or drops
            return
        if self._gated:  # a disabled meter: the SDK does nothing
            proxy = self._proxy
            histogram = self._histogram
            if not (proxy._config.is_enabled if proxy is not None
                    and histogram._meter_config is proxy else histogram._is_enabled()):
                self._record(amount, attributes)
                return
        if self._exemplars:
            ctx = get_current()
            sample = bound[3]
            if sample is _TRACE_BASED:  # TraceBasedExemplarFilter.should_sample, inlined
                keep = _trace_based(ctx)
                now = time_ns() if keep else 0  # (the time is read only with an exemplar)
            elif sample is _ALWAYS_OFF:
                keep, now = False, 0
            else:
                now = time_ns()
                keep = sample(amount, now, attributes, ctx)
            measurement = None
            for aggregate, aggregation in bound[2]:
                if aggregation is None:
                    if measurement is None:
                        measurement = _new_measurement(
                            _Measurement, (amount, now, self._histogram, ctx, attributes))
                    aggregate(measurement, keep)
                    continue
                _aggregate(aggregation, amount, keep, now, attributes, ctx)
        else:
            measurement = _new_measurement(
                _Measurement, (amount, 0, self._histogram, None, attributes))
            for aggregate, _ in bound[2]:
                aggregate(measurement)

    def _bind(self, attributes: dict[str, Any]) -> None:
        """Find the aggregations the SDK made for ``attributes`` (or note that it cannot)."""
        bindings = self._bindings
        bindings.pop(id(attributes), None)
        if len(bindings) >= _MAX_BINDINGS:
            return
        storages = self._consumer._reader_storages
        sinks = self._find(storages, attributes)
        # (The SDK's configuration is frozen: its exemplar filter stays.)
        sample = _sampler(self._consumer._sdk_config.exemplar_filter) \
            if self._exemplars and sinks is not None else None
        # The one-aggregation case ``record`` takes itself: one inlined aggregation, and a
        # filter whose decision it makes (trace-based or always off).
        single = (sinks[0][1] if sinks is not None and len(sinks) == 1
                  and (sample is _TRACE_BASED or sample is _ALWAYS_OFF) else None)
        bindings[id(attributes)] = (attributes, storages, sinks, sample, single)

    def _find(self, storages: Any, attributes: dict[str, Any]) -> tuple[Any, ...] | None:
        """The ``aggregate`` methods of the aggregations for ``attributes``; None if not exact."""
        sinks: list[Any] = []
        for storage in storages.values():
            matches = storage._instrument_view_instrument_matches.get(self._histogram)
            if type(matches) is not list:
                return None
            for match in matches:
                if getattr(match, "_reset_on_collect", False) is not False:
                    # (SDK 1.45.2+, a delta reader: each collection drops the aggregations,
                    # so none found now would still be the SDK's after the next one)
                    return None
                keys = match._view._attribute_keys
                expected = (attributes if keys is None
                            else {k: v for k, v in attributes.items() if k in keys})
                with match._lock:
                    found = [agg for agg in match._attributes_aggregation.values()
                             if isinstance(getattr(agg, "_attributes", None), Mapping)
                             and _strictly_equal(agg._attributes, expected)]
                if len(found) != 1:
                    return None
                aggregation = found[0]
                if type(aggregation).__module__ != _aggregation.__name__:
                    return None  # not one of the SDK's own aggregations
                if type(aggregation) is not _aggregation._DropAggregation:
                    sinks.append((aggregation.aggregate,
                                  aggregation if _offer_inlined(aggregation) else None))
        return tuple(sinks)


def _aggregate(aggregation: Any, amount: float, keep: bool, now: int, attributes: Any,
               ctx: Any) -> None:
    """``aggregation.aggregate(measurement, keep)``, step by step, for :func:`_offer_inlined` ones.

    The explicit-bucket aggregation's own steps under its lock (the value is finite and not
    negative: its bucket is ``bisect_left``'s), then, with ``keep``, its reservoir's offer as
    ``_sample_exemplar`` makes it: the bucket AlignedHistogramBucketExemplarReservoir finds
    by scanning its boundaries is the one ``bisect_left`` finds in them. (The locks are taken
    by acquire/try/finally rather than ``with``: half the instructions, the same release.)
    """
    lock = aggregation._lock
    lock.acquire()
    try:
        if aggregation._value is None:
            aggregation._value = [0] * (len(aggregation._boundaries) + 1)
        aggregation._sum += amount
        if aggregation._record_min_max:  # (min() and max(), as comparisons)
            if amount < aggregation._min:
                aggregation._min = amount
            if amount > aggregation._max:
                aggregation._max = amount
        aggregation._value[bisect_left(aggregation._boundaries, amount)] += 1
    finally:
        lock.release()
    if keep:
        reservoir = aggregation._reservoir
        lock = reservoir._lock
        lock.acquire()
        try:
            reservoir._reservoir_storage[bisect_left(reservoir._boundaries, amount)].offer(
                amount, now, attributes, ctx)
        finally:
            lock.release()


def _new_counts(aggregation: Any) -> list[int]:
    """An explicit-bucket aggregation's empty bucket counts, set as its ``_value``."""
    value = aggregation._value = [0] * (len(aggregation._boundaries) + 1)
    return value


def record_one(aggregation: Any, amount: float, attributes: Any, trace_based: bool) -> None:
    """Record ``amount`` (finite, not negative) into ``aggregation``, the one explicit-bucket
    aggregation bound for ``attributes`` (:func:`_offer_inlined`), as the SDK's record does.

    ``trace_based``: the exemplar filter is the SDK's trace-based one (else always off). The
    filter's decision as the SDK makes it, the aggregation's steps under its lock (see
    :func:`_aggregate`), then, for a kept exemplar, the aligned-bucket reservoir's ``offer``:
    the bucket it picks is the aggregation's (the same boundaries), and for the SDK's
    ExemplarBucket (:func:`_bucket_shape`) and a plain span (:class:`_SpanKinds`) whose
    ``get_span_context`` returns its ``_context``, the bucket's ``offer`` steps are made here
    with that span context's IDs; otherwise the bucket's own ``offer`` is called.
    """
    keep: Any = False
    direct = False
    if trace_based:
        ctx = get_current()
        span = ctx.get(_SPAN_KEY)
        if span is not None:
            if not _direct_spans[type(span)]:
                keep = _trace_based(ctx)
            elif span is not INVALID_SPAN:
                # (The SDK's getter returns ``typing.cast(…, self._context)``: read directly.)
                direct = True
                context = span._context  # type: ignore[attr-defined]
                flags = context[3] if type(context) is _SC_TUPLE else context.trace_flags
                keep = flags & 1 if type(flags) is _SAMPLED_BIT else flags.sampled
    at = bisect_left(aggregation._boundaries, amount)
    lock = aggregation._lock
    lock.acquire()  # (not ``with``: half the instructions, the same release)
    try:
        aggregation._sum += amount
        if aggregation._record_min_max:  # (min() and max(), as comparisons)
            if amount < aggregation._min:
                aggregation._min = amount
            if amount > aggregation._max:
                aggregation._max = amount
        # (The bucket counts, made at the first record after a collection.)
        (aggregation._value or _new_counts(aggregation))[at] += 1
    finally:
        lock.release()
    if not keep:
        return
    reservoir = aggregation._reservoir
    now = time_ns()
    lock = reservoir._lock
    lock.acquire()
    try:
        bucket = reservoir._reservoir_storage[at]
        if direct and type(bucket) is _Bucket:
            # The span is the context's, a Span and not INVALID_SPAN: its IDs are kept.
            plain = type(context) is _SC_TUPLE
            bucket._ExemplarBucket__value = amount
            bucket._ExemplarBucket__time_unix_nano = now
            bucket._ExemplarBucket__attributes = attributes
            bucket._ExemplarBucket__span_id = context[1] if plain else context.span_id
            bucket._ExemplarBucket__trace_id = context[0] if plain else context.trace_id
            bucket._ExemplarBucket__offered = True
        else:
            bucket.offer(amount, now, attributes, ctx)
    finally:
        lock.release()


#: The names each step of an exemplar offer reads, from ``aggregate`` of an explicit-bucket
#: histogram to the bucket (SDK 1.28 to 1.45), for :func:`_offer_inlined`.
_OFFER_NAMES: Final = {
    "aggregate": frozenset({"_boundaries", "_get_empty_bucket_counts", "_lock", "_max", "_min",
                            "_record_min_max", "_sample_exemplar", "_sum", "_value",
                            "bisect_left", "max", "min", "value"}),
    "_sample_exemplar": frozenset({"_reservoir", "attributes", "context", "offer",
                                   "time_unix_nano", "value"}),
    "offer": frozenset({"BucketIndexError", "_find_bucket_index", "_lock",
                        "_reservoir_storage", "offer"}),
    "_find_bucket_index": frozenset({"_boundaries", "enumerate", "len"}),
    "_get_empty_bucket_counts": frozenset({"_boundaries", "len"}),
}


def _own(instance: object, name: str) -> bool:
    """Whether ``instance.name`` is its class's method, not one set on the instance.

    (Asked without ``vars()``: reading an instance's ``__dict__`` makes CPython 3.11+ keep
    it as a real dict, which slows every attribute access of that object from then on.)
    """
    method = getattr(instance, name, None)
    return getattr(method, "__func__", None) is getattr(type(instance), name, None) is not None


def _offer_inlined(aggregation: Any) -> bool:
    """Whether the lean path may make ``aggregation``'s exemplar offer itself.

    Only for the SDK's explicit-bucket histogram aggregation with the SDK's aligned-bucket
    reservoir, each step of the shape this module knows, over strictly increasing finite
    boundaries: then the bucket its reservoir picks (the first boundary >= the value) is
    ``bisect_left(boundaries, value)``, and the rest is the bucket's own ``offer``.
    """
    try:
        from opentelemetry.sdk.metrics._internal.exemplar import exemplar_reservoir as _res
    except ImportError:  # pragma: no cover - an SDK without exemplars
        return False
    histogram = getattr(_aggregation, "_ExplicitBucketHistogramAggregation", None)
    aligned = getattr(_res, "AlignedHistogramBucketExemplarReservoir", None)
    if histogram is None or aligned is None or type(aggregation) is not histogram:
        return False
    reservoir = getattr(aggregation, "_reservoir", None)
    if type(reservoir) is not aligned or not (_own(reservoir, "offer")
                                              and _own(reservoir, "_find_bucket_index")):
        return False
    steps: dict[str, Any] = {
        "aggregate": histogram.aggregate, "_sample_exemplar": histogram._sample_exemplar,
        "offer": getattr(aligned, "offer", None),
        "_find_bucket_index": getattr(aligned, "_find_bucket_index", None),
        "_get_empty_bucket_counts": histogram._get_empty_bucket_counts,
    }
    if any(_names(function) != _OFFER_NAMES[name] for name, function in steps.items()):
        return False
    if not (_own(aggregation, "aggregate") and _own(aggregation, "_sample_exemplar")
            and _own(aggregation, "_get_empty_bucket_counts")):
        return False
    boundaries = getattr(reservoir, "_boundaries", None)
    storage = getattr(reservoir, "_reservoir_storage", None)
    own = getattr(aggregation, "_boundaries", None)
    return (
        type(own) is tuple  # (the aggregation's: sorted and finite as the reservoir's)
        and list(own) == list(boundaries or ())
        and type(getattr(aggregation, "_lock", None)).__name__ in ("lock", "RLock")
        and isinstance(boundaries, (list, tuple))
        and all(type(b) in (int, float) and math.isfinite(b) for b in boundaries)
        and all(a < b for a, b in itertools.pairwise(boundaries))
        and type(storage).__name__ == "defaultdict"
        and type(getattr(reservoir, "_lock", None)).__name__ in ("lock", "RLock")
    )


def _meter_config_proxy(histogram: Any) -> Any:
    """The meter config proxy whose ``_config.is_enabled`` answers ``histogram._is_enabled()``.

    SDK 1.41 to 1.45: ``_is_enabled`` is ``self._meter_config is None or
    self._meter_config.is_enabled``, where the config is the meter's ``_ProxyMeterConfig``
    whose ``is_enabled`` reads ``self._config.is_enabled`` (a plain field of the config the
    meter configurator swaps in). None when that is not the shape: ``_is_enabled()`` is called.
    """
    try:
        from opentelemetry.sdk.metrics import _internal as _meters
    except ImportError:  # pragma: no cover
        return None
    proxy_type = getattr(_meters, "_ProxyMeterConfig", None)
    proxy = getattr(histogram, "_meter_config", None)
    prop = getattr(proxy_type, "is_enabled", None)
    if (
        proxy_type is None or type(proxy) is not proxy_type or not _own(histogram, "_is_enabled")
        or _names(getattr(type(histogram), "_is_enabled", None))
        != frozenset({"_meter_config", "is_enabled"})
        or type(prop) is not property
        or _names(prop.fget) != frozenset({"_config", "is_enabled"})
    ):
        return None
    return proxy


class _SpanKinds(dict[type, bool]):
    """Span classes seen by the trace-based filter: True for a Span class whose ``!=`` is
    identity, so that ``isinstance(span, Span) and span != INVALID_SPAN`` is
    ``span is not INVALID_SPAN``. An unseen class is judged at its first lookup."""

    def __missing__(self, kind: type) -> bool:
        plain = (issubclass(kind, Span) and kind.__eq__ is object.__eq__
                 and kind.__ne__ is object.__ne__)
        if len(self) < 64:
            self[kind] = plain
        return plain


_plain_spans: Final = _SpanKinds()


class _DirectSpans(dict[type, bool]):
    """Span classes seen by :func:`record_one`: True for a plain one (:class:`_SpanKinds`)
    whose ``get_span_context`` returns its ``_context`` field (:func:`_bucket_shape`), read
    directly then. An unseen class is judged at its first lookup."""

    def __missing__(self, kind: type) -> bool:
        direct = bool(_plain_spans[kind]
                      and getattr(kind, "get_span_context", None) in _SPAN_CONTEXT_GETTERS)
        if len(self) < 64:
            self[kind] = direct
        return direct


_direct_spans: Final = _DirectSpans()
_SAMPLED_NAMES: Final = frozenset({"SAMPLED", "TraceFlags", "bool"})
_FLAGS_INLINE: Final = (_names(getattr(TraceFlags.__dict__.get("sampled"), "fget", None))
                        == _SAMPLED_NAMES and TraceFlags.SAMPLED == 1)
#: The flags type whose ``sampled`` is ``flags & 1`` (None: the property is read).
_SAMPLED_BIT: Final = TraceFlags if _FLAGS_INLINE else None
#: SpanContext when it is the 6-tuple (trace_id, span_id, …, trace_flags, …) whose
#: properties read those items (None: the properties are read).
_SC_TUPLE: Final = SpanContext if TUPLE_LAYOUT and all(
    type(prop) is property and _names(prop.fget) == frozenset()
    for prop in (SpanContext.__dict__.get(name) for name in ("trace_id", "span_id", "trace_flags"))
) else None


def _trace_based(ctx: Any) -> bool:
    """``TraceBasedExemplarFilter.should_sample``: whether ``ctx``'s span is sampled.

    ``isinstance(span, Span) and span != INVALID_SPAN`` is decided once per span class
    (:class:`_SpanKinds`), and the flag's ``sampled`` property is read as ``flags & 1``.
    """
    span = ctx.get(_SPAN_KEY)
    if span is None:
        return False
    if not _plain_spans[type(span)]:
        return bool(isinstance(span, Span) and span != INVALID_SPAN
                    and span.get_span_context().trace_flags.sampled)
    if span is INVALID_SPAN:  # (`!=` is identity for such a class)
        return False
    flags = span.get_span_context().trace_flags
    return bool(flags & 1) if type(flags) is _SAMPLED_BIT else bool(flags.sampled)




def _bucket_shape() -> tuple[Any, Any]:
    """The SDK's ExemplarBucket and the span classes' ``get_span_context`` functions whose
    offer :func:`record_one` may make itself: (None, ()) when not the known shape.

    ``ExemplarBucket.offer`` (SDK 1.28 to 1.45) stores the value, time and attributes, the
    IDs of the context's span unless it is INVALID_SPAN, and marks itself offered; the
    getters listed return the span's ``_context`` field, the object the filter read.
    """
    try:
        from opentelemetry.sdk.metrics._internal.exemplar import exemplar_reservoir as _res
        from opentelemetry.sdk.trace import Span as _SdkSpan
        from opentelemetry.trace import NonRecordingSpan
    except ImportError:  # pragma: no cover - an SDK without exemplars
        return None, ()
    bucket = getattr(_res, "ExemplarBucket", None)
    fields = frozenset(f"_ExemplarBucket__{name}" for name in (
        "value", "time_unix_nano", "attributes", "span_id", "trace_id", "offered"))
    if (
        type(bucket) is not type
        or _names(bucket.__dict__.get("offer")) != fields | _BUCKET_OFFER_READS
        or _names(bucket.__dict__.get("__init__")) != fields
        or "__slots__" in bucket.__dict__
    ):
        return None, ()
    getters = tuple(
        getter for getter in (_SdkSpan.__dict__.get("get_span_context"),
                              NonRecordingSpan.__dict__.get("get_span_context"))
        if _names(getter) in _CONTEXT_GETTER_NAMES)
    return bucket, getters


#: What ExemplarBucket.offer reads besides its own fields.
_BUCKET_OFFER_READS: Final = frozenset({"INVALID_SPAN", "get_current_span", "get_span_context",
                                        "span_id", "trace", "trace_id"})
#: A span's ``get_span_context`` that returns its ``_context`` (the SDK's casts it).
_CONTEXT_GETTER_NAMES: Final = (frozenset({"_context"}),
                                frozenset({"typing", "_context", "cast", "SpanContext",
                                           "trace_api"}))
_Bucket, _SPAN_CONTEXT_GETTERS = _bucket_shape()
_TRACE_BASED: Final = object()
_ALWAYS_OFF: Final = object()
#: The names TraceBasedExemplarFilter.should_sample (1.28-1.45) and get_current_span read.
_TRACE_BASED_NAMES: Final = frozenset({"INVALID_SPAN", "get_current_span", "get_span_context",
                                       "sampled", "trace", "trace_flags"})
_CURRENT_SPAN_NAMES: Final = frozenset({"INVALID_SPAN", "Span", "_SPAN_KEY", "get_value",
                                        "isinstance"})


def _sampler(exemplar_filter: Any) -> Any:
    """The filter's ``should_sample``; a marker for the SDK's trace-based or always-off one."""
    try:
        from opentelemetry.sdk.metrics._internal.exemplar import exemplar_filter as filters
        from opentelemetry.trace import propagation
    except ImportError:  # pragma: no cover - checked by _shape already
        return exemplar_filter.should_sample
    kind = type(exemplar_filter)
    method = kind.__dict__.get("should_sample")
    if (kind is filters.TraceBasedExemplarFilter and _names(method) == _TRACE_BASED_NAMES
            and _names(propagation.get_current_span) == _CURRENT_SPAN_NAMES
            and propagation._SPAN_KEY == _SPAN_KEY
            and getattr(propagation, "INVALID_SPAN", None) is INVALID_SPAN
            and "should_sample" not in vars(exemplar_filter)):
        return _TRACE_BASED
    if (kind is filters.AlwaysOffExemplarFilter and _names(method) == frozenset()
            and "should_sample" not in vars(exemplar_filter)
            and method.__code__.co_consts[-1:] == (False,)):  # type: ignore[union-attr]
        return _ALWAYS_OFF
    return exemplar_filter.should_sample


def lean_histogram(histogram: Any) -> Any:
    """``histogram``'s :class:`LeanHistogram`, or its own ``record`` when its SDK is not a
    known shape (either is called as ``record(amount, attributes)``)."""
    global _known
    if _known is None:
        try:
            _known = _shape()
        except Exception as exc:  # a shape so different that the probe itself failed
            _known = (f"the probe failed ({type(exc).__name__}: {exc})", False)
        if _known[0] is not None:
            _logger.debug("hoptrace: SDK histograms take the SDK's path: %s", _known[0])
    reason, exemplars = _known
    if (
        reason is not None
        or not isinstance(histogram, _instrument.Histogram)
        or type(histogram).record is not _instrument.Histogram.__dict__["record"]
        or not _own(histogram, "record")  # (someone wrapped this instrument's record)
        or type(getattr(histogram, "_measurement_consumer", None))
        is not _consumer.SynchronousMeasurementConsumer
    ):
        return histogram.record
    return LeanHistogram(histogram, exemplars)


__all__: Final = ["LeanHistogram", "lean_histogram", "record_one"]
