"""The OTel SDK's tracer, seen from hoptrace (imported only when the SDK is in use).

Every span that records is started by the tracer's own ``start_span``. This module adds two
things around it, for the SDK's ``Tracer`` of the versions it knows (SDK 1.20 to 1.45):

- **Fixed IDs.** :meth:`Starter.start` can give the new span an ID chosen in advance (a
  delivery that may die unacknowledged, which a redelivery in another process must be able
  to link to). Once per tracer, the tracer's ID generator is wrapped in :class:`PendingIds`,
  which hands out an ID set just before ``tracer.start_span`` runs and else asks the
  generator it wraps. The span then gets that ID, and the generator is asked nothing else for
  it; any user's ID generator keeps working.
- **Sampling shortcuts** (``fast_spans``). :meth:`Starter.dropped_child` answers for a span
  the sampler provably drops before anything is built: the child of an unsampled parent
  under a ``ParentBased`` sampler whose parent delegates are ``StaticSampler`` (the SDK's
  default, and ``ParentBased(TraceIdRatioBased(r))``). It returns the ``NonRecordingSpan`` the
  SDK would, so a caller need not build the name, attributes or links of a span that
  records nothing. :meth:`Starter.start_lazy` does the same for a root under
  ``ParentBased(TraceIdRatioBased(r))``: it takes the trace ID from the ID generator and
  decides it as that sampler does, before the caller's attributes are built; a root it keeps
  goes to ``tracer.start_span`` with that same trace ID. Built, the C module runs both
  (:data:`dropped_child_of`, :data:`start_lazy_of`: the same steps in one call, the
  starter's own fields read from its ``_state`` tuple). Where the ID generator is the SDK's
  ``RandomIdGenerator`` or a subclass of it, and the method called is still that class's
  own (inherited, not overridden nor set on the instance), the C module runs its body itself
  (:func:`_inline_ids`: the same ``random.getrandbits`` draws, in the same order); an
  overriding method is called.

At first use for a tracer, :func:`starter_for` checks that the SDK has the shape this module
knows. When it does not, hoptrace uses ``tracer.start_span`` alone and says why once, at
debug level.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from types import FunctionType, SimpleNamespace
from typing import Any, Final, NamedTuple

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    INVALID_SPAN_CONTEXT,
    Link,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from .ids import TUPLE_LAYOUT as _TUPLE_LAYOUT
from .otel_shims import SPAN_KEY as _SPAN_KEY

_logger = logging.getLogger("hoptrace")

_RANDOM_FLAG: Final[int] = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
#: Trace flags of an unsampled span, by (random trace ID << 1).
_FLAGS: Final = tuple(
    TraceFlags(TraceFlags.DEFAULT | (_RANDOM_FLAG if i & 2 else 0)) for i in range(4)
)

_tuple_new = tuple.__new__
_object_new = object.__new__
_SPAN_ID_MAX: Final = (1 << 64) - 1
_TRACE_ID_MAX: Final = (1 << 128) - 1


def _plain_init(cls: type) -> Any:
    """``cls.__init__`` if ``cls(context)`` is ``object.__new__`` plus ``_context = context``.

    (The API's ``NonRecordingSpan``: a dropped span is then made without the keyword call.)
    """
    init = cls.__dict__.get("__init__")
    if (type(init) is not FunctionType or init.__code__.co_names != ("_context",)
            or init.__code__.co_argcount != 2 or init.__defaults__
            or cls.__dict__.get("__new__", _object_new) is not _object_new
            or any("__new__" in vars(base) for base in cls.__mro__[1:-1])
            or getattr(cls, "__abstractmethods__", None) or "__slots__" in cls.__dict__):
        return None
    made: Any = _object_new(cls)
    made._context = INVALID_SPAN_CONTEXT
    made2 = cls(INVALID_SPAN_CONTEXT)
    return init if vars(made) == vars(made2) == {"_context": INVALID_SPAN_CONTEXT} else None


#: NonRecordingSpan.__init__, when a dropped span can be made as object.__new__ + _context.
_NRS: Final = trace_api.NonRecordingSpan
_NRS_INIT: Final = _plain_init(_NRS)


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
_SAMPLER_FIELDS: Final = ("_root", "_local_parent_sampled", "_local_parent_not_sampled",
                          "_remote_parent_sampled", "_remote_parent_not_sampled")



def _non_recording(span_context: SpanContext) -> Span:
    """The API's ``NonRecordingSpan`` of ``span_context``, without its ``__init__`` call while
    that ``__init__`` is the one that only stores the context."""
    nrs = trace_api.NonRecordingSpan
    if nrs is _NRS and nrs.__init__ is _NRS_INIT:
        span: Span = _object_new(nrs)
        span._context = span_context  # type: ignore[attr-defined]
        return span
    return nrs(context=span_context)

class Variant(NamedTuple):
    """What one known version of ``Tracer.start_span`` does beyond SDK 1.20's."""

    gated: bool  # checks _is_enabled(), counts the span in _tracer_metrics (1.40)
    random_flag: int  # 0: no random-trace-ID flag; 1: the generator's (1.42.0); 2: the parent's


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
    names = frozenset(method.__code__.co_names) - {"copy"}  # (1.20 to 1.42.1 copy attributes)
    if names == _NAMES_1_20:
        return Variant(False, 0)
    if names == _NAMES_1_40:  # 1.40 and 1.41 (which adds `links = links or ()`)
        return Variant(True, 0) if _sdk_version()[:2] in ((1, 40), (1, 41)) else None
    if names == _NAMES_1_42:
        return Variant(True, 1)
    if names == _NAMES_1_42_1:
        return Variant(True, 2)
    return None


def _static_decisions(sampler: object) -> tuple[Decision | None, ...] | None:
    """Decisions of a ParentBased sampler whose parent delegates decide statically, else None.

    The order is: root, local parent sampled, local not sampled, remote sampled, remote not
    sampled. The root's entry is None when the root delegate is not a ``StaticSampler``
    (``TraceIdRatioBased``, say).
    """
    if (type(sampler) is not ParentBased
            or not all(_on_instance(sampler, name) for name in _SAMPLER_FIELDS)
            or getattr(getattr(sampler, "should_sample", None), "__func__", None)
            is not ParentBased.__dict__.get("should_sample")):
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


def _on_instance(obj: object, name: str) -> bool:
    """Whether ``obj.name`` is an attribute of the instance itself, not of its class.

    (Asked without ``vars(obj)``: reading an instance's ``__dict__`` makes CPython 3.11+ keep
    it as a real dict, which slows every later attribute read of that object, the SDK's
    own reads of its tracer and sampler on every span included.)
    """
    return hasattr(obj, name) and not any(name in vars(cls) for cls in type(obj).__mro__)


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


class _Pending(threading.local):
    """The IDs the next ``tracer.start_span`` on this thread must give its span (None: none)."""

    span_id: int | None = None
    trace_id: int | None = None


_pending: Final = _Pending()


class PendingIds(IdGenerator):
    """An SDK tracer's ID generator, handing out the IDs :meth:`Starter.start` set first.

    Each pending ID is handed out once, on the thread that set it, to the one
    ``tracer.start_span`` call it was set for; every other request goes to the generator
    this wraps, so a user's own generator keeps deciding every other ID.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        pending = _pending
        span_id = pending.span_id
        if span_id is not None:
            pending.span_id = None
            return span_id
        return self.inner.generate_span_id()  # type: ignore[no-any-return]

    def generate_trace_id(self) -> int:
        pending = _pending
        trace_id = pending.trace_id
        if trace_id is not None:
            pending.trace_id = None
            return trace_id
        return self.inner.generate_trace_id()  # type: ignore[no-any-return]

    def is_trace_id_random(self) -> bool:
        return self.inner.is_trace_id_random()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # anything else the user's generator offers
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _ids_refusal(tracer: Any) -> str | None:
    """Why fixed IDs cannot be given to ``tracer``'s spans (None if they can)."""
    if not isinstance(tracer, Tracer):
        return f"tracer class {type(tracer).__qualname__} is not the SDK's Tracer"
    method = getattr(type(tracer), "start_span", None)
    names = _names_of(method)
    if method is not Tracer.__dict__.get("start_span") or names is None or not {
            "id_generator", "generate_span_id", "generate_trace_id"} <= set(names):
        return "Tracer.start_span is not the SDK's, or does not ask its ID generator"
    if not _on_instance(tracer, "id_generator"):
        return "the tracer keeps no id_generator of its own"
    return None


class Starter:
    """Starts spans for one SDK tracer: fixed IDs, and the sampling shortcuts if known."""

    __slots__ = ("_drops", "_fixed_ids", "_gate_inline", "_gated", "_noop_metrics",
                 "_random_flag", "_ratio", "_sampler", "_shortcuts", "_state", "tracer",
                 "variant")

    def __init__(self, tracer: Any, variant: Variant | None, fixed_ids: bool) -> None:
        self.tracer = tracer
        #: The known shape of ``start_span``: the shortcuts run only for one.
        self.variant = variant
        self._shortcuts = variant is not None
        self._fixed_ids = fixed_ids
        self._state: tuple[Any, ...] = ()
        self._sampler: Any = None
        self._drops: tuple[bool, ...] | None = None
        self._ratio: TraceIdRatioBased | None = None
        gated = self._gated = variant is not None and variant.gated
        self._random_flag = 0 if variant is None else variant.random_flag
        #: ``tracer._is_enabled()`` is ``tracer._tracer_config.is_enabled`` (SDK 1.40 to 1.45)
        self._gate_inline = gated and _names_of(getattr(type(tracer), "_is_enabled",
                                                        None)) == _GATE_NAMES
        #: The tracer's own span counter when it is the SDK's no-op one: a drop skips the call.
        self._noop_metrics = _noop_tracer_metrics(tracer) if gated else None
        if variant is not None:
            self._use(tracer.sampler)
        self._refresh()

    @property
    def shortcuts(self) -> bool:
        """Whether the sampling shortcuts run (a known shape of ``start_span``)."""
        return self._shortcuts

    @shortcuts.setter
    def shortcuts(self, value: bool) -> None:
        self._shortcuts = value
        self._refresh()

    @property
    def fixed_ids(self) -> bool:
        """Whether :meth:`start` can fix the span's IDs."""
        return self._fixed_ids

    @fixed_ids.setter
    def fixed_ids(self, value: bool) -> None:
        self._fixed_ids = value
        self._refresh()

    def _refresh(self) -> None:
        """Keep :attr:`_state`, the fields the C entries read in one lookup, up to date."""
        self._state = (self.tracer, self._sampler, self._drops, self._ratio, self._gated,
                       self._gate_inline, self._random_flag, self._noop_metrics,
                       self._shortcuts, self._fixed_ids)

    def start(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: dict[str, AttributeValue] | None,
        links: Sequence[Link] | None,
        start_time: int | None,
        span_id: int | None,
        trace_id: int | None = None,
    ) -> trace_api.Span:
        """``tracer.start_span``, giving the new span ``span_id`` (and ``trace_id``, if it is a
        root) instead of asking the ID generator for them (None: ask it).

        Call only when :attr:`fixed_ids` is true.
        """
        tracer = self.tracer
        ids = tracer.id_generator
        if type(ids) is not PendingIds:  # first use, or the user set another generator
            ids = tracer.id_generator = PendingIds(ids)
        pending = _pending
        pending.span_id, pending.trace_id = span_id, trace_id
        try:
            return tracer.start_span(  # type: ignore[no-any-return]
                name, context=context, kind=kind, attributes=attributes, links=links,
                start_time=start_time,
            )
        finally:  # unused when the span took none (a disabled tracer's, say)
            pending.span_id = pending.trace_id = None

    def start_lazy(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: Callable[[], dict[str, AttributeValue]],
    ) -> trace_api.Span:
        """``tracer.start_span``, with ``attributes()`` called only when the decision may read
        them.

        A span the sampler is known to drop without reading its attributes gets the SDK's
        ``NonRecordingSpan`` at once: a child of an unsampled parent under static delegates
        (:meth:`dropped_child`), or a root whose ``ParentBased`` root delegate is the SDK's
        ``TraceIdRatioBased``, decided from the new trace ID as that sampler decides it. A
        root it samples is started with that same trace ID.
        """
        tracer = self.tracer
        if self.shortcuts:
            if tracer.sampler is not self._sampler:
                self._use(tracer.sampler)
            current = context.get(_SPAN_KEY)  # get_current_span(context), without its calls
            if current is None:  # a root: INVALID_SPAN's context, without the calls
                if self._ratio is not None and self.fixed_ids:
                    return self._root(name, context, kind, attributes,
                                      trace_api.INVALID_SPAN_CONTEXT)
                current = trace_api.INVALID_SPAN
            elif not isinstance(current, trace_api.Span):
                current = trace_api.INVALID_SPAN
            parent: Any = current.get_span_context()
            if type(parent) is not SpanContext:
                pass  # start_span decides (and raises for a parent that is not a SpanContext)
            elif parent.is_valid:
                dropped = dropped_child_of(self, parent)
                if dropped is not None:
                    return dropped
            elif self._ratio is not None and self.fixed_ids:
                return self._root(name, context, kind, attributes, parent)
        return tracer.start_span(  # type: ignore[no-any-return]
            name, context=context, kind=kind, attributes=attributes(), links=None,
            start_time=None)

    def _root(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: Callable[[], dict[str, AttributeValue]],
        parent: SpanContext,
    ) -> trace_api.Span:
        """A root under ``ParentBased(TraceIdRatioBased(r))``, decided as that sampler does."""
        tracer = self.tracer
        ratio: Any = self._ratio
        if self._gated and not (tracer._tracer_config.is_enabled if self._gate_inline
                                else tracer._is_enabled()):
            return trace_api.NonRecordingSpan(context=parent)
        id_generator = tracer.id_generator
        if type(id_generator) is PendingIds:  # nothing is pending here: skip the wrapper
            id_generator = id_generator.inner
        trace_id = id_generator.generate_trace_id()
        if trace_id & ratio.TRACE_ID_LIMIT < ratio._bound:  # sampled: the SDK starts it
            return self.start(name, context, kind, attributes(), None, None, None, trace_id)
        random = self._random_flag != 0 and id_generator.is_trace_id_random()
        span_id = id_generator.generate_span_id()
        if _TUPLE_LAYOUT:
            span_context = _tuple_new(SpanContext, (
                trace_id, span_id, False, _FLAGS[2 if random else 0], DEFAULT_TRACE_STATE,
                0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX,
            ))
        else:  # pragma: no cover - an API whose SpanContext is laid out otherwise
            span_context = SpanContext(trace_id, span_id, is_remote=False,
                                       trace_flags=_FLAGS[2 if random else 0])
        if self._gated and tracer._tracer_metrics is not self._noop_metrics:
            tracer._tracer_metrics.start_span(None, Decision.DROP)
        return _non_recording(span_context)

    def dropped_child(
        self, parent: SpanContext, span_id: int | None = None
    ) -> trace_api.Span | None:
        """The span ``tracer.start_span`` would return for a child of ``parent`` that the
        sampler drops.

        Only for a ``ParentBased`` sampler whose delegate for ``parent`` (local or remote,
        sampled or not) is a ``StaticSampler`` that drops: that decision reads neither the
        span's name, kind, attributes, links nor baggage, so the caller need not build them.
        The span is the SDK's: a ``NonRecordingSpan`` with a new span ID from the ID
        generator (or ``span_id``), the parent's trace ID and trace state, the trace flags
        the SDK gives it; the tracer's own metrics count it. Returns None whenever the
        decision is not such a drop (then the span must be started, with its attributes).
        """
        if not self.shortcuts:
            return None
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
        if self._gated and not (tracer._tracer_config.is_enabled if self._gate_inline
                                else tracer._is_enabled()):
            return trace_api.NonRecordingSpan(context=parent)
        id_generator = tracer.id_generator
        if type(id_generator) is PendingIds:  # nothing is pending here: skip the wrapper
            id_generator = id_generator.inner
        random_flag = self._random_flag
        random = (bool(flags & _RANDOM_FLAG) if random_flag == 2
                  else random_flag == 1 and id_generator.is_trace_id_random())
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
        if self._gated and tracer._tracer_metrics is not self._noop_metrics:
            tracer._tracer_metrics.start_span(parent, Decision.DROP)
        return _non_recording(span_context)

    def _use(self, sampler: Any) -> None:
        """Read which of ``sampler``'s parent cases drop, and its known ratio root delegate."""
        decisions = _static_decisions(sampler)
        self._sampler = sampler
        self._ratio = (_known_ratio(sampler._root)
                       if decisions is not None and decisions[0] is None else None)
        # By (remote, parent not sampled): local sampled, local not, remote sampled, remote not.
        self._drops = None if decisions is None else tuple(
            decision is Decision.DROP for decision in decisions[1:]
        )
        self._refresh()


class _Draws:
    """A stand-in for the ``random`` module: hands out ``values`` and notes what was asked."""

    def __init__(self, values: list[int]) -> None:
        self.values = values
        self.asked: list[int] = []

    def getrandbits(self, bits: int) -> int:
        self.asked.append(bits)
        return self.values.pop(0)


def _draws_like(function: object, bits: int, invalid: str) -> bool:
    """Whether ``function`` (a method of ``RandomIdGenerator``) is, as in SDK 1.20 to 1.45,
    ``random.getrandbits(bits)`` drawn again while it equals ``trace.<invalid>`` (0), reading
    nothing else: its code, run on stand-in globals, draws 0, 0 and 7 and returns 7."""
    if (type(function) is not FunctionType or function.__closure__
            or set(function.__code__.co_names) != {"random", "getrandbits", "trace", invalid}
            or function.__globals__.get("trace") is not trace_api
            or type(getattr(trace_api, invalid, None)) is not int or getattr(trace_api, invalid)):
        return False
    draws = _Draws([0, 0, 7])
    probe = FunctionType(function.__code__, {"random": draws, "trace": trace_api})
    try:
        return probe(None) == 7 and draws.asked == [bits] * 3 and not draws.values
    except Exception:
        return False


def _returns_true(function: object) -> bool:
    """Whether ``function(self)`` reads no name and returns True (``is_trace_id_random``)."""
    if (type(function) is not FunctionType or function.__closure__
            or function.__code__.co_names or function.__code__.co_argcount != 1):
        return False
    try:
        return FunctionType(function.__code__, {})(None) is True
    except Exception:
        return False


class _Opaque:
    """A value that can be neither told true or false nor compared: returned as it is."""

    def __bool__(self) -> bool:
        raise TypeError("opaque")

    def __eq__(self, other: object) -> bool:
        raise TypeError("opaque")

    __hash__ = object.__hash__


def _returns_context(function: object) -> bool:
    """Whether ``function(self)`` returns ``self._context`` and reads nothing else
    (``NonRecordingSpan.get_span_context``)."""
    if (type(function) is not FunctionType or function.__closure__
            or function.__code__.co_names != ("_context",)
            or function.__code__.co_argcount != 1):
        return False
    marker = _Opaque()
    try:
        return FunctionType(function.__code__, {})(SimpleNamespace(_context=marker)) is marker
    except Exception:
        return False


def _inline_ids() -> tuple[Any, ...]:
    """configure_ids' arguments: ``RandomIdGenerator`` and its methods where the C module may
    run their bodies itself (:func:`_draws_like`), the API's ``NonRecordingSpan`` and its
    ``get_span_context`` where it may read ``_context`` (:func:`_returns_context`); None
    for either that it may not."""
    own = RandomIdGenerator.__dict__
    span, trace, random_ = (own.get("generate_span_id"), own.get("generate_trace_id"),
                            own.get("is_trace_id_random"))
    known = (_draws_like(span, 64, "INVALID_SPAN_ID")
             and _draws_like(trace, 128, "INVALID_TRACE_ID")
             and span.__globals__ is trace.__globals__  # type: ignore[union-attr]
             and (random_ is None or _returns_true(random_)))
    get_context = _NRS.__dict__.get("get_span_context")
    nrs = _NRS if _returns_context(get_context) else None
    if not known:
        return None, None, None, None, {}, nrs, get_context
    return (RandomIdGenerator, span, trace, random_, span.__globals__,  # type: ignore[union-attr]
            nrs, get_context)


def _c_dropped_child() -> Callable[..., trace_api.Span | None] | None:
    """``Starter.dropped_child`` in the C module (the same steps in one call), when it is built
    and allowed (not ``HOPTRACE_PURE_PYTHON``) and ``SpanContext`` is the 6-tuple. The C
    entries ask the SDK's ``RandomIdGenerator`` for IDs by running its methods' bodies
    themselves, and read a ``NonRecordingSpan``'s context, where :func:`_inline_ids` allows."""
    from .propagation import _speedups

    entry = getattr(_speedups, "dropped_child", None)
    if entry is None or not _TUPLE_LAYOUT:
        return None
    _speedups.configure_dropped(
        SpanContext, PendingIds, _FLAGS, DEFAULT_TRACE_STATE, trace_api, _NRS, _NRS_INIT,
        _RANDOM_FLAG, Decision.DROP, _SPAN_ID_MAX, Starter.dropped_child)
    configure_ids = getattr(_speedups, "configure_ids", None)
    if configure_ids is not None:
        configure_ids(*_inline_ids())
    return entry  # type: ignore[no-any-return]


#: ``Starter.dropped_child`` as a function of (starter, parent[, span_id]): the C module's
#: when it can run, else the method itself.
dropped_child_of: Callable[..., trace_api.Span | None] = (
    _c_dropped_child() or Starter.dropped_child)


def _c_start_lazy() -> Callable[..., trace_api.Span] | None:
    """``Starter.start_lazy`` in the C module (a dropped root in one call; anything else goes
    to the method), when :func:`_c_dropped_child` runs in C too."""
    from .propagation import _speedups

    entry = getattr(_speedups, "start_lazy", None)
    if entry is None or dropped_child_of is Starter.dropped_child:
        return None
    _speedups.configure_lazy(Context, _SPAN_KEY, Starter.start_lazy, _TRACE_ID_MAX)
    return entry  # type: ignore[no-any-return]


#: ``Starter.start_lazy`` as a function of (starter, name, context, kind, attributes): the C
#: module's when it can run, else the method itself.
start_lazy_of: Callable[..., trace_api.Span] = _c_start_lazy() or Starter.start_lazy


def _shortcut_refusal(tracer: Any) -> tuple[str | None, Variant | None]:
    """Why the shortcuts cannot run for ``tracer`` (None if they can), and the variant."""
    if type(tracer) is not Tracer:
        return f"tracer class {type(tracer).__qualname__} is not the SDK's Tracer", None
    variant = start_span_variant()
    if variant is None:
        version = ".".join(map(str, _sdk_version())) or "?"
        return f"Tracer.start_span of opentelemetry-sdk {version} is not one it knows", None
    needed = {"sampler", "id_generator"} | ({"_tracer_metrics"} if variant.gated else set())
    missing = sorted(name for name in needed if not _on_instance(tracer, name))
    if missing or (variant.gated and not callable(getattr(tracer, "_is_enabled", None))):
        return f"the tracer lacks {missing or ['_is_enabled']}", None
    return None, variant


#: What the probe found, per tracer: a Starter, or None for tracer.start_span alone.
_starters: weakref.WeakKeyDictionary[Any, Starter | None] = weakref.WeakKeyDictionary()


def starter_for(tracer: Any) -> Starter | None:
    """Return a :class:`Starter` for an SDK ``Tracer``, or None when it knows neither part."""
    try:
        return _starters[tracer]
    except (KeyError, TypeError):
        pass
    try:
        ids_reason = _ids_refusal(tracer)
        reason, variant = _shortcut_refusal(tracer)
    except Exception as exc:  # a shape so different that the probe itself failed
        ids_reason = reason = f"the probe failed ({type(exc).__name__}: {exc})"
        variant = None
    if reason is not None:
        _logger.debug("hoptrace: no sampling shortcuts for this tracer: %s", reason)
    if ids_reason is not None:
        _logger.debug("hoptrace: spans get their IDs from the ID generator: %s", ids_reason)
    starter = (None if variant is None and ids_reason is not None
               else Starter(tracer, variant, ids_reason is None))
    try:
        _starters[tracer] = starter
    except TypeError:  # pragma: no cover - not weakly referenceable
        pass
    return starter


def forget_probes() -> None:
    """Forget what the probes found (for tests that change the SDK's shape)."""
    _starters.clear()


__all__: Final = ["PendingIds", "Starter", "Variant", "dropped_child_of", "forget_probes",
                  "start_lazy_of", "start_span_variant", "starter_for"]
