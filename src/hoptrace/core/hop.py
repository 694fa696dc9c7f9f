"""The two halves of a hop, shared by every integration.

* :class:`produce_scope` — a ``send {destination}`` PRODUCER span that injects into the carrier.
* :class:`consume_scope` — a ``process {destination}`` CONSUMER scope that keeps the extracted
  context attached for the handler's whole run (parent or link mode).
* :class:`receive_scope` — a ``receive {destination}`` CLIENT span for a batch pull, with one
  link per message.

Each scope is a context manager (sync and async) and also has ``open()`` / ``close()`` for
integrations whose handler runs between two calls they wrap (``async for``, ``poll``).
Errors inside hoptrace are counted and logged; the user's own exceptions propagate unchanged.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar, cast

from opentelemetry.context import Context, create_key
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
)
from opentelemetry.util.types import AttributeValue

from . import diagnostics, metrics, semconv
from .carriers import Carrier, write_headers
from .context import (
    BAGGAGE_KEY,
    HOP_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    attach,
    bind_transaction,
    current_transaction_id,
    end_span,
    generate_transaction_id,
    get_current,
    mint_span_context,
    restore,
    sdk_installed,
    span_in,
)
from .otel_shims import _CONTEXT_VAR
from .propagation import Incoming, carried_transaction_id, holds_transaction_header, read, render
from .settings import get_settings
from .spans import dropped_child, start_span

Attributes = Mapping[str, AttributeValue]

#: The span a hoptrace scope made current, to tell it apart from a user's own ambient span.
HOP_SPAN_KEY: Final = create_key("hoptrace.hop_span")


class HopInfo(NamedTuple):
    """The messaging system, destination and message ID of the consume scope in force."""

    system: str
    destination: str
    message_id: str | None


_new_tuple = tuple.__new__  # HopInfo without NamedTuple's Python-level __new__
#: :func:`restore`'s own call, where OTel keeps the current Context in a ContextVar.
_reset: Final = _CONTEXT_VAR.reset if _CONTEXT_VAR is not None else None


def spans_active() -> bool:
    """Return whether scopes make spans now: enabled, not propagation-only, an SDK installed."""
    settings = get_settings()
    return settings.enabled and not settings.propagation_only and sdk_installed()


def current_hop(context: Context | None = None) -> HopInfo | None:
    """Return the messaging details of the active consume scope, or None outside one."""
    ctx = context if context is not None else get_current()
    hop = ctx.get(HOP_KEY)
    return hop if isinstance(hop, HopInfo) else None


def _add_attributes(
    attrs: dict[str, AttributeValue], extra: Attributes | Callable[[], Attributes] | None
) -> None:
    """Add an integration's attributes; a callable is called only now, when a span records."""
    if extra is None:
        return
    if callable(extra):
        extra = extra()
    if extra:
        attrs.update(extra)


_MASK_64: Final = (1 << 64) - 1


def incoming_parent(
    remote: SpanContext | None,
    settings: Any,
    ambient: Span | None,
    links: list[Link],
    *,
    link_mode: bool = True,
    trust: bool | None = None,
) -> tuple[Span | None, bool]:
    """Choose the parent of a span that handles an incoming message or request.

    The producer's span context (``remote``) is the parent unless ``trust_incoming`` is off,
    link mode is on (``link_mode=False`` ignores that setting, as an HTTP edge does), or an
    ``ambient`` span is already active; then it becomes a link (appended to ``links``, with
    its reason) and the ambient span, or none, is the parent. Returns the parent span and
    whether the incoming baggage may be kept (False when the input is untrusted).
    ``trust`` overrides the ``trust_incoming`` setting (an HTTP edge's own option).
    """
    trusted = settings.trust_incoming if trust is None else trust
    if remote is None:
        return ambient, trusted
    if not trusted:
        links.append(Link(remote, {semconv.LINK_REASON: "untrusted"}))
        return ambient, False
    if link_mode and settings.link_mode == "link":
        links.append(Link(remote, {semconv.LINK_REASON: "link_mode"}))
    elif ambient is not None:
        links.append(Link(remote, {semconv.LINK_REASON: "ambient_parent"}))
    else:
        return NonRecordingSpan(remote), True
    return ambient, True


def start_child_span(
    name: str,
    parent: Span | None,
    kind: SpanKind,
    attributes: dict[str, AttributeValue],
    links: Sequence[Link] | None,
    span_id: int | None,
    where: str,
    baggage: object = None,
) -> Span | None:
    """Start a span under ``parent`` (a new trace if None); None if hoptrace failed (counted).

    ``baggage`` is the baggage the span's context will hold: samplers and processors see it
    in the parent context, as they do for a span started in that context.
    """
    try:
        values: dict[str, object] = {}
        if parent is not None:
            values[SPAN_KEY] = parent
        if baggage:
            values[BAGGAGE_KEY] = baggage
        return start_span(name, Context(values), kind, attributes, links, None, span_id)
    except Exception as exc:
        diagnostics.internal_error(where, exc)
        return None


#: :func:`_dropped_child` failed (counted): no span, and no second try through the SDK.
_FAILED: Final[Span] = NonRecordingSpan(INVALID_SPAN_CONTEXT)


def _dropped_child(
    parent: Span | SpanContext, span_id: int | None, where: str
) -> Span | None:
    """The non-recording child of ``parent`` (a span, or its span context) when the sampler
    is known to drop it, else None.

    :func:`spans.dropped_child` decides from the parent's span context (an invalid one, or
    one whose delegate may keep the child, gives None); a failure is counted at ``where``
    and returns :data:`_FAILED`.
    """
    try:
        return dropped_child(
            parent if type(parent) is SpanContext else parent.get_span_context(),  # type: ignore[union-attr]
            span_id)
    except Exception as exc:
        diagnostics.internal_error(where, exc)
        return _FAILED


#: Each destination's contribution to first-attempt span IDs (a bounded cache).
_destination_salts: dict[str, int] = {}


def first_attempt_span_id(producer: SpanContext, destination: str) -> int:
    """The span ID of the first delivery of the message sent in ``producer`` to ``destination``.

    Stable across processes (no per-process hash seed), unique per send and destination, and
    never 0 (invalid).
    """
    salt = _destination_salts.get(destination)
    if salt is None:
        salt = zlib.crc32(destination.encode()) << 29
        if len(_destination_salts) < 4096:
            _destination_salts[destination] = salt
    mixed = (producer.span_id ^ salt
             ^ (producer.trace_id & _MASK_64)) * 0x9E3779B97F4A7C15 & _MASK_64
    return (mixed ^ (mixed >> 31)) or 1


def incoming_transaction(
    incoming: Incoming, trusted: bool, inherited: str | None = None
) -> tuple[str, str | None]:
    """The transaction ID a handler runs in, and the sender's ID to record beside it (or None).

    A trusted sender's ID is kept; else ``inherited`` (one already in force here), else a new
    one. An untrusted sender never chooses whom its messages are correlated with: its ID is
    only recorded, as the upstream ID.
    """
    if trusted:
        return incoming.transaction_id or inherited or generate_transaction_id(), None
    return inherited or generate_transaction_id(), incoming.transaction_id


def incoming_attributes(
    attrs: dict[str, AttributeValue], incoming: Incoming, upstream: str | None
) -> dict[str, AttributeValue]:
    """Add what the incoming side records on its span: rejected context, the upstream ID."""
    if incoming.rejected:
        attrs[semconv.CONTEXT_REJECTED] = list(incoming.rejected)
    if upstream is not None:
        attrs[semconv.TRANSACTION_UPSTREAM_ID] = upstream
    return attrs


def records_transaction(span: Span | None, tx: str) -> bool:
    """Whether ``span``, a sampled span of this process, already records transaction ``tx``.

    A send span under such a parent (a process span, a transaction's root, an HTTP server
    span) leaves the transaction ID out: its trace is found by the ID through the parent, and
    every send in a handler saves the attribute's 63 bytes of OTLP. Any other parent (none, a
    remote one, a span of the user's own, an unsampled one) and the send span records it.
    """
    if span is None:
        return False
    try:
        if not span.get_span_context().trace_flags & 1:
            return False
        attributes = getattr(span, "attributes", None)
        return attributes is not None and attributes.get(semconv.TRANSACTION_ID) == tx
    except Exception:  # a foreign span type: record the ID
        return False


_S = TypeVar("_S", bound="_Scope")


class _Scope:
    """Shared open/close plumbing: a span, an attached context token, a closed flag."""

    __slots__ = ("_attached", "_closed", "_token", "metrics_record", "span")

    #: Where an error ending the span is counted: ``{class name}.close``.
    _where = "_Scope.close"
    _opening = "_Scope.open"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._where = cls.__name__ + ".close"  # built once, not at every close
        cls._opening = cls.__name__ + ".open"

    def __init__(self) -> None:
        self.span: Span | None = None
        self._token: object | None = None
        self._attached: Context | None = None
        self._closed = False
        self.metrics_record: metrics.Record | None = None  # what close() records, if on

    def open(self: _S) -> _S:
        """Open the scope (:meth:`_open`) unless hoptrace is disabled; never raises."""
        # transaction.open repeats these steps inline: change both together.
        settings = get_settings()
        if settings.enabled:
            try:
                self._open(settings)
            except Exception as exc:
                diagnostics.internal_error(self._opening, exc)
        return self

    def _open(self, settings: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _attach(self, ctx: Context) -> None:
        self._token = attach(ctx)
        self._attached = ctx

    def _release(self, nested: bool = False) -> None:
        """Make current again the context this scope found when it opened.

        Whatever the handler attached on top since and never detached goes with it, so a
        leaked context cannot outlive the message. A scope released from another thread or
        task restores nothing there.

        ``nested``: the scope was a ``with`` block, so it always restores. A scope closed by a
        call (``close()``) may be one that an iterator or poll client held open after the
        call that opened it returned, and closes at the caller's next call. By then the
        caller's own scopes (a span per loop iteration, say) may have come and gone and
        restored the context from before this scope already; restoring again would bring
        back a stale one. Such a scope restores only while its own context, or one built on
        it, is still current.
        """
        token, attached = self._token, self._attached
        self._token = self._attached = None
        if token is None:
            return
        if not nested and attached is not None:
            current = get_current()
            mark = attached.get(HOP_SPAN_KEY)
            if current is not attached and (
                mark is None or current.get(HOP_SPAN_KEY) is not mark
            ):
                diagnostics.count("scope.left_already")
                return
        if not restore(token):
            diagnostics.count("scope.closed_elsewhere")

    def close(self, exc: BaseException | None = None) -> None:
        """End the span (recording ``exc`` as its error, if given) and detach the context."""
        # _close(exc, False) and the common case of _release, inlined: a held consume scope
        # closes here once per message.
        if self._closed:
            return
        self._closed = True
        record = self.metrics_record
        if record is not None:
            metrics.closed(record, exc)
        span = self.span
        if span is not None:
            self.span = None
            end_span(span, exc, self._where)
        token, attached = self._token, self._attached
        if token is not None and attached is not None and get_current() is attached:
            self._token = self._attached = None
            if _reset is None:
                if not restore(token):
                    diagnostics.count("scope.closed_elsewhere")
                return
            try:  # restore(token), inline
                _reset(token)  # type: ignore[arg-type]
            except (ValueError, RuntimeError):
                diagnostics.count("scope.closed_elsewhere")
        else:
            self._release()

    def _close(self, exc: BaseException | None, nested: bool) -> None:
        if self._closed:
            return
        self._closed = True
        metrics.closed(self.metrics_record, exc)
        span, self.span = self.span, None
        if span is not None:
            end_span(span, exc, self._where)
        self._release(nested)

    def release_context(self) -> None:
        """Detach the context now but keep the span open until :meth:`close`.

        For sends acknowledged later, in another context (a delivery callback): detach where
        the context was attached, then ``close(exc)`` from the callback to end the span.
        """
        self._release()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Add an attribute to the scope's span, if it records."""
        span = self.span
        if span is not None and span.is_recording():
            span.set_attribute(key, value)

    def __enter__(self) -> Any:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A generator closed by its consumer (break) is a normal end, not a failure.
        self._close(None if isinstance(exc, GeneratorExit) else exc, True)

    async def __aenter__(self) -> Any:
        return self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(None if isinstance(exc, GeneratorExit) else exc, True)


class produce_scope(_Scope):
    """A ``send {destination}`` PRODUCER span, current while open, injected into the carrier.

    After ``open()`` (or entering the ``with``), :attr:`carrier` holds the headers to send:
    the caller's object updated in place, or a new one for ``None``, a tuple, or ``copy=True``.
    ``sent_time=False`` writes no send-time header, for brokers that stamp each message with
    its send time themselves (Kafka's CreateTime): one header less on every message.
    """

    __slots__ = ("_attributes", "_carrier", "_copy", "_destination", "_message_id",
                 "_sent_time", "_system", "carrier", "transaction_id")

    def __init__(
        self,
        carrier: Carrier,
        destination: str,
        system: str,
        *,
        message_id: str | None = None,
        attributes: Attributes | Callable[[], Attributes] | None = None,
        copy: bool = False,
        sent_time: bool = True,
    ) -> None:
        super().__init__()
        self._sent_time = sent_time
        self._carrier = carrier
        self._destination = destination
        self._system = system
        self._message_id = message_id
        self._attributes = attributes
        self._copy = copy
        self.carrier: Any = carrier
        self.transaction_id: str | None = None

    def open(self) -> produce_scope:
        """Start the span, attach it, and inject into the carrier."""
        carrier = self._carrier
        kind = type(carrier)
        if (carrier is not None and kind is not dict and kind is not list
                and not isinstance(carrier, (Mapping, list, tuple))):
            raise TypeError(
                f"unsupported carrier type {type(carrier).__name__}: use a dict of headers, "
                "a list of (key, value) pairs, or a tuple of pairs"
            )
        settings = get_settings()
        if not settings.enabled:
            if self.carrier is None:
                self.carrier = {}
            return self
        try:
            if metrics.provider_source._METER_PROVIDER is metrics.off_provider:
                parent = get_current()  # metrics off: the hooks' own check, without their calls
            else:
                parent = metrics.stamp_origin(get_current())  # pathway origin
                self.metrics_record = metrics.send_started(self._system, self._destination,
                                                           self._attributes)
            tx = self.transaction_id = (
                current_transaction_id(parent) or self._carried(carrier)
                or generate_transaction_id()
            )
            span = self._start_span(parent, tx, settings)
            if span is not None or tx is not parent.get(TRANSACTION_KEY):
                scoped: dict[str, object] = {**parent}
                if span is not None:
                    scoped[SPAN_KEY] = scoped[HOP_SPAN_KEY] = span
                bind_transaction(scoped, tx, parent.get(BAGGAGE_KEY), settings)
                ctx = Context(scoped)
                self._attach(ctx)
            else:
                ctx = parent
            if kind is dict and not self._copy:
                # Straight into the caller's dict (as inject does); on error it holds only
                # whole values.
                render(ctx, settings, carrier, self._sent_time)  # type: ignore[arg-type]
                self.carrier = carrier
            else:
                values = render(ctx, settings, None, self._sent_time,
                                holds_transaction_header(carrier))
                self.carrier = write_headers(carrier, values, copy=self._copy)
        except Exception as exc:
            diagnostics.internal_error("produce_scope.open", exc)
            if self.carrier is None:
                self.carrier = {}
        return self

    @staticmethod
    def _carried(carrier: Carrier) -> str | None:
        # Outside any transaction, a message that already carries a valid ID (one a
        # framework or another instrumentation passes on) keeps it.
        return carried_transaction_id(carrier) if carrier is not None else None

    def _start_span(self, parent: Context, tx: str, settings: Any) -> Span | None:
        """Start the send span; None when spans are off and a trace is active already."""
        span: Span | None = None
        if not settings.propagation_only and sdk_installed():
            active = span_in(parent)
            if active is not None:
                # A child the sampler is known to drop: the SDK's non-recording span, without
                # the attributes it would never keep.
                dropped = _dropped_child(active, None, "produce_scope.span")
                if dropped is not None:
                    self.span = dropped if dropped is not _FAILED else None
                    return self.span
            attrs: dict[str, AttributeValue] = {
                semconv.MESSAGING_SYSTEM: self._system,
                semconv.MESSAGING_OPERATION_NAME: semconv.OP_SEND,
                semconv.MESSAGING_OPERATION_TYPE: semconv.OP_SEND,
                semconv.MESSAGING_DESTINATION_NAME: self._destination,
            }
            if not records_transaction(active, tx):
                attrs[semconv.TRANSACTION_ID] = tx
            if self._message_id is not None:
                attrs[semconv.MESSAGING_MESSAGE_ID] = self._message_id
            _add_attributes(attrs, self._attributes)
            try:
                span = self.span = start_span(
                    semconv.send_span_name(self._destination), parent, SpanKind.PRODUCER, attrs,
                )
            except Exception as exc:
                diagnostics.internal_error("produce_scope.span", exc)
        if span is None:
            active = span_in(parent)
            if (active is None or not active.get_span_context().is_valid) and (
                not sdk_installed()
            ):
                # No tracing backend: mint the trace here, so the caller's log lines in
                # this block and the message share one trace ID.
                span = NonRecordingSpan(mint_span_context())
        return span


class consume_scope(_Scope):
    """A ``process {destination}`` CONSUMER scope: the message's context, current while open.

    The transaction ID and baggage always come back. The trace follows the settings:
    ``link_mode="parent"`` (default) makes the span a child of the producer; ``"link"`` or
    ``trust_incoming=False`` starts a new trace that links to it; an ambient span already
    active stays the parent and the producer becomes a link. A message without usable context
    gets a fresh trace and a fresh transaction ID.

    ``sent_ns`` is a broker timestamp (ns since the epoch) used for queue wait when the message
    carries no hoptrace send time. ``links`` adds span contexts to link, such as an earlier
    delivery attempt of the same message.

    ``redelivered`` is the broker's flag, for brokers that redeliver unacknowledged messages.
    In parent mode a first delivery (``False``) gets a span ID derived from the producer's
    span and ``destination``, so a redelivery (``True``) can link to that first attempt even
    from another process, after the first consumer died before its span could end. The
    handler's log lines carry that span ID, so the dead attempt's logs are one search away.
    """

    #: Whether ``message_id`` also goes on the span as ``messaging.message.id`` (it always
    #: reaches :func:`current_hop` and log lines). Off for IDs made up from other attributes.
    span_message_id: bool = True

    __slots__ = (
        "_active",
        "_attributes",
        "_carrier",
        "_destination",
        "_kind",
        "_links",
        "_message_id",
        "_name",
        "_operation",
        "_redelivered",
        "_sent_ns",
        "_system",
        "incoming",
        "queue_wait_ms",
        "transaction_id",
    )

    def __init__(
        self,
        carrier: Carrier | object,
        destination: str,
        system: str,
        *,
        message_id: str | None = None,
        attributes: Attributes | Callable[[], Attributes] | None = None,
        sent_ns: int | None = None,
        links: Sequence[SpanContext | Link] | None = None,
        operation: str = semconv.OP_PROCESS,
        name: str | None = None,
        redelivered: bool | None = None,
    ) -> None:
        super().__init__()
        self._redelivered = redelivered
        self._carrier = carrier
        self._destination = destination
        self._system = system
        self._message_id = message_id
        self._attributes = attributes
        self._sent_ns = sent_ns
        self._links = links
        self._operation = operation
        self._name = name
        self.incoming: Incoming | None = None
        self.transaction_id: str | None = None
        self.queue_wait_ms: float | None = None
        self._active: SpanContext | None = None

    #: Whether a scope that makes no span opens through :meth:`_open_unrecorded` (the tests
    #: turn it off to compare that fast path with the general one).
    _unrecorded_fast: bool = True

    #: Whether a span the sampler is known to drop opens through :meth:`_open`'s shortcut
    #: (the tests turn it off to compare it with :meth:`_open_general`).
    _dropped_fast: bool = True

    def _open(self, settings: Any) -> None:
        """Extract the message's context, start the span and attach both."""
        spans = not settings.propagation_only and sdk_installed()
        if not spans and self._unrecorded_fast:
            self._open_unrecorded(settings)
            return
        now_ns = time.time_ns()
        incoming = read(self._carrier, settings)
        self.incoming = incoming
        ambient = get_current()
        remote = incoming.span_context
        tx = None
        if (spans and remote is not None and self._dropped_fast and settings.trust_incoming
                and settings.link_mode != "link" and ambient.get(SPAN_KEY) is None
                and self._redelivered is None and not self._links):
            # The producer's span is the parent, with no links (incoming_parent's answer).
            # When the sampler is known to drop its child, that child is all the span work:
            # no parent span object, attributes or links (test_sdk_spans_dropped.py).
            tx = incoming.transaction_id or generate_transaction_id()  # (incoming_transaction)
            span: Any = _dropped_child(remote, None, "consume_scope.span")
            if span is not None:
                self.transaction_id = tx
                if span is _FAILED:  # counted: no span, the producer's context goes on
                    span = NonRecordingSpan(remote)
                else:
                    self.span = span
                baggage = incoming.baggage
                self._enter(ambient, span, tx, baggage, baggage if baggage is not None
                            else ambient.get(BAGGAGE_KEY), self._queue_wait(incoming, now_ns),
                            now_ns, settings)
                return
        self._open_general(settings, incoming, ambient, now_ns, spans, tx)

    def _open_general(
        self, settings: Any, incoming: Incoming, ambient: Context, now_ns: int, spans: bool,
        asked: str | None,
    ) -> None:
        """:meth:`_open` beyond its shortcut; ``asked``: the transaction ID it chose, if it
        asked the sampler already (then it did not drop the child)."""
        if asked is None:
            tx, upstream = incoming_transaction(incoming, settings.trust_incoming)
        else:
            tx, upstream = asked, None
        self.transaction_id = tx
        remote = incoming.span_context
        ambient_span = ambient.get(SPAN_KEY)
        ambient_sc = ambient_span.get_span_context() if ambient_span is not None else None  # type: ignore[attr-defined]
        ambient_valid = ambient_sc is not None and ambient_sc.is_valid
        if ambient_valid and remote is not None and ambient.get(HOP_SPAN_KEY) is ambient_span:
            # Another message's scope still open here (a consumer polled inside a handler, two
            # consumers in one loop, a handler that a client runs while it publishes) is no
            # ambient parent for a message that carries its own context: each message keeps
            # its own trace. (Without one, as for an eager Celery task run inside another, the
            # open scope stays the parent.)
            ambient_valid = False
        links: list[Link] = []
        parent_span, trusted = incoming_parent(
            remote, settings, cast(Span, ambient_span) if ambient_valid else None, links
        )
        if self._links:
            links.extend(item if isinstance(item, Link) else Link(item) for item in self._links)
        baggage = incoming.baggage if trusted else None
        carried = baggage if baggage is not None else ambient.get(BAGGAGE_KEY)
        skew = self._queue_wait(incoming, now_ns)
        span: Any = None
        if spans:
            span_id = (None if self._redelivered is None
                       else self._span_id(remote, parent_span, links))
            if parent_span is not None and asked is None:
                # A child the sampler is known to drop: the SDK's non-recording span, without
                # the attributes it would never keep.
                span = _dropped_child(parent_span, span_id, "consume_scope.span")
            if span is None:
                span = start_child_span(
                    self._name or semconv.process_span_name(self._destination), parent_span,
                    SpanKind.CONSUMER, self._span_attributes(tx, incoming, upstream, skew),
                    links, span_id, "consume_scope.span", carried,
                )
            elif span is _FAILED:
                span = None
            self.span = span
        if span is None:
            span = parent_span if parent_span is not None else NonRecordingSpan(mint_span_context())
        self._enter(ambient, span, tx, baggage, carried, skew, now_ns, settings)

    def _enter(
        self, ambient: Context, span: Any, tx: str, baggage: Any, carried: Any, skew: bool,
        now_ns: int, settings: Any,
    ) -> None:
        """Attach the handler's context (see :meth:`_handler_values`); metrics see the hop."""
        values = self._handler_values(ambient, span, tx, baggage, carried, settings)
        self._active = span.get_span_context()
        self.metrics_record = None if (  # metrics off: the hook's own check, without its call
            metrics.provider_source._METER_PROVIDER is metrics.off_provider
        ) else metrics.consumed(
            self._system, self._operation, self._destination, self._attributes,
            self.queue_wait_ms, skew, baggage, now_ns, self._redelivered, self._carrier)
        self._attach(Context(values))

    def _open_unrecorded(self, settings: Any) -> None:
        """:meth:`_open` when no span is made (propagation-only, no SDK): the same context.

        What the general path computes only for a span (its links, attributes, upstream ID,
        fixed span ID) is left out; everything the context, the scope's fields and metrics
        get is the same (tests/unit/test_consume_fast_path.py compares the two).
        """
        now_ns = time.time_ns()
        incoming = read(self._carrier, settings)
        self.incoming = incoming
        ambient = get_current()
        trusted = settings.trust_incoming
        # incoming_transaction, without the upstream ID only a span records
        tx = (incoming.transaction_id if trusted else None) or generate_transaction_id()
        self.transaction_id = tx
        remote = incoming.span_context
        ambient_span = ambient.get(SPAN_KEY)
        if ambient_span is not None:
            ambient_sc = ambient_span.get_span_context()  # type: ignore[attr-defined]
            if ambient_sc is None or not ambient_sc.is_valid or (
                remote is not None and ambient.get(HOP_SPAN_KEY) is ambient_span
            ):  # (as _open: another message's open scope is no parent for this one)
                ambient_span = None
        # incoming_parent, without the links only a span records
        span: Any
        if (ambient_span is None and remote is not None and trusted
                and settings.link_mode != "link"):
            span = NonRecordingSpan(remote)
            active = remote
        else:
            span = ambient_span if ambient_span is not None else NonRecordingSpan(
                mint_span_context())
            active = span.get_span_context()
        baggage = incoming.baggage if trusted else None
        skew = self._queue_wait(incoming, now_ns)
        values = self._handler_values(ambient, span, tx, baggage, (
            baggage if baggage is not None else ambient.get(BAGGAGE_KEY)), settings)
        self._active = active
        self.metrics_record = None if (  # metrics off: the hook's own check, without its call
            metrics.provider_source._METER_PROVIDER is metrics.off_provider
        ) else metrics.consumed(
            self._system, self._operation, self._destination, self._attributes,
            self.queue_wait_ms, skew, baggage, now_ns, self._redelivered, self._carrier)
        ctx = Context(values)
        self._token = attach(ctx)
        self._attached = ctx

    def _handler_values(
        self, ambient: Context, span: Any, tx: str, baggage: Any, carried: Any, settings: Any
    ) -> dict[str, object]:
        """The values of the context the handler runs in: ``ambient`` with the message's span,
        transaction, baggage (``carried``: the sender's, else the ambient one) and hop."""
        hop = _new_tuple(HopInfo, (self._system, self._destination, self._message_id))
        if baggage is not None and baggage.get(settings.baggage_key) is tx:
            # The common case: the baggage is the sender's, with this transaction's entry.
            if not ambient:  # nothing current (a poll loop): one dict, not two merged
                return {SPAN_KEY: span, TRANSACTION_KEY: tx, BAGGAGE_KEY: baggage, HOP_KEY: hop,
                        HOP_SPAN_KEY: span}
            return {**ambient, SPAN_KEY: span, TRANSACTION_KEY: tx, BAGGAGE_KEY: baggage,
                    HOP_KEY: hop, HOP_SPAN_KEY: span}
        values: dict[str, object] = {**ambient, SPAN_KEY: span, HOP_KEY: hop,
                                     HOP_SPAN_KEY: span}
        bind_transaction(values, tx, carried, settings)
        return values

    def _queue_wait(self, incoming: Incoming, now_ns: int) -> bool:
        """Set :attr:`queue_wait_ms` from the message's send time; return whether it was skewed.

        The send time is the one the message carries, else the broker's (``sent_ns``). A send
        time in the future (clock skew between hosts) is counted and gives a wait of 0.
        """
        sent = incoming.sent_ns
        if sent is None:
            sent = self._sent_ns
            if sent is None:
                return False
        wait = (now_ns - sent) / 1e6
        if wait < 0:
            diagnostics.count("clock_skew")
            self.queue_wait_ms = 0.0
            return True
        self.queue_wait_ms = wait
        return False

    def _span_id(
        self, remote: SpanContext | None, parent_span: Span | None, links: list[Link]
    ) -> int | None:
        """The first delivery's fixed span ID; a redelivery links to it instead (parent mode)."""
        if parent_span is None or remote is None or parent_span.get_span_context() is not remote:
            return None
        first = first_attempt_span_id(remote, self._destination)
        if not self._redelivered:
            return first
        if not any(link.context.span_id == first for link in links):
            links.append(Link(
                SpanContext(remote.trace_id, first, True, remote.trace_flags),
                {semconv.LINK_REASON: "redelivery"},
            ))
        return None

    def _span_attributes(
        self, tx: str, incoming: Incoming, upstream: str | None, skew: bool
    ) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {
            semconv.MESSAGING_SYSTEM: self._system,
            semconv.MESSAGING_OPERATION_NAME: self._operation,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OP_PROCESS,
            semconv.MESSAGING_DESTINATION_NAME: self._destination,
            semconv.TRANSACTION_ID: tx,
        }
        if self._message_id is not None and self.span_message_id:
            attrs[semconv.MESSAGING_MESSAGE_ID] = self._message_id
        if self.queue_wait_ms is not None:
            attrs[semconv.QUEUE_WAIT_MS] = self.queue_wait_ms
            if skew:
                attrs[semconv.CLOCK_SKEW] = True
        if incoming.rejected or upstream is not None:
            incoming_attributes(attrs, incoming, upstream)
        _add_attributes(attrs, self._attributes)
        return attrs

    @property
    def span_context(self) -> SpanContext | None:
        """The span context the handler runs in (to link a later attempt to), or None."""
        return self._active


class receive_scope(_Scope):
    """A ``receive {destination}`` CLIENT span for a batch pull, linking to every message.

    ``messages`` holds ``(carrier, message_id)`` pairs. The span is not made current; each
    message later gets its own :class:`consume_scope`. No span is made in propagation-only
    mode or without an SDK.
    """

    __slots__ = ("_attributes", "_destination", "_messages", "_start_ns", "_system")

    def __init__(
        self,
        messages: Iterable[tuple[Carrier | object, str | None]],
        destination: str,
        system: str,
        *,
        attributes: Attributes | Callable[[], Attributes] | None = None,
        start_time_ns: int | None = None,
    ) -> None:
        super().__init__()
        self._messages = messages
        self._destination = destination
        self._system = system
        self._attributes = attributes
        self._start_ns = start_time_ns

    def open(self) -> receive_scope:
        """Start the receive span with one link per message that carries a valid context."""
        settings = get_settings()
        if not settings.enabled or settings.propagation_only or not sdk_installed():
            return self
        try:
            links = []
            count = 0
            for carrier, message_id in self._messages:
                count += 1
                sc = read(carrier, settings).span_context
                if sc is not None:
                    link_attrs = {semconv.MESSAGING_MESSAGE_ID: message_id} if message_id else None
                    links.append(Link(sc, link_attrs))
            attrs: dict[str, AttributeValue] = {
                semconv.MESSAGING_SYSTEM: self._system,
                semconv.MESSAGING_OPERATION_NAME: semconv.OP_RECEIVE,
                semconv.MESSAGING_OPERATION_TYPE: semconv.OP_RECEIVE,
                semconv.MESSAGING_DESTINATION_NAME: self._destination,
                semconv.MESSAGING_BATCH_MESSAGE_COUNT: count,
            }
            _add_attributes(attrs, self._attributes)
            self.span = start_span(
                semconv.receive_span_name(self._destination), get_current(), SpanKind.CLIENT, attrs,
                links, self._start_ns,
            )
        except Exception as exc:
            diagnostics.internal_error("receive_scope.open", exc)
        return self


__all__: Final = [
    "HopInfo",
    "consume_scope",
    "current_hop",
    "incoming_attributes",
    "incoming_parent",
    "incoming_transaction",
    "produce_scope",
    "receive_scope",
    "records_transaction",
    "start_child_span",
]
