"""A lean span recorder for the OTel SDK's tracer (imported only when the SDK is in use).

It follows ``opentelemetry.sdk.trace.Tracer.start_span`` step by step — tracer enabled, sampler
decision and trace state, trace flags, ID generator, resource, span limits, ``on_start`` /
``on_end`` of the tracer's span processors — and differs in one thing: the attributes hoptrace
builds are plain ``str``/``bool``/``int``/``float`` values, so they go in as they are instead of
through ``BoundedAttributes`` one key at a time. A value of any other type, a span limit hoptrace
could reach, or any attribute a user sets on the span, takes the SDK's validating path.

:class:`HopSpan` is an SDK ``ReadableSpan``: processors and exporters read it as they read any
SDK span, and ``on_end`` gets the span itself, frozen by its end time.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Any, Final, cast

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from .context import SPAN_KEY
from .spans import TrustedAttributes

_logger = logging.getLogger("hoptrace")

_PLAIN: Final = frozenset((str, bool, int, float))
_RANDOM_FLAG: Final[int] = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
#: Trace flags by (sampled | random trace ID << 1).
_FLAGS: Final = tuple(
    TraceFlags((TraceFlags.SAMPLED if i & 1 else 0) | (_RANDOM_FLAG if i & 2 else 0))
    for i in range(4)
)
_UNSET: Final = Status(StatusCode.UNSET)
_RECORD_AND_SAMPLE: Final = Decision.RECORD_AND_SAMPLE
_DROP: Final = Decision.DROP


def _static_decisions(sampler: object) -> tuple[Decision, ...] | None:
    """Decisions of a ParentBased sampler whose delegates all decide statically, else None.

    The order is: root, local parent sampled, local not sampled, remote sampled, remote not
    sampled.
    """
    if type(sampler) is not ParentBased:
        return None
    delegates = [getattr(sampler, name, None) for name in (
        "_root", "_local_parent_sampled", "_local_parent_not_sampled",
        "_remote_parent_sampled", "_remote_parent_not_sampled",
    )]
    decisions = []
    for delegate in delegates:
        decision = getattr(delegate, "_decision", None)
        if type(delegate) is not StaticSampler or not isinstance(decision, Decision):
            return None
        decisions.append(decision)
    return tuple(decisions)


def _internal_metrics_enabled() -> bool:
    value = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def recorder_for(tracer: Any) -> Recorder | None:
    """Return a recorder for an SDK ``Tracer``, or None when it has parts this module lacks."""
    needed = ("sampler", "id_generator", "resource", "span_processor")
    if not all(hasattr(tracer, name) for name in needed) or _internal_metrics_enabled():
        return None
    return Recorder(tracer)


class Recorder:
    """Starts :class:`HopSpan` objects for one SDK tracer."""

    __slots__ = ("_decisions", "_enabled", "_limits", "_sampler", "on_ending", "plain_ok",
                 "processor", "scope", "tracer")

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self._sampler = tracer.sampler
        self._decisions = _static_decisions(self._sampler)
        limits = getattr(tracer, "_span_limits", None)
        self._limits: SpanLimits = limits if isinstance(limits, SpanLimits) else SpanLimits()
        self.processor = tracer.span_processor
        self.on_ending = getattr(self.processor, "_on_ending", None)
        enabled = getattr(tracer, "_is_enabled", None)
        self._enabled = enabled if callable(enabled) else None
        scope = getattr(tracer, "_instrumentation_scope", None)
        if not isinstance(scope, InstrumentationScope):
            info = getattr(tracer, "instrumentation_info", None)
            scope = InstrumentationScope(
                getattr(info, "name", "hoptrace"), getattr(info, "version", None),
                getattr(info, "schema_url", None),
            )
        self.scope = scope
        # Plain values go in unvalidated only while no limit could cut them.
        self.plain_ok = self._limits.max_span_attribute_length is None

    @property
    def limits(self) -> SpanLimits:
        """The span limits in force for this tracer."""
        return self._limits

    def start(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link] | None,
        start_time: int | None,
        span_id: int | None,
    ) -> trace_api.Span:
        """Start a span the way the SDK tracer would, with hoptrace's trusted attributes."""
        parent_span = context.get(SPAN_KEY)
        parent: SpanContext | None = (
            parent_span.get_span_context() if parent_span is not None else None  # type: ignore[attr-defined]
        )
        if self._enabled is not None and not self._enabled():
            return trace_api.NonRecordingSpan(parent or trace_api.INVALID_SPAN_CONTEXT)
        tracer = self.tracer
        id_generator = tracer.id_generator
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = id_generator.generate_trace_id()
            random_id = _RANDOM_FLAG and id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags & _RANDOM_FLAG
        if tracer.sampler is not self._sampler:
            self._sampler, self._decisions = tracer.sampler, _static_decisions(tracer.sampler)
        decisions = self._decisions
        span_attributes: Mapping[str, Any] | None
        if decisions is not None:
            # ParentBased over ALWAYS_ON / ALWAYS_OFF (the SDK's default): the decision is a
            # lookup, attributes pass through and the parent's trace state is kept.
            if parent is None:
                decision = decisions[0]
                trace_state = None
            else:
                decision = decisions[1 + (2 if parent.is_remote else 0)
                                     + (0 if parent.trace_flags & 1 else 1)]
                trace_state = parent.trace_state
            span_attributes = attributes
        else:
            result = tracer.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            decision, trace_state = result.decision, result.trace_state
            span_attributes = result.attributes
        flags = _FLAGS[(decision is _RECORD_AND_SAMPLE) | (2 if random_id else 0)]
        span_context = SpanContext(
            trace_id, span_id or id_generator.generate_span_id(), False, flags, trace_state
        )
        if decision is _DROP:
            return trace_api.NonRecordingSpan(span_context)
        span = HopSpan(
            name, span_context, parent, kind, self._attributes(span_attributes),
            self._links(links), start_time if start_time is not None else time_ns(), self,
        )
        self.processor.on_start(span, parent_context=context)
        return span

    def _attributes(self, given: Mapping[str, Any]) -> dict[str, Any] | BoundedAttributes:
        limits = self._limits
        if self.plain_ok and len(given) <= (limits.max_span_attributes or 0):
            plain = _PLAIN
            for value in given.values():
                if type(value) not in plain:
                    break
            else:
                return dict(given)
        return self.validated(given)

    def validated(self, given: Mapping[str, Any] | None) -> BoundedAttributes:
        """Return ``given`` checked and cut the SDK's way, still open to new keys."""
        limits = self._limits
        return BoundedAttributes(
            limits.max_span_attributes, given, immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )

    def _links(self, links: Sequence[Link] | None) -> Sequence[Link]:
        if not links:
            return ()
        cap = self._limits.max_links
        kept = [link for link in links if link.context.is_valid or link.attributes]
        return tuple(kept if cap is None else kept[:cap])

    def event_attributes(self, attributes: Mapping[str, Any] | None) -> BoundedAttributes:
        """Attributes of an event, checked and frozen the SDK's way."""
        limits = self._limits
        return BoundedAttributes(
            limits.max_event_attributes, attributes, immutable=True,
            max_value_len=limits.max_attribute_length,
        )


class HopSpan(trace_api.Span, ReadableSpan, TrustedAttributes):
    """A recording span started by :class:`Recorder`; an SDK ``ReadableSpan`` for exporters."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | BoundedAttributes,
        links: Sequence[Link],
        start_time: int,
        recorder: Recorder,
    ) -> None:
        # ReadableSpan's fields, set directly (its __init__ would build a Resource when None).
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = None
        self._instrumentation_scope = recorder.scope
        self._parent = parent
        self._start_time = start_time
        self._end_time: int | None = None
        self._attributes = attributes
        self._events: Sequence[Event] = ()
        self._links = links
        self._resource = recorder.tracer.resource
        self._status = _UNSET
        self._recorder = recorder

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_trusted_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is not None:
            return
        attributes = self._attributes
        if (
            type(value) in _PLAIN
            and type(attributes) is dict
            and self._recorder.plain_ok
            and (key in attributes
                 or len(attributes) < (self._recorder.limits.max_span_attributes or 0))
        ):
            attributes[key] = value
            return
        self.set_attribute(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is not None:
            _logger.debug("hoptrace: attribute %r set on an ended span", key)
            return
        attributes = self._attributes
        if type(attributes) is dict:
            attributes = self._attributes = self._recorder.validated(attributes)
        cast(BoundedAttributes, attributes)[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> None:
        if self._end_time is not None:
            return
        events = self._events
        if not isinstance(events, list):
            events = self._events = list(events)
        cap = self._recorder.limits.max_events
        if cap is not None and len(events) >= cap:
            return
        events.append(Event(name, self._recorder.event_attributes(attributes), timestamp))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self._end_time is not None or not (context.is_valid or attributes):
            return
        cap = self._recorder.limits.max_links
        if cap is not None and len(self._links) >= cap:
            return
        self._links = (*self._links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        current = self._status.status_code
        if isinstance(status, Status):
            if current is StatusCode.OK or status.status_code is StatusCode.UNSET:
                return
            self._status = status
        elif isinstance(status, StatusCode):
            if current is StatusCode.OK or status is StatusCode.UNSET:
                return
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        name = kind.__qualname__
        exception_type = f"{module}.{name}" if module and module != "builtins" else name
        values: dict[str, Any] = {
            "exception.type": exception_type,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            values.update(attributes)
        self.add_event("exception", values, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        attributes = self._attributes
        if type(attributes) is not dict:
            attributes._immutable = True  # type: ignore[union-attr]  # as the SDK freezes its spans' attributes at end
        recorder = self._recorder
        if recorder.on_ending is not None:
            recorder.on_ending(self)
        recorder.processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self._end_time is None:
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()


__all__: Final = ["HopSpan", "Recorder", "recorder_for"]
