"""AMQP mapping shared by the pika, kombu and aio-pika integrations.

* :func:`publish` / :func:`publish_async` — the one publish path: a ``send`` span, the
  context in a copy of the headers, no second span for a publish traced already;
* :func:`open_delivery` — the process scope of one delivery, linked to its earlier delivery
  (the redelivery memory lives in :mod:`hoptrace._redelivery`);
* :func:`delivery_attributes` — the RabbitMQ attributes of one delivery;
* :func:`broker_sent_ns` — the ``timestamp`` property as nanoseconds, for queue wait.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, Final, TypeVar

from opentelemetry import trace as _trace_api
from opentelemetry.trace import NonRecordingSpan, SpanContext

from ._client import names_active_span
from ._redelivery import (
    _DEATH_HEADER,
    MEMORY_SIZE,
    REASON_DEAD_LETTER,
    REASON_REDELIVERY,
    DeliveryMemory,
    dead_lettered,
    memory,
    message_key,
)
from .core import diagnostics, metrics, semconv
from .core import propagation as _propagation
from .core import settings as _settings
from .core import spans as _spans
from .core.carriers import write_headers
from .core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY, get_current
from .core.hop import (
    _FAILED,
    AttachedSend,
    _dropped_child,
    _new_tuple,
    _send_values,
    consume_scope,
    produce_scope,
    spans_active,
    unrecorded_send,
)
from .core.hop import dropped_send_entry as dropped_send
from .core.ids import TUPLE_LAYOUT
from .core.otel_shims import PROVIDER_GLOBAL, _provider_seen, sdk_installed
from .core.propagation import holds_transaction_header, inject, render
from .core.settings import get_settings

__all__ = [
    "CALLBACK_MARK",
    "MEMORY_SIZE",
    "REASON_DEAD_LETTER",
    "REASON_REDELIVERY",
    "DeliveryMemory",
    "DeliveryScope",
    "Processing",
    "SendScope",
    "begin_dropped",
    "broker_sent_ns",
    "dead_lettered",
    "delivery_attributes",
    "destination",
    "end_dropped",
    "headers_only_now",
    "memory",
    "message_id_text",
    "message_key",
    "open_delivery",
    "open_delivery_fields",
    "open_from",
    "publish",
    "publish_async",
    "publish_headers",
    "run_in",
    "traced_already",
    "wrappable",
    "wrapped",
]

R = TypeVar("R")

#: Whether a ``SpanContext`` is the API's 6-tuple whose ``trace_id``, ``span_id``,
#: ``trace_flags`` and ``is_valid`` read its items 0, 1, 3 and 5 (then a delivery's span
#: context is remembered by index, without four property calls).
_SC_TUPLE: Final = TUPLE_LAYOUT and all(
    type(SpanContext.__dict__.get(name)) is property
    and SpanContext.__dict__[name].fget.__code__.co_names == ()
    and index in SpanContext.__dict__[name].fget.__code__.co_consts
    for name, index in (("trace_id", 0), ("span_id", 1), ("trace_flags", 3), ("is_valid", 5)))


#: ``_speedups.keep_delivery``: a first delivery's key and :meth:`DeliveryMemory.keep` in one
#: call (test_redelivery_keep.py compares it with the Python steps); None where the span
#: context's tuple layout is not the one it reads, or without the C module.
_keep_c: Any = getattr(_propagation._speedups, "keep_delivery", None) if (
    _SC_TUPLE and semconv.TRACEPARENT == "traceparent") else None


def delivery_attributes(
    routing_key: object, delivery_tag: object, correlation_id: object
) -> dict[str, Any]:
    """Return the RabbitMQ attributes of one delivery, skipping values that are missing.

    :class:`DeliveryScope` calls it only when its attributes are read: when a span records,
    or metrics read them.
    """
    attrs: dict[str, Any] = {}
    if type(routing_key) is str and routing_key:  # the conventions: only if not empty
        attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
    if type(delivery_tag) is int:
        attrs[semconv.RABBITMQ_DELIVERY_TAG] = delivery_tag
    if correlation_id is not None:
        text = _text(correlation_id)
        if text is not None:
            attrs[semconv.MESSAGING_CONVERSATION_ID] = text
    return attrs


def message_id_text(value: object) -> str | None:
    """Return an AMQP ``message_id`` property as text, or None if it has none usable."""
    return _text(value) if value is not None else None


def _text(value: object) -> str | None:
    if type(value) is str:
        return value if len(value) <= 256 else value[:256]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:256]).decode("utf-8", "replace")
    return None


_UTC: Final = datetime.timezone.utc
#: The last UTC datetime :func:`broker_sent_ns` converted, and its ns (one tuple: replaced
#: whole, never seen half-updated by another thread).
_last_stamp: tuple[datetime.datetime | None, int] = (None, 0)


def broker_sent_ns(timestamp: object) -> int | None:
    """Return the AMQP ``timestamp`` property (seconds, or a datetime) in ns, else None.

    An AMQP timestamp counts whole seconds, so messages sent in the same second carry the
    same one: the last UTC datetime's conversion (``timestamp()``: about 3k instructions)
    is kept for the next message (aio-pika decodes the property into a new UTC datetime on
    every message).
    """
    if type(timestamp) is int and timestamp > 0:
        return timestamp * 1_000_000_000
    if isinstance(timestamp, datetime.datetime):
        global _last_stamp
        utc = type(timestamp) is datetime.datetime and timestamp.tzinfo is _UTC
        if utc:
            last = _last_stamp
            if timestamp == last[0]:  # (the same tzinfo: compared field by field)
                return last[1]
        try:
            ns = int(timestamp.timestamp() * 1e9)
        except (OverflowError, OSError, ValueError):
            return None
        if utc:
            _last_stamp = (timestamp, ns)
        return ns
    return None


#: ``semconv.rabbitmq_destination`` by its arguments: the same few names on every message.
_destinations: dict[tuple[object, ...], str] = {}
_MAX_DESTINATIONS: Final = 4096


def destination(exchange: str | None, routing_key: str, queue: str | None = None) -> str:
    """:func:`semconv.rabbitmq_destination`, remembered for up to 4096 argument triples."""
    key = (exchange, routing_key, queue)
    name = _destinations.get(key)
    if name is None:
        name = semconv.rabbitmq_destination(exchange, routing_key, queue)
        if len(_destinations) < _MAX_DESTINATIONS:
            _destinations[key] = name
    return name


def traced_already(headers: object) -> bool:
    """Whether ``headers`` already carry the active span as their parent (no second span)."""
    if headers is None or (type(headers) is not dict and not isinstance(headers, Mapping)):
        return False
    try:
        traceparent = headers.get(semconv.TRACEPARENT)
        return traceparent is not None and names_active_span(traceparent)
    except Exception:
        return False


class DeliveryScope(consume_scope):
    """One delivery's ``process`` scope, its fields set in one frame (positional arguments).

    Built once per delivered message: :class:`consume_scope`'s keyword-only constructor
    and its base class's would cost two more frames and a keyword dictionary. The fields
    are the ones ``consume_scope(headers, destination, system, message_id=...,
    attributes=..., sent_ns=..., links=..., redelivered=...)`` sets
    (tests/unit/test_amqp_fast_paths.py compares every slot), but for the attributes: the
    delivery's ``(routing_key, delivery_tag, correlation_id)`` are kept as they are (or None
    where no span can record), and :func:`delivery_attributes` runs only when
    ``_attributes`` is read.
    """

    __slots__ = ("_delivery",)
    # The same for every delivery: read from the class (a class attribute hides the base's
    # slot of the name), two stores less per message.
    _operation = semconv.OP_PROCESS
    _name = None

    @property
    def _attributes(self) -> dict[str, Any] | None:  # type: ignore[override]
        """consume_scope's ``attributes``: the delivery's RabbitMQ attributes, built only
        when read (a span that records, metrics), from the fields kept in ``_delivery``."""
        fields = self._delivery
        return None if fields is None else delivery_attributes(*fields)

    def __init__(
        self,
        headers: object,
        destination: str,
        system: str,
        message_id: str | None,
        delivery: tuple[object, object, object] | None,
        sent_ns: int | None,
        links: Sequence[Any] | None,
        redelivered: bool | None,
    ) -> None:
        self.span = None
        self._token = None
        self._attached = None
        self._closed = False
        self.metrics_record = None
        self._redelivered = redelivered
        self._carrier = headers
        self._destination = destination
        self._system = system
        self._message_id = message_id
        self._delivery = delivery
        self._sent_ns = sent_ns
        self._links = links
        self._incoming = None
        self.transaction_id = None
        self.queue_wait_ms = None
        self._active = None


def open_delivery(
    headers: object,
    system: str,
    *,
    exchange: object,
    routing_key: object,
    queue: object,
    message_id: object,
    delivery_tag: object,
    correlation_id: object,
    timestamp: object,
    redelivered: object,
) -> consume_scope | None:
    """Open the process scope of one delivery, linked to its earlier delivery if known.

    Takes the delivery's raw AMQP fields as the client library gives them; anything missing
    or of an unexpected type is left out. ``redelivered`` is the broker's flag (anything but
    ``False`` counts as possibly redelivered). Returns None only if hoptrace itself failed
    (counted and logged); never raises.
    """
    return open_delivery_fields(headers, system, exchange, routing_key, queue, message_id,
                                delivery_tag, correlation_id, timestamp, redelivered)


def _remembered(
    headers: object, text_id: str | None, redelivered: object, settings: Any
) -> tuple[int | None, Sequence[Any] | None]:
    """``(message_key(headers, text_id), memory.links(key, headers, redelivered is not
    False))``: a delivery's key in the memory and its link to an earlier delivery.

    For a dict of headers (the clients' own), ``message_key``'s reads inline and, for a first
    delivery (``redelivered`` False) the broker never dead-lettered (no ``x-death``), no
    lookup: ``links`` answers None for it. Anything else takes the two calls
    (test_amqp_remembered.py compares the two).
    """
    if type(headers) is not dict:
        key = message_key(headers, text_id)
    else:
        traceparent = headers.get(semconv.TRACEPARENT)
        sent = headers.get(settings.sent_time_header)
        if type(traceparent) is not str:
            traceparent = None
        if type(sent) is not str:
            sent = None
        if traceparent is None and text_id is None:
            return None, None
        key = hash((traceparent, sent, text_id))
        if redelivered is False and headers.get(_DEATH_HEADER) is None:
            return key, None
    if key is None:
        return None, None
    return key, memory.links(key, headers, redelivered is not False)


def open_delivery_fields(
    headers: object, system: str, exchange: object, routing_key: object, queue: object,
    message_id: object, delivery_tag: object, correlation_id: object, timestamp: object,
    redelivered: object,
) -> consume_scope | None:
    """:func:`open_delivery` with positional arguments (the per-message path)."""
    try:
        text_id = (  # (message_id_text's common case inline)
            message_id if type(message_id) is str and len(message_id) <= 256
            else _text(message_id) if message_id is not None else None)
        # Deliveries are remembered only to link spans: none without a span to link.
        settings = _settings._current or get_settings()
        recording = (not settings.propagation_only and settings.enabled and (
            _provider_seen[1] if PROVIDER_GLOBAL and _trace_api._TRACER_PROVIDER is (
                _provider_seen[0]) else sdk_installed()  # (its cached answer inline)
        ))  # (spans_active(), inlined)
        key = links = None
        # A first delivery (the broker's flag False, no x-death) has no earlier attempt to
        # look up: its key is needed only to remember it, after the open.
        first = (recording and redelivered is False and type(headers) is dict
                 and headers.get(_DEATH_HEADER) is None)
        if recording and not first:
            key, links = _remembered(headers, text_id, redelivered, settings)
        place = (
            exchange if type(exchange) is str else None,
            routing_key if type(routing_key) is str else "",
            queue if type(queue) is str else None,
        )
        name = _destinations.get(place)  # (destination()'s common case, inlined)
        scope = DeliveryScope(
            headers,
            name if name is not None else destination(*place),
            system,
            text_id,
            (routing_key, delivery_tag, correlation_id) if recording else None,
            broker_sent_ns(timestamp) if timestamp is not None else None,
            links,
            redelivered if type(redelivered) is bool else None,
        )
        scope.open()
    except Exception as exc:
        diagnostics.internal_error("amqp.open_delivery", exc)
        return None
    if scope.span is not None and (first or key is not None):
        # memory.remember of the span context it opened in; for a first delivery (no key
        # yet) _keep_c's one call, else its key and the steps. The scope is open: a failure
        # here is counted, and the scope still returned.
        active = scope._active  # (its span_context, without the property)
        try:
            if first and (_keep_c is None or not _keep_c(
                    memory._seen, memory._size, headers, text_id, settings.sent_time_header,
                    active, SpanContext)):
                key = _remembered(headers, text_id, False, settings)[0]
            if key is None:
                pass  # (kept by _keep_c, or a message without identity)
            elif _SC_TUPLE and type(active) is SpanContext:  # memory.remember's, by index
                if active[5]:  # is_valid
                    memory.keep(key, (active[0], active[1], int(active[3])))
            else:
                memory.remember(key, active)
        except Exception as exc:
            diagnostics.internal_error("amqp.open_delivery", exc)
    return scope


# ----------------------------------------------------------------- publish ---


#: True while a publish is traced: a client publishing through another (an adapter over pika,
#: a subclass calling its parent) makes one span, not two.
_publishing: ContextVar[bool] = ContextVar("hoptrace_amqp_publishing", default=False)


class SendScope(produce_scope):
    """One publish's ``send`` scope, its fields set in one frame (positional arguments).

    The fields ``produce_scope(headers, destination, system, message_id=...,
    attributes=..., copy=True)`` sets (tests/unit/test_amqp_fast_paths.py compares every
    slot), without its keyword-only constructor's and its base class's extra frames.
    """

    __slots__ = ()

    def __init__(
        self, headers: Any, destination: str, system: str, message_id: str | None,
        attributes: dict[str, Any],
    ) -> None:
        self.span = None
        self._token = None
        self._attached = None
        self._closed = False
        self.metrics_record = None
        self._sent_time = True
        self._carrier = headers
        self._destination = destination
        self._system = system
        self._message_id = message_id
        self._attributes = attributes
        self._copy = True
        self.carrier = headers
        self.transaction_id = None


#: What :func:`_begin` gives a publish: the headers to send (None: the caller's message goes
#: out unchanged), the open send scope (or the context attached in its place), the guard to
#: reset.
_Begun = tuple[Any, "produce_scope | AttachedSend | DroppedSend | None", "Token[bool] | None"]
_UNTRACED: Final[_Begun] = (None, None, None)


def _begin(
    headers: Any, system: str, exchange: object, routing_key: object,
    message_id: object, correlation_id: object, headers_only: bool, label: str,
) -> _Begun:
    if type(headers) is dict and not headers:
        headers = None  # (the same headers sent from an empty dict, without copying it)
    if _publishing.get() or (headers is not None and traced_already(headers)):
        return _UNTRACED
    guard = _publishing.set(True)
    scope: produce_scope | None = None
    try:
        if headers_only and not (spans_active() or metrics.enabled()):
            return inject(headers, copy=True), None, guard
        if (routing_key is None or type(routing_key) is str) and (
            message_id is None or type(message_id) is str
        ):  # (other types: their own code runs below, with its errors and counts)
            # No span to make, no metric: the scope's headers and context, without it.
            attached = unrecorded_send(headers, True, True)
            if attached is not None:
                return attached[0], attached[1], guard
        attrs: dict[str, Any] = {}
        if type(routing_key) is str and routing_key:  # the conventions: only if not empty
            attrs[semconv.RABBITMQ_ROUTING_KEY] = routing_key
        if type(correlation_id) is str:
            attrs[semconv.MESSAGING_CONVERSATION_ID] = correlation_id
        scope = SendScope(
            headers,
            destination(
                exchange if type(exchange) is str and exchange else None,
                str(routing_key or ""),
            ),
            system,
            message_id_text(message_id) if message_id is not None else None,
            attrs,
        ).open()
        return scope.carrier, scope, guard
    except Exception as exc:
        diagnostics.internal_error(label, exc)
        if scope is not None:
            scope.close()
        return None, None, guard


#: Whether kombu's and aio-pika's publish try :func:`begin_unrecorded` first (the tests turn
#: it off to compare it with :func:`publish`'s general steps).
_unrecorded_fast: bool = True


def begin_unrecorded(
    headers: Any, routing_key: object, message_id: object, label: str, attach: bool = True
) -> _Begun | None:
    """:func:`_begin`'s answer when it takes ``unrecorded_send`` (no span, no metric to make).

    The same steps in one frame, and without what only a span uses (the messaging system,
    the destination, the correlation ID), so a client works those out only when None comes
    back: then nothing was done (the guard is down again) and :func:`_begin` must run.
    A send span the sampler is known to drop is answered here too (:func:`_attach_dropped`:
    the scope's carrier and attached context, and its span, without the scope).
    ``attach=False``: the client's call runs no user code (pika's ``basic_publish``), so a
    dropped send span's context, written into the new headers, need not be attached around
    it (``hop.dropped_send``'s ``attach``).
    """
    if not (_unrecorded_fast and (routing_key is None or type(routing_key) is str) and (
            message_id is None or type(message_id) is str)):
        return None  # (as in _begin: other types take their own path)
    if type(headers) is dict and not headers:
        headers = None  # (as in _begin)
    if _publishing.get() or (headers is not None and traced_already(headers)):
        return _UNTRACED
    guard = _publishing.set(True)
    try:
        if headers is None and _dropped_fast and not (
                _settings._current or get_settings()).propagation_only:
            # No headers of the caller's to copy: the scope's new dict is written in place,
            # and its dropped span's context attached, by hop.dropped_send (one C call in
            # its common case; None with nothing done where the send needs more). With spans
            # on, asked first: where it answers (the sampler dropping) unrecorded_send would
            # not, and the other way round (as Kafka's attached_send asks).
            done = dropped_send({}, True, False, attach)
            if done is not None:
                return done[0], done[1], guard
        attached = unrecorded_send(headers, True, True)
    except Exception as exc:
        diagnostics.internal_error(label, exc)
        return None, None, guard
    if attached is None:  # a span or a metric to make, or hoptrace off
        dropped = _attach_dropped(headers, routing_key, message_id)
        if dropped is not None:
            return dropped[0], dropped[1], guard
        _publishing.reset(guard)  # (_begin decides)
        return None
    return attached[0], attached[1], guard


class DroppedSend(tuple):  # type: ignore[type-arg]
    """``(token, context, span)``: a send scope's attached context and its dropped span."""

    __slots__ = ()

    def close(self, exc: BaseException | None = None) -> None:
        """End the span and detach the context, as the send scope's ``close(exc)`` does."""
        token, attached, span = self
        if span is not None and (exc is not None or type(span) is not NonRecordingSpan or (
                NonRecordingSpan.end is not _spans.NRS_END)):
            _spans.end_span(span, exc, "SendScope.close")
        if token is not None and attached is not None:
            AttachedSend((token, attached)).close(exc)


def _attach_dropped(
    headers: Any, routing_key: object, message_id: object
) -> tuple[Any, DroppedSend] | None:
    """:func:`begin_unrecorded`'s second try, its guard up: for a send span the sampler is
    known to drop, the scope's carrier and context (attached, as the client's call may run
    user code) without the scope. None, with nothing done: :func:`_begin` must run (see
    :func:`begin_dropped` for when)."""
    if headers is not None and type(headers) is not dict:
        return None
    settings = _settings._current or get_settings()
    parent = _dropped_parent(settings, routing_key, message_id)
    if parent is None:
        return None
    span: Any = _dropped_child(parent.get(SPAN_KEY), None, "produce_scope.span")
    if span is None:  # the child may record: the scope makes it
        return None
    if span is _FAILED:  # counted: no send span, as the scope goes on without one
        span = None
    carrier, ctx, token = _send_values(
        parent, span, parent.get(TRANSACTION_KEY), headers, settings, True, True)
    return carrier, _new_tuple(DroppedSend, (token, ctx, span))


#: Whether pika's publish tries :func:`begin_dropped` first (the tests turn it off to compare
#: it with :func:`publish`'s general steps).
_dropped_fast: bool = True


def begin_dropped(
    headers: Any, routing_key: object, message_id: object
) -> tuple[Any, Any, Token[bool] | None] | None:
    """:func:`_begin`'s answer for a ``headers_only`` publish whose send span the sampler is
    known to drop, without the scope: ``(carrier, span, guard)``, to end with
    :func:`end_dropped` once the call returns or raises.

    ``headers_only``: the call runs no user code, so the scope's context, attached only to
    be detached when the call returns, is left out; the headers carry what the scope's
    would: its dropped span (the same draws, in the same order: the transaction is the
    current one, so only the span ID), the current transaction and baggage. None, with
    nothing done: :func:`publish` must run (the span may record, metrics are on, no
    transaction or baggage entry of its own is current, a propagator other than the W3C set,
    headers of another type, a routing key or message ID that is not text).
    """
    if type(headers) is dict:
        if not headers:
            headers = None  # (as in _begin)
    elif headers is not None:
        return None
    settings = _settings._current or get_settings()
    parent = _dropped_parent(settings, routing_key, message_id)
    if parent is None:
        return None
    if _publishing.get() or (headers is not None and traced_already(headers)):
        return _UNTRACED
    span: Any = _dropped_child(parent.get(SPAN_KEY), None, "produce_scope.span")
    if span is None:  # the child may record: the scope makes it
        return None
    if span is _FAILED:  # counted: no send span, as the scope goes on without one
        span = None
    guard = _publishing.set(True)
    carrier: Any
    try:  # (_send_values' rendering, the send span written as the context's)
        if headers is None:
            carrier = render(parent, settings, None, True, False, span)
        else:
            carrier = write_headers(headers, render(
                parent, settings, None, True, holds_transaction_header(headers), span),
                copy=True)
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        carrier = {} if headers is None else headers
    return carrier, span, guard


def _dropped_parent(settings: Any, routing_key: object, message_id: object) -> Any:
    """The current context, if :func:`begin_dropped` may write a send's headers from it: a
    span and a transaction current, the baggage the scope's own (its ``bind_transaction``
    would change nothing the headers carry), spans on, metrics off, the W3C propagators, an
    SDK, a routing key and message ID of text (or None: other types take ``_begin``'s path)."""
    if not (_dropped_fast and settings.enabled and not settings.propagation_only
            and (routing_key is None or type(routing_key) is str)
            and (message_id is None or type(message_id) is str)):
        return None
    if metrics.provider_source._METER_PROVIDER is not metrics.off_provider and (
            metrics.enabled()):
        return None
    now = _propagation._propagate_now
    if now is None or now._HTTP_TEXT_FORMAT is not _propagation._w3c_now:
        return None  # (a propagator of another kind may read the attached context)
    parent = get_current()
    tx = parent.get(TRANSACTION_KEY)
    if type(tx) is not str or parent.get(SPAN_KEY) is None:
        return None
    baggage: Any = parent.get(BAGGAGE_KEY)
    if baggage is not None and settings.baggage_mirror:
        if type(baggage) is not dict:
            return None  # (bind_transaction's own steps, with their errors, for others)
        entry = baggage.get(settings.baggage_key)
        if baggage and entry is not tx and (type(entry) is not str or entry != tx):
            return None
    return parent if sdk_installed() else None


def end_dropped(span: Any, guard: Token[bool] | None, exc: BaseException | None = None) -> None:
    """End a publish :func:`begin_dropped` began, as the scope's ``close(exc)`` ends it."""
    try:
        if span is not None and (exc is not None or type(span) is not NonRecordingSpan or (
                NonRecordingSpan.end is not _spans.NRS_END)):
            _spans.end_span(span, exc, "SendScope.close")
    finally:
        if guard is not None:
            _publishing.reset(guard)


def _finish(
    scope: produce_scope | AttachedSend | DroppedSend | None, guard: Token[bool] | None,
    exc: BaseException | None = None,
) -> None:
    """End the send span (with ``exc`` as its error) and drop the guard."""
    try:
        if scope is not None:
            scope.close(exc)
    finally:
        if guard is not None:
            _publishing.reset(guard)


def publish(
    call: Callable[[Any], R], headers: object, system: str, *, exchange: object,
    routing_key: object, message_id: object = None, correlation_id: object = None,
    headers_only: bool = False, label: str = "amqp.publish",
) -> R:
    """Run ``call(carrier)`` inside a ``send {exchange}:{routing_key}`` span.

    ``carrier`` is a copy of ``headers`` with the context added, or None when the publish is
    to go out unchanged (traced already, nested in a traced publish, or hoptrace failed).
    ``headers_only``: ``call`` runs no user code, so without a span to make only the headers
    are written and no context is attached. ``label`` names the call in hoptrace's
    internal-error counts.
    """
    if headers_only and headers_only_now():
        return publish_headers(call, headers, label)
    carrier, scope, guard = _begin(headers, system, exchange, routing_key, message_id,
                                   correlation_id, headers_only, label)
    try:
        result = call(carrier)
    except BaseException as exc:
        _finish(scope, guard, exc)
        raise
    _finish(scope, guard)
    return result


def headers_only_now() -> bool:
    """No span and no metric to record: a ``headers_only`` publish writes only headers.

    A failure says False: :func:`_begin` then asks again, and counts the error.
    """
    try:
        settings = _settings._current or get_settings()
        if settings.enabled and not settings.propagation_only and (
            _provider_seen[1] if PROVIDER_GLOBAL and _trace_api._TRACER_PROVIDER is (
                _provider_seen[0]) else sdk_installed()  # (its cached answer inline)
        ):
            return False  # (spans_active(), inlined)
        return not metrics.enabled()
    except Exception:
        return False


def publish_headers(call: Callable[..., R], headers: Any, label: str, *args: Any) -> R:
    """:func:`publish` with ``headers_only`` and no span to make: only the headers written.

    Returns ``call(carrier, *args)``: a client passes its publish's arguments along rather
    than a closure over them. Only when :func:`headers_only_now` says so. The same steps as
    :func:`_begin` and :func:`_finish` take for it.
    """
    if type(headers) is dict and not headers:
        headers = None  # (as in _begin)
    if _publishing.get() or (headers is not None and traced_already(headers)):
        return call(None, *args)
    guard = _publishing.set(True)
    try:
        try:
            carrier = inject(headers, copy=True)
        except Exception as exc:
            diagnostics.internal_error(label, exc)
            carrier = None
        return call(carrier, *args)
    finally:
        _publishing.reset(guard)


async def publish_async(
    call: Callable[[Any], Awaitable[R]], headers: object, system: str, *, exchange: object,
    routing_key: object, message_id: object = None, correlation_id: object = None,
    label: str = "amqp.publish",
) -> R:
    """:func:`publish` for a coroutine (aio-pika's ``Exchange.publish``)."""
    carrier, scope, guard = _begin(headers, system, exchange, routing_key, message_id,
                                   correlation_id, False, label)
    try:
        result = await call(carrier)
    except BaseException as exc:
        _finish(scope, guard, exc)
        raise
    _finish(scope, guard)
    return result


# ----------------------------------------------------------------- consume ---


def open_from(
    method: object, properties: object, queue: object, system: str, label: str
) -> consume_scope | None:
    """Open the process scope of a delivery given as pika-style objects; None on failure.

    ``method`` carries the delivery fields (exchange, routing key, tag, redelivered flag),
    ``properties`` the message properties (headers, IDs, timestamp); aio-pika's message is
    both. ``label`` names the caller in hoptrace's internal-error counts.
    """
    try:
        try:  # the clients' own objects have every field: no getattr calls for them
            return open_delivery_fields(
                properties.headers, system, method.exchange,  # type: ignore[attr-defined]
                method.routing_key, queue, properties.message_id,  # type: ignore[attr-defined]
                method.delivery_tag, properties.correlation_id,  # type: ignore[attr-defined]
                properties.timestamp, method.redelivered,  # type: ignore[attr-defined]
            )
        except AttributeError:
            pass
        return open_delivery_fields(
            getattr(properties, "headers", None),
            system,
            getattr(method, "exchange", None),
            getattr(method, "routing_key", None),
            queue,
            getattr(properties, "message_id", None),
            getattr(method, "delivery_tag", None),
            getattr(properties, "correlation_id", None),
            getattr(properties, "timestamp", None),
            getattr(method, "redelivered", True),
        )
    except Exception as exc:
        diagnostics.internal_error(label, exc)
        return None


class Processing:
    """The process scope of one delivery as a ``with`` / ``async with`` block.

    For code that gives each message exact boundaries (a ``consume()`` loop with holding off,
    say): the scope opens on entry and closes on exit, recording the block's exception.
    """

    __slots__ = ("_args", "_scope")

    def __init__(self, method: object, properties: object, queue: object, system: str) -> None:
        self._args = (method, properties, queue, system)
        self._scope: consume_scope | None = None

    def __enter__(self) -> consume_scope | None:
        method, properties, queue, system = self._args
        self._scope = open_from(method, properties, queue, system, "amqp.processing")
        return self._scope

    def __exit__(self, *exc_info: Any) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.__exit__(*exc_info)

    async def __aenter__(self) -> consume_scope | None:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)


#: Set on a consumer callback hoptrace wrapped, so it is never wrapped twice.
CALLBACK_MARK: Final = "__hoptrace_amqp_callback__"


def wrappable(callback: object) -> bool:
    """Whether ``callback`` is a callable hoptrace has not wrapped yet."""
    return callable(callback) and not getattr(callback, CALLBACK_MARK, False)


def wrapped(wrapper: Callable[..., Any], callback: object) -> Callable[..., Any]:
    """Mark ``wrapper`` as hoptrace's wrapping of ``callback``; return it."""
    setattr(wrapper, CALLBACK_MARK, True)
    wrapper.__wrapped__ = callback  # type: ignore[attr-defined]
    return wrapper


def run_in(scope: consume_scope | None, call: Callable[..., R], *args: Any) -> R:
    """Run a consumer callback inside ``scope`` (opened) and close it, recording any error."""
    if scope is None:
        return call(*args)
    try:
        result = call(*args)
    except BaseException as exc:
        scope.close(exc)
        raise
    scope.close()
    return result
