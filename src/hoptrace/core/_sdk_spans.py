"""A lean span recorder for the OTel SDK's tracer (imported only when the SDK is in use).

:meth:`Recorder.start` is ``opentelemetry.sdk.trace.Tracer.start_span`` step by step, for each
version of that method this module knows (SDK 1.20 to 1.45). The span it starts is an SDK span:
:class:`HopSpan` subclasses the SDK's ``_Span``, is built by the SDK's own ``__init__`` and
``start``, and keeps every other SDK method: attributes, events and links with their limits
and dropped counts, status, ``record_exception``, the lock, ``end`` and the ``ReadableSpan``
snapshot that ``on_end`` gets. Two steps cost less than in the SDK:

- a ``ParentBased`` sampler whose four parent delegates are ``StaticSampler`` (the SDK's
  default, and ``ParentBased(TraceIdRatioBased(r))``) decides a child by table lookup, with
  the same decision and trace state; a root goes straight to the root delegate, called as
  ``ParentBased`` calls it;
- attribute values the SDK would store unchanged (a plain ``str``, ``bool``, ``int`` or
  ``float`` under a non-empty ``str`` key, within the span's count and length limits) go into
  the span's ``BoundedAttributes`` as they are, not through its per-value check. Any other
  value, or any limit they would hit, takes the SDK's path for the whole set.

:meth:`Recorder.dropped_child` answers before any of that: when such a table says the child of
a given parent is dropped (an unsampled parent, under the default delegates), it returns the
``NonRecordingSpan`` the SDK would, so a caller need not build the name, attributes or links
of a span that records nothing. :meth:`Recorder.start_lazy` does the same for a root under
``ParentBased(TraceIdRatioBased(r))``: it takes the trace ID from the ID generator and decides
it as that sampler does before the caller's attributes are built.

At first use for a tracer, :func:`recorder_for` checks that the SDK has the shape this module
knows. When it does not, hoptrace calls ``tracer.start_span`` and says why once, at debug level.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import FunctionType
from typing import Any, Final, NamedTuple, cast

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, Tracer, _Span
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import DEFAULT_TRACE_STATE, Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from .otel_shims import SPAN_KEY as _SPAN_KEY
from .spans import UncheckedAttributes

_logger = logging.getLogger("hoptrace")

_RANDOM_FLAG: Final[int] = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
#: Trace flags by (sampled | random trace ID << 1).
_FLAGS: Final = tuple(
    TraceFlags((TraceFlags.SAMPLED if i & 1 else TraceFlags.DEFAULT)
               | (_RANDOM_FLAG if i & 2 else 0))
    for i in range(4)
)

_tuple_new = tuple.__new__
_SPAN_ID_MAX: Final = (1 << 64) - 1
_TRACE_ID_MAX: Final = (1 << 128) - 1
#: (is_sampled(), is_recording()) of each sampling decision.
_DECISIONS: Final = {d: (bool(cast(Any, d).is_sampled()), bool(cast(Any, d).is_recording()))
                     for d in Decision}


def _tuple_layout() -> bool:
    """Whether SpanContext is the 6-tuple (trace_id, span_id, is_remote, flags, state, valid)."""
    if type(SpanContext.__dict__.get("__new__")) not in (FunctionType, staticmethod):
        return False
    flags = TraceFlags(1)
    made = SpanContext(1, 2, is_remote=False, trace_flags=flags, trace_state=DEFAULT_TRACE_STATE)
    invalid = SpanContext(1, 0, is_remote=True)
    return (isinstance(made, tuple) and tuple(made) == (1, 2, False, flags, DEFAULT_TRACE_STATE,
                                                        True)
            and tuple(invalid) == (1, 0, True, TraceFlags(0), DEFAULT_TRACE_STATE, False)
            and made.is_valid and not made.is_remote and made.span_id == 2)


_TUPLE_LAYOUT: Final = _tuple_layout()

#: The names ``Tracer.start_span`` reads in SDK 1.20 to 1.39; later versions add to them.
_NAMES_1_20: Final = frozenset({
    "DEFAULT", "NonRecordingSpan", "SAMPLED", "SpanContext", "TraceFlags", "TypeError", "_Span",
    "_instrumentation_scope", "_span_limits", "attributes", "decision", "generate_span_id",
    "generate_trace_id", "get_current_span", "get_span_context", "id_generator",
    "instrumentation_info", "is_recording", "is_sampled", "is_valid", "isinstance", "resource",
    "sampler", "should_sample", "span_processor", "start", "trace_api", "trace_id",
    "trace_state",
})
#: 1.40: a disabled tracer returns a non-recording span; internal metrics per span.
_NAMES_1_40: Final = _NAMES_1_20 | {"_is_enabled", "_tracer_metrics", "start_span"}
#: 1.42.0: the random-trace-ID flag, from the ID generator.
_NAMES_1_42: Final = _NAMES_1_40 | {"RANDOM_TRACE_ID", "is_trace_id_random"}
#: 1.42.1: the random-trace-ID flag of a child comes from its parent.
_NAMES_1_42_1: Final = _NAMES_1_42 | {"random_trace_id", "trace_flags"}
#: The fields of a BoundedAttributes: SDK 1.20 to 1.32 and 1.45; 1.33 to 1.44 add one.
_BOUNDED_FIELDS: Final = frozenset({"maxlen", "dropped", "max_value_len", "_dict", "_lock",
                                    "_immutable"})
_BOUNDED_FIELDS_1_33: Final = _BOUNDED_FIELDS | {"_extended_attributes"}
_SAMPLER_FIELDS: Final = ("_root", "_local_parent_sampled", "_local_parent_not_sampled",
                          "_remote_parent_sampled", "_remote_parent_not_sampled")
_TRACER_FIELDS: Final = frozenset({"sampler", "resource", "span_processor", "id_generator",
                                   "instrumentation_info", "_span_limits",
                                   "_instrumentation_scope"})


class Variant(NamedTuple):
    """What one known version of ``Tracer.start_span`` does beyond SDK 1.20's."""

    gated: bool  # checks _is_enabled(), counts the span in _tracer_metrics (1.40)
    links_or_empty: bool  # passes ``links or ()`` on (1.41)
    random_flag: int  # 0: no random-trace-ID flag; 1: the generator's (1.42.0); 2: the parent's
    copy_attributes: bool  # copies the sampler's attributes before the span does (to 1.42.1)


def _sdk_version() -> tuple[int, ...]:
    try:
        from opentelemetry.sdk.version import __version__
    except ImportError:  # pragma: no cover - every SDK release has it
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", __version__)[:3])


def start_span_variant() -> Variant | None:
    """The installed SDK's ``Tracer.start_span``, as a :class:`Variant`; None if unknown."""
    method = Tracer.__dict__.get("start_span")
    if type(method) is not FunctionType:  # wrapped by someone: it must run
        return None
    names = frozenset(method.__code__.co_names)
    copy_attributes = "copy" in names
    names -= {"copy"}
    if names == _NAMES_1_20:
        return Variant(False, False, 0, copy_attributes)
    if names == _NAMES_1_40:
        minor = _sdk_version()[:2]  # 1.40 and 1.41 differ only in `links = links or ()`
        if minor in ((1, 40), (1, 41)):
            return Variant(True, minor == (1, 41), 0, copy_attributes)
        return None
    if names == _NAMES_1_42:
        return Variant(True, True, 1, copy_attributes)
    if names == _NAMES_1_42_1:
        return Variant(True, True, 2, copy_attributes)
    return None


def _static_decisions(sampler: object) -> tuple[Decision | None, ...] | None:
    """Decisions of a ParentBased sampler whose parent delegates decide statically, else None.

    The order is: root, local parent sampled, local not sampled, remote sampled, remote not
    sampled. The root's entry is None when the root delegate is not a ``StaticSampler``
    (``TraceIdRatioBased``, say): that one is then asked, as ``ParentBased`` would ask it.
    """
    if type(sampler) is not ParentBased or set(vars(sampler)) != set(_SAMPLER_FIELDS):
        return None
    for cls in (ParentBased, StaticSampler):
        if type(cls.__dict__.get("should_sample")) is not FunctionType:
            return None
    decisions: list[Decision | None] = []
    for name in _SAMPLER_FIELDS:
        delegate = getattr(sampler, name)
        decision = getattr(delegate, "_decision", None)
        if type(delegate) is StaticSampler and isinstance(decision, Decision):
            decisions.append(decision)
        elif name == "_root":
            decisions.append(None)
        else:
            return None
    return tuple(decisions)


#: The names ``TraceIdRatioBased.should_sample`` reads (SDK 1.20 to 1.45): it samples when
#: ``trace_id & TRACE_ID_LIMIT < bound``, keeps no attributes when it drops, and takes the
#: parent's trace state (none for a root).
_RATIO_NAMES: Final = frozenset({"DROP", "Decision", "RECORD_AND_SAMPLE", "SamplingResult",
                                 "TRACE_ID_LIMIT", "_get_parent_trace_state", "bound"})


def _known_ratio(delegate: object) -> TraceIdRatioBased | None:
    """``delegate`` if it is the SDK's own ``TraceIdRatioBased`` as this module knows it."""
    # (No vars(delegate): reading an instance's __dict__ slows its attribute reads in 3.11.)
    if (type(delegate) is not TraceIdRatioBased
            or getattr(getattr(delegate, "should_sample", None), "__func__", None)
            is not TraceIdRatioBased.__dict__.get("should_sample")):
        return None
    method = TraceIdRatioBased.__dict__.get("should_sample")
    bound = TraceIdRatioBased.__dict__.get("bound")
    if (type(method) is not FunctionType or frozenset(method.__code__.co_names) != _RATIO_NAMES
            or type(bound) is not property or bound.fget is None
            or bound.fget.__code__.co_names != ("_bound",)
            or type(getattr(delegate, "_bound", None)) is not int
            or type(getattr(delegate, "TRACE_ID_LIMIT", None)) is not int):
        return None
    return delegate


_GATE_NAMES: Final = ("_tracer_config", "is_enabled")


def _names_of(method: object) -> tuple[str, ...] | None:
    """The names a plain function's code reads; None for anything else."""
    return method.__code__.co_names if type(method) is FunctionType else None


def _noop_tracer_metrics(tracer: Any) -> object:
    """``tracer._tracer_metrics`` if it is the SDK's no-op counter (its start_span does nothing
    but return a no-op callable, whose result a dropped span never uses), else a marker."""
    metrics = getattr(tracer, "_tracer_metrics", None)
    kind = type(metrics)
    if (kind.__name__ == "NoOpTracerMetrics"
            and kind.__module__ == "opentelemetry.sdk.trace._tracer_metrics"
            and _names_of(kind.__dict__.get("start_span")) == ("noop",)
            and getattr(getattr(metrics, "start_span", None), "__func__", None)
            is kind.__dict__.get("start_span")):
        return metrics
    return _NOT_NOOP


_NOT_NOOP: Final = object()


def _span_shape_refusal(tracer: Any, variant: Variant) -> str | None:
    """Why the SDK's span would not take attributes the way :meth:`Recorder.start` gives them."""
    limits = tracer._span_limits
    extra: dict[str, Any] = {"record_end_metrics": None} if variant.gated else {}
    probe = _Span(
        "hoptrace.probe", trace_api.INVALID_SPAN_CONTEXT, None, sampler=tracer.sampler,
        resource=tracer.resource, attributes=None, span_processor=SpanProcessor(),
        kind=SpanKind.INTERNAL, links=(), instrumentation_info=tracer.instrumentation_info,
        limits=limits, instrumentation_scope=tracer._instrumentation_scope, **extra,
    )
    attributes = getattr(probe, "_attributes", None)
    if type(attributes) is not BoundedAttributes or set(vars(attributes)) not in (
        _BOUNDED_FIELDS, _BOUNDED_FIELDS_1_33
    ) or getattr(attributes, "_extended_attributes", False) is not False:
        return "the SDK span's attributes are not the BoundedAttributes this recorder knows"
    if (attributes.maxlen != limits.max_span_attributes
            or attributes.max_value_len != limits.max_span_attribute_length
            or attributes._immutable or attributes.dropped
            or type(attributes._dict) not in (dict, OrderedDict) or attributes._dict):
        return "the SDK span does not apply its span limits the way this recorder knows"
    sample: dict[str, AttributeValue] = {"s": "v", "b": True, "i": 1, "f": 1.5}
    if list(BoundedAttributes(None, sample, False, None)._dict.items()) != list(sample.items()):
        return "BoundedAttributes changes plain values"
    return None


def _refusal(tracer: Any) -> tuple[str | None, Variant | None]:
    """Why this recorder cannot start spans for ``tracer`` (None if it can), and the variant."""
    if type(tracer) is not Tracer:
        return f"tracer class {type(tracer).__qualname__} is not the SDK's Tracer", None
    variant = start_span_variant()
    if variant is None:
        version = ".".join(map(str, _sdk_version())) or "?"
        return f"Tracer.start_span of opentelemetry-sdk {version} is not one it knows", None
    fields = set(vars(tracer))
    needed = _TRACER_FIELDS | ({"_tracer_metrics"} if variant.gated else set())
    if not needed <= fields or (variant.gated and not callable(getattr(tracer, "_is_enabled",
                                                                        None))):
        return f"the tracer lacks {sorted(needed - fields) or ['_is_enabled']}", None
    if type(tracer._span_limits) is not SpanLimits:
        return "the tracer's span limits are not an SDK SpanLimits", None
    return _span_shape_refusal(tracer, variant), variant


#: What the probe found, per tracer: a Recorder, or None for tracer.start_span.
_recorders: weakref.WeakKeyDictionary[Any, Recorder | None] = weakref.WeakKeyDictionary()


def recorder_for(tracer: Any) -> Recorder | None:
    """Return a recorder for an SDK ``Tracer``, or None when the SDK has another shape."""
    try:
        return _recorders[tracer]
    except (KeyError, TypeError):
        pass
    try:
        reason, variant = _refusal(tracer)
    except Exception as exc:  # a shape so different that the probe itself failed
        reason, variant = f"the probe failed ({type(exc).__name__}: {exc})", None
    recorder = None
    if reason is None and variant is not None:
        recorder = Recorder(tracer, variant)
    else:
        _logger.debug("hoptrace: spans go through tracer.start_span: %s", reason)
    try:
        _recorders[tracer] = recorder
    except TypeError:  # pragma: no cover - not weakly referenceable
        pass
    return recorder


def forget_probes() -> None:
    """Forget what the probes found (for tests that change the SDK's shape)."""
    _recorders.clear()


def _plain(attributes: Mapping[str, Any], limits: SpanLimits) -> bool:
    """Whether the SDK would store ``attributes`` unchanged, in order, dropping none."""
    count = limits.max_span_attributes
    if count is not None and len(attributes) > count:
        return False
    length = limits.max_span_attribute_length
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            if length is not None and len(value) > length:
                return False
        elif kind is not bool and kind is not int and kind is not float:
            return False
        if type(key) is not str or not key:
            return False
    return True


class Recorder:
    """Starts :class:`HopSpan` objects for one SDK tracer, as its ``start_span`` would."""

    __slots__ = ("_decisions", "_drops", "_gate_inline", "_noop_metrics", "_ratio", "_sampler",
                 "tracer", "variant")

    def __init__(self, tracer: Any, variant: Variant) -> None:
        self.tracer = tracer
        self.variant = variant
        self._sampler: Any = None
        self._decisions: tuple[Decision | None, ...] | None = None
        self._drops: tuple[bool, ...] | None = None
        self._ratio: TraceIdRatioBased | None = None
        #: ``tracer._is_enabled()`` is ``tracer._tracer_config.is_enabled`` (SDK 1.40 to 1.45)
        self._gate_inline = variant.gated and _names_of(getattr(type(tracer), "_is_enabled",
                                                                None)) == _GATE_NAMES
        #: The tracer's own span counter when it is the SDK's no-op one: a drop skips the call.
        self._noop_metrics = _noop_tracer_metrics(tracer) if variant.gated else None
        self._use(tracer.sampler)

    def start(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link] | None,
        start_time: int | None,
        span_id: int | None,
        root_trace_id: int | None = None,
    ) -> trace_api.Span:
        """Start a span as ``tracer.start_span`` would (``span_id``, if given, is used as is).

        ``root_trace_id``: the trace ID :meth:`start_lazy` took from the ID generator for
        this span, should it be a root (it is used instead of asking for another).
        """
        tracer = self.tracer
        variant = self.variant
        if variant.links_or_empty:
            links = links or ()
        parent: Any = trace_api.get_current_span(context).get_span_context()
        if parent is not None and not isinstance(parent, SpanContext):
            raise TypeError("parent_span_context must be a SpanContext or None.")
        if variant.gated and not tracer._is_enabled():
            return trace_api.NonRecordingSpan(context=cast(SpanContext, parent))
        id_generator = tracer.id_generator
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = (id_generator.generate_trace_id() if root_trace_id is None
                        else root_trace_id)
        else:
            trace_id = parent.trace_id
        sampler = tracer.sampler
        decision, trace_state, given = self._sample(
            sampler, context, parent, trace_id, name, kind, attributes, links
        )
        random = False
        if variant.random_flag == 2:
            random = (id_generator.is_trace_id_random() if parent is None
                      else parent.trace_flags.random_trace_id)
        elif variant.random_flag == 1:
            random = id_generator.is_trace_id_random()
        known = _DECISIONS.get(decision) if type(decision) is Decision else None
        sampled, recording = known if known is not None else (
            decision.is_sampled(), decision.is_recording())
        span_id = span_id or id_generator.generate_span_id()
        flags = _FLAGS[sampled | (2 if random else 0)]
        if _TUPLE_LAYOUT:  # what SpanContext.__new__ builds, without its property calls
            span_context = _tuple_new(SpanContext, (
                trace_id, span_id, False, flags,
                DEFAULT_TRACE_STATE if trace_state is None else trace_state,
                0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX,
            ))
        else:  # pragma: no cover - an API whose SpanContext is laid out otherwise
            span_context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags,
                                       trace_state=trace_state)
        record_end_metrics = (
            tracer._tracer_metrics.start_span(parent, decision) if variant.gated else None
        )
        if not recording:
            return trace_api.NonRecordingSpan(context=span_context)
        limits = tracer._span_limits
        fast = not given or _plain(given, limits)
        if fast:
            initial = None
        elif variant.copy_attributes:
            initial = cast(Any, given).copy()
        else:
            initial = given
        extra: dict[str, Any] = (
            {"record_end_metrics": record_end_metrics} if variant.gated else {}
        )
        span = HopSpan(
            name=name, context=span_context, parent=parent, sampler=sampler,
            resource=tracer.resource, attributes=initial, span_processor=tracer.span_processor,
            kind=kind, links=cast(Any, links), instrumentation_info=tracer.instrumentation_info,
            record_exception=True, set_status_on_exception=True, limits=limits,
            instrumentation_scope=tracer._instrumentation_scope, **extra,
        )
        if fast and given:
            cast(BoundedAttributes, span._attributes)._dict.update(given)
        span.start(start_time=start_time, parent_context=context)
        return span

    def start_lazy(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: Callable[[], dict[str, AttributeValue]],
    ) -> trace_api.Span:
        """:meth:`start`, with ``attributes()`` called only when the decision may read them.

        A span the sampler is known to drop without reading its attributes gets the SDK's
        ``NonRecordingSpan`` at once: a child of an unsampled parent under static delegates
        (:meth:`dropped_child`), or a root whose ``ParentBased`` root delegate is the SDK's
        ``TraceIdRatioBased``, decided from the new trace ID as that sampler decides it. A
        root it samples takes :meth:`start` with that same trace ID. Anything else is
        :meth:`start` with the attributes built.
        """
        tracer = self.tracer
        if tracer.sampler is not self._sampler:
            self._use(tracer.sampler)
        ratio = self._ratio
        current = context.get(_SPAN_KEY)  # get_current_span(context), without its two calls
        if current is None or not isinstance(current, trace_api.Span):
            current = trace_api.INVALID_SPAN
        parent: Any = current.get_span_context()
        if type(parent) is not SpanContext:
            pass  # start() decides (and raises for a parent that is not a SpanContext)
        elif parent.is_valid:
            dropped = self.dropped_child(parent)
            if dropped is not None:
                return dropped
        elif ratio is not None:  # a root, decided as ParentBased's ratio delegate decides
            variant = self.variant
            if variant.gated and not (tracer._tracer_config.is_enabled if self._gate_inline
                                      else tracer._is_enabled()):
                return trace_api.NonRecordingSpan(context=parent)
            id_generator = tracer.id_generator
            trace_id = id_generator.generate_trace_id()
            if trace_id & ratio.TRACE_ID_LIMIT < ratio._bound:  # sampled: the whole start
                return self.start(name, context, kind, attributes(), None, None, None, trace_id)
            random = variant.random_flag != 0 and id_generator.is_trace_id_random()
            span_id = id_generator.generate_span_id()
            if _TUPLE_LAYOUT:
                span_context = _tuple_new(SpanContext, (
                    trace_id, span_id, False, _FLAGS[2 if random else 0], DEFAULT_TRACE_STATE,
                    0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX,
                ))
            else:  # pragma: no cover - an API whose SpanContext is laid out otherwise
                span_context = SpanContext(trace_id, span_id, is_remote=False,
                                           trace_flags=_FLAGS[2 if random else 0])
            if variant.gated and tracer._tracer_metrics is not self._noop_metrics:
                tracer._tracer_metrics.start_span(None, Decision.DROP)
            return trace_api.NonRecordingSpan(context=span_context)
        return self.start(name, context, kind, attributes(), None, None, None)

    def dropped_child(
        self, parent: SpanContext, span_id: int | None = None
    ) -> trace_api.Span | None:
        """The span :meth:`start` would return for a child of ``parent`` that the sampler drops.

        Only for a ``ParentBased`` sampler whose delegate for ``parent`` (local or remote,
        sampled or not) is a ``StaticSampler`` that drops: that decision reads neither the
        span's name, kind, attributes, links nor baggage, so the caller need not build them.
        The span is the SDK's: a ``NonRecordingSpan`` with a new span ID from the ID
        generator (or ``span_id``), the parent's trace ID and trace state, the trace flags
        the SDK gives it; the tracer's own metrics count it. Returns None whenever the
        decision is not such a drop (then :meth:`start` must run, with the attributes).
        """
        tracer = self.tracer
        if tracer.sampler is not self._sampler:
            self._use(tracer.sampler)
        drops = self._drops
        if drops is None or type(parent) is not SpanContext:
            return None
        if _TUPLE_LAYOUT:  # one unpack instead of five property calls
            trace_id, _, remote, flags, state, valid = parent
        else:  # pragma: no cover - an API whose SpanContext is laid out otherwise
            trace_id, remote, flags, state, valid = (
                parent.trace_id, parent.is_remote, parent.trace_flags, parent.trace_state,
                parent.is_valid)
        if not valid or not drops[(2 if remote else 0) + (0 if flags & 1 else 1)]:
            return None
        variant = self.variant
        if variant.gated and not (tracer._tracer_config.is_enabled if self._gate_inline
                                  else tracer._is_enabled()):
            return trace_api.NonRecordingSpan(context=parent)
        id_generator = tracer.id_generator
        random = False
        if variant.random_flag == 2:
            random = bool(flags & _RANDOM_FLAG)
        elif variant.random_flag == 1:
            random = id_generator.is_trace_id_random()
        span_id = span_id or id_generator.generate_span_id()
        new_flags = _FLAGS[2 if random else 0]  # not sampled
        if _TUPLE_LAYOUT:  # what SpanContext.__new__ builds, without its checks repeated
            span_context = _tuple_new(SpanContext, (
                trace_id, span_id, False, new_flags,
                DEFAULT_TRACE_STATE if state is None else state,
                0 < span_id <= _SPAN_ID_MAX,
            ))
        else:  # pragma: no cover
            span_context = SpanContext(trace_id, span_id, is_remote=False,
                                       trace_flags=new_flags, trace_state=state)
        if variant.gated and tracer._tracer_metrics is not self._noop_metrics:
            tracer._tracer_metrics.start_span(parent, Decision.DROP)
        return trace_api.NonRecordingSpan(context=span_context)

    def _use(self, sampler: Any) -> None:
        """Read ``sampler``'s static decisions, and which of its parent cases drop."""
        decisions = _static_decisions(sampler)
        self._sampler, self._decisions = sampler, decisions
        self._ratio = (_known_ratio(sampler._root)
                       if decisions is not None and decisions[0] is None else None)
        # By (remote, parent not sampled): local sampled, local not, remote sampled, remote not.
        self._drops = None if decisions is None else tuple(
            decision is Decision.DROP for decision in decisions[1:]
        )

    def _sample(
        self, sampler: Any, context: Context, parent: SpanContext | None, trace_id: int,
        name: str, kind: SpanKind, attributes: dict[str, AttributeValue],
        links: Sequence[Link] | None,
    ) -> tuple[Any, Any, Mapping[str, Any] | None]:
        """The sampling decision, trace state and attributes, as ``sampler`` would give them."""
        if sampler is not self._sampler:
            self._use(sampler)
        decisions = self._decisions
        if decisions is None:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            return result.decision, result.trace_state, result.attributes
        # What ParentBased over StaticSamplers returns, without the calls.
        if parent is None:
            if decisions[0] is None:  # the root delegate decides, asked as ParentBased asks
                result = sampler._root.should_sample(
                    parent_context=context, trace_id=trace_id, name=name, kind=kind,
                    attributes=attributes, links=links,
                )
                return result.decision, result.trace_state, result.attributes
            return decisions[0], None, attributes
        decision = decisions[(3 if parent.is_remote else 1)
                             + (0 if parent.trace_flags.sampled else 1)]
        return decision, parent.trace_state, attributes


class HopSpan(_Span, UncheckedAttributes):
    """A span started by :class:`Recorder`: the SDK's span class, methods and snapshots."""

    def set_unchecked_attribute(self, key: str, value: AttributeValue) -> None:
        """Set an attribute hoptrace built, as hoptrace sets it on any recording span."""
        if self._end_time is None:
            self.set_attribute(key, value)


__all__: Final = ["HopSpan", "Recorder", "Variant", "forget_probes", "recorder_for",
                  "start_span_variant"]
