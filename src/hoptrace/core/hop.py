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

import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from random import getrandbits as _getrandbits
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar, cast

from opentelemetry import trace as _trace_api
from opentelemetry.context import Context, create_key
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
)
from opentelemetry.util.types import AttributeValue

from . import diagnostics, metrics, semconv
from . import ids as _ids
from . import propagation as _propagation
from . import settings as _settings
from . import spans as _spans
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
    plain_span_init,
    restore,
    sdk_installed,
    span_in,
)
from .otel_shims import _CONTEXT_VAR, PROVIDER_GLOBAL, _provider_seen
from .propagation import (
    Incoming,
    carried_transaction_id,
    holds_transaction_header,
    incoming_from,
    read,
    render,
)
from .settings import get_settings, new_transaction_id
from .spans import start_span

Attributes = Mapping[str, AttributeValue]

#: The span a hoptrace scope made current, to tell it apart from a user's own ambient span.
HOP_SPAN_KEY: Final = create_key("hoptrace.hop_span")


class HopInfo(NamedTuple):
    """The messaging system, destination and message ID of the consume scope in force."""

    system: str
    destination: str
    message_id: str | None


_new_tuple = tuple.__new__  # HopInfo without NamedTuple's Python-level __new__
_new_object = object.__new__
_SAMPLED_OFF: Final = _ids._SAMPLED_OFF  # (mint_span_context's flags)
#: ``NonRecordingSpan.__init__`` when all it does is store the span context (else None): a
#: consume scope then makes its span without the class call.
_NRS_INIT: Final = plain_span_init()
#: :func:`restore`'s own call, where OTel keeps the current Context in a ContextVar.
_reset: Final = _CONTEXT_VAR.reset if _CONTEXT_VAR is not None else None


def _consume_entry() -> Any:
    """The C module's ``open_unrecorded``, configured, when it may stand in for
    :meth:`consume_scope._open_unrecorded`'s common case; else None.

    That is: the module is built (and allowed) with the C reader, OTel keeps the current
    Context in a ContextVar (what :func:`attach` sets), ``Context`` makes its instances as
    ``dict`` does, and ``NonRecordingSpan`` is made as :data:`_NRS_INIT` allows.
    """
    module = _propagation._speedups
    entry = getattr(module, "open_unrecorded", None)
    if (entry is None or _CONTEXT_VAR is None or _NRS_INIT is None
            or _propagation._read_incoming is None
            or Context.__init__ is not dict.__init__ or Context.__new__ is not dict.__new__):
        return None
    module.configure_consume(_CONTEXT_VAR, NonRecordingSpan, Context, HopInfo, (
        SPAN_KEY, TRANSACTION_KEY, BAGGAGE_KEY, HOP_KEY, HOP_SPAN_KEY))
    return entry


#: ``_speedups.open_unrecorded`` (see :func:`_consume_entry`), or None: the Python steps.
_open_c: Any = _consume_entry()


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


def _dropped_child_of(
    parent: Span | SpanContext, span_id: int | None, where: str
) -> Span | None:
    """The non-recording child of ``parent`` (a span, or its span context) when the sampler
    is known to drop it, else None.

    :func:`spans.dropped_child` decides from the parent's span context (an invalid one, or
    one whose delegate may keep the child, gives None); a failure is counted at ``where``
    and returns :data:`_FAILED`.
    """
    try:
        return _spans.dropped_child(parent, span_id)  # (it reads the span's context)
    except Exception as exc:
        diagnostics.internal_error(where, exc)
        return _FAILED


#: :func:`_dropped_child_of`: the C module's ``dropped_hop`` (the same steps in one call) when
#: it is built, else the function itself.
_dropped_child: Callable[[Span | SpanContext, int | None, str], Span | None] = (
    _spans.use_c_entries(_FAILED) or _dropped_child_of)


#: ``_speedups.open_dropped`` (:meth:`consume_scope._open_dropped`'s common case in one
#: call) where :data:`_open_c` applies and :data:`_dropped_child` is the C module's
#: ``dropped_hop`` (:data:`_c_dropped_hop`), else None.
_c_dropped_hop: Any = getattr(_propagation._speedups, "dropped_hop", None)
_open_dropped_c: Any = getattr(_propagation._speedups, "open_dropped", None) if (
    _open_c is not None and _c_dropped_hop is not None and _dropped_child is _c_dropped_hop
) else None


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


#: :func:`first_attempt_span_id` itself (a replaced one is called, never computed in C).
_first_attempt_span_id: Final = first_attempt_span_id


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


def _ambient_parent(ambient: Context, span: Any, remote: SpanContext | None) -> Span | None:
    """``span``, the ambient one, if it may be the handler's parent: a valid span that is not
    another message's open scope when this message carries its own context (as
    :meth:`consume_scope._open_general` decides)."""
    sc = span.get_span_context()
    if sc is None or not sc.is_valid or (
        remote is not None and ambient.get(HOP_SPAN_KEY) is span
    ):
        return None
    return cast(Span, span)


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
            # (a dropped span's end does nothing: no end_span call for it, spans.NRS_END)
            if exc is not None or type(span) is not NonRecordingSpan or (
                    NonRecordingSpan.end is not _spans.NRS_END):
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
        if span is not None and (exc is not None or type(span) is not NonRecordingSpan or (
                NonRecordingSpan.end is not _spans.NRS_END)):
            end_span(span, exc, self._where)  # (skipped as close() skips it)
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


def _check_carrier(carrier: object) -> None:
    """Raise TypeError for a carrier of a type hoptrace cannot write (not dict or list)."""
    if not isinstance(carrier, (Mapping, list, tuple)):
        raise TypeError(
            f"unsupported carrier type {type(carrier).__name__}: use a dict of headers, "
            "a list of (key, value) pairs, or a tuple of pairs"
        )


def _send_values(
    parent: Context, span: Span | None, tx: str, carrier: Any, settings: Any, sent_time: bool,
    copy: bool,
) -> tuple[Any, Context | None, object]:
    """Attach the context a send runs in; return the carrier it sends, that context and the
    token to restore (see :class:`produce_scope`).

    The context is ``parent`` with ``span`` (the send span, or a minted one) current and
    transaction ``tx`` bound; None (and no token) when that is ``parent`` itself (no span,
    and ``tx`` is its own): nothing is attached. The carrier is ``carrier`` rendered into in
    place (a dict, unless ``copy``), else ``write_headers``' answer. A failure to render is
    counted and the carrier goes unchanged (a new dict for None), the context attached.
    """
    ctx: Context | None = None
    token: object = None
    if span is not None or tx is not parent.get(TRANSACTION_KEY):
        scoped: dict[str, object] = {**parent}
        if span is not None:
            scoped[SPAN_KEY] = scoped[HOP_SPAN_KEY] = span
        bind_transaction(scoped, tx, parent.get(BAGGAGE_KEY), settings)
        ctx = Context(scoped)
        token = attach(ctx)  # (before rendering: a propagator sees it current)
    try:
        if type(carrier) is dict and not copy:
            # Straight into the caller's dict (as inject does); on error it holds only
            # whole values.
            render(ctx if ctx is not None else parent, settings, carrier, sent_time)
            return carrier, ctx, token
        if carrier is None:  # (write_headers(None, values) is a copy of this new dict)
            return (render(ctx if ctx is not None else parent, settings, None, sent_time),
                    ctx, token)
        values = render(ctx if ctx is not None else parent, settings, None, sent_time,
                        holds_transaction_header(carrier))
        return write_headers(carrier, values, copy=copy), ctx, token
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        return ({} if carrier is None else carrier), ctx, token


class AttachedSend(tuple):  # type: ignore[type-arg]
    """The context :func:`unrecorded_send` attached: ``(token, context)``; :meth:`close` it."""

    __slots__ = ()

    def close(self, exc: BaseException | None = None) -> None:
        """Detach the context, as the send scope's ``close()`` would (``exc`` is ignored).

        That is: only while the context, or one built on its send span, is still current
        (:meth:`_Scope._release` for a scope closed by a call); else it is counted and left.
        """
        token, attached = self
        current = get_current()
        if current is not attached:
            mark = attached.get(HOP_SPAN_KEY)
            if mark is None or current.get(HOP_SPAN_KEY) is not mark:
                diagnostics.count("scope.left_already")
                return
        if _reset is None:
            if not restore(token):
                diagnostics.count("scope.closed_elsewhere")
            return
        try:  # restore(token), inline
            _reset(token)
        except (ValueError, RuntimeError):
            diagnostics.count("scope.closed_elsewhere")


#: :meth:`AttachedSend.close` as written above: the C module's method stands in for it where
#: :data:`_send_c` is built (see :func:`_send_entry`), and calls it for what it leaves.
_attached_close_py: Final = AttachedSend.__dict__["close"]


#: Whether :func:`unrecorded_send` takes :func:`_fresh_send` where it may (the tests turn it
#: off to compare the two).
_fresh_fast: bool = True


def _fresh_send(
    settings: Any, sent_time: bool, pairs: bool = False
) -> tuple[dict[str, Any] | list[tuple[str, bytes]], AttachedSend]:
    """:func:`unrecorded_send` of no carrier in an empty context: a new transaction (and,
    without an SDK, a new trace), attached, and the headers that carry it.

    What the general path computes for it, without what an empty context makes moot (its
    copy, its transaction and baggage lookups, the carrier's transaction ID) and with
    ``render``'s common case inline: the same IDs from the same random draws (the
    transaction ID's first), the same context, the same headers
    (tests/unit/test_send_attach.py compares the two). ``pairs``: the C writer may answer the
    headers as the new list of (name, UTF-8 bytes) pairs a Kafka client sends instead.
    """
    tx = (  # generate_transaction_id(); the default generator's random.randbytes(16), inline
        _getrandbits(128).to_bytes(16, "little").hex()
        if settings.transaction_id_generator is new_transaction_id
        else generate_transaction_id())
    span: Any = None
    trace_id = span_id = state = None
    if not sdk_installed():  # no backend: the trace starts here
        if _ids.TUPLE_LAYOUT:  # mint_span_context()'s own steps, the IDs kept at hand
            trace_id = _getrandbits(128) or 1
            span_id = _getrandbits(64) or 1
            state = DEFAULT_TRACE_STATE
            sc = _new_tuple(SpanContext, (trace_id, span_id, False, _SAMPLED_OFF, state, True))
        else:
            sc = mint_span_context()
            trace_id, span_id, state = sc.trace_id, sc.span_id, sc.trace_state
        if NonRecordingSpan.__init__ is _NRS_INIT:  # NonRecordingSpan(sc), no call
            span = _new_object(NonRecordingSpan)
            span._context = sc
        else:
            span = NonRecordingSpan(sc)
        scoped: dict[str, object] = {SPAN_KEY: span, HOP_SPAN_KEY: span, TRANSACTION_KEY: tx}
    else:
        scoped = {TRANSACTION_KEY: tx}
    if settings.baggage_mirror:  # (bind_transaction without a baggage)
        scoped[BAGGAGE_KEY] = {settings.baggage_key: tx}
    ctx = Context(scoped)
    token = attach(ctx)
    attached: AttachedSend = _new_tuple(AttachedSend, (token, ctx))
    values: Any = [] if pairs else {}
    try:
        names = _propagation._names
        now = _propagation._propagate_now
        if not (  # render(ctx, settings, None, sent_time)'s common case (else render itself)
            now is not None and now._HTTP_TEXT_FORMAT is _propagation._w3c_now
            and _propagation._write_common is not None and names.settings is settings
            and (names.written is not None or not names.tight)
            and (state is None or state is _propagation._DEFAULT_STATE)
        ):
            return render(ctx, settings, None, sent_time), attached
        if not _propagation._write_common(
            values, trace_id, span_id, False, semconv.TRACEPARENT, names.written, tx,
            semconv.BAGGAGE, names.mirror_prefix if settings.baggage_mirror else None,
            names.sent if sent_time else None, None,
        ):
            values = {}  # (nothing written: the Python writer's dict)
            _propagation._write_text(values, trace_id, span_id, 0, state, tx, None, settings,
                                     sent_time, names.written)
        return values, attached
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        return {}, attached


def unrecorded_send(
    carrier: Carrier, sent_time: bool = True, copy: bool = False, pairs: bool = False
) -> tuple[Any, AttachedSend | None] | None:
    """A send's carrier, its context attached, when its scope would make no span nor metric.

    For a client whose send runs user code (a serializer, a partitioner, an errback) whose
    log lines must keep the trace and the transaction ID. When no span is made
    (``propagation_only``, or no SDK) and metrics are off, ``produce_scope(carrier, ...,
    copy=copy, sent_time=sent_time).open()`` would only render its carrier and attach its
    context: the same two here, in one step and without the scope. Returns the carrier to
    send and the attached context, to :meth:`~AttachedSend.close` once the client's call
    returns or raises (None: nothing attached, as the scope attaches nothing either).
    None when hoptrace is disabled or the send needs its scope. Raises TypeError as the
    scope does (tests/unit/test_send_attach.py compares the two). ``pairs``: for no carrier,
    the headers may come as a new list of (name, UTF-8 bytes) pairs instead of the dict.
    """
    settings = _settings._current or get_settings()
    if not settings.enabled or not (settings.propagation_only or not sdk_installed()) or (
        metrics.provider_source._METER_PROVIDER is not metrics.off_provider and metrics.enabled()
    ):
        return None
    if carrier is not None and type(carrier) is not dict and type(carrier) is not list:
        _check_carrier(carrier)
    try:
        # produce_scope.open with metrics off, and _start_span making no span.
        parent = get_current()
        if carrier is None and not parent and _fresh_fast:
            return _fresh_send(settings, sent_time, pairs)
        tx = parent.get(TRANSACTION_KEY)  # (current_transaction_id's common case, inline)
        if type(tx) is not str:
            tx = current_transaction_id(parent)
        tx = tx or produce_scope._carried(carrier) or generate_transaction_id()
        active = parent.get(SPAN_KEY)
        span = None
        if (active is None or not active.get_span_context().is_valid  # type: ignore[attr-defined]
                ) and not sdk_installed():
            span = NonRecordingSpan(mint_span_context())  # (no backend: the trace starts here)
        carrier, ctx, token = _send_values(parent, span, tx, carrier, settings, sent_time, copy)
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        return ({} if carrier is None else carrier), None
    if ctx is None:
        return carrier, None
    return carrier, _new_tuple(AttachedSend, (token, ctx))


#: ``NonRecordingSpan.is_recording`` as the API defines it (see :func:`drops_send_spans`).
_NRS_IS_RECORDING: Final = NonRecordingSpan.is_recording


def drops_send_spans(settings: Any) -> bool:
    """Whether a send scope whose span the sampler drops would do nothing but attach its
    context and render the carrier (see :func:`dropped_send`): hoptrace enabled, spans on,
    metrics off (the scope's hooks' own check), and ``NonRecordingSpan``'s ``end`` and
    ``is_recording`` the API's own, so that ending the dropped span, with or without an
    error, does nothing."""
    return (settings.enabled and not settings.propagation_only
            and metrics.provider_source._METER_PROVIDER is metrics.off_provider
            and NonRecordingSpan.end is _spans.NRS_END
            and NonRecordingSpan.is_recording is _NRS_IS_RECORDING)


def _send_entry() -> Any:
    """The C module's ``dropped_send``, configured, when it may stand in for
    :func:`dropped_send`'s common case; else None (pure Python, a stale build, or an OTel
    whose internals it does not read: the current Context in a ContextVar, ``Context`` made
    as ``dict`` makes its instances, the global provider in ``trace._TRACER_PROVIDER``, the
    6-tuple ``SpanContext``, ``NonRecordingSpan.end`` the API's own, and the C module's
    ``dropped_hop`` built).

    It reads at every call what :func:`dropped_send`'s steps read (the settings and header
    names in force, metrics, ``NonRecordingSpan``'s methods, the SDK check's cached answer,
    :data:`_dropped_child`, the propagator), so that a change to any of them sends the call
    back to those steps; what it needs of the settings and names it keeps for the pair it
    read it from (a Settings is frozen, and the names are rebuilt for each new one).
    """
    module = _propagation._speedups
    entry = getattr(module, "dropped_send", None)
    if (entry is None or _CONTEXT_VAR is None or not PROVIDER_GLOBAL or not _ids.TUPLE_LAYOUT
            or _spans.NRS_END is None or _c_dropped_hop is None
            or Context.__init__ is not dict.__init__ or Context.__new__ is not dict.__new__):
        return None
    module.configure_send(
        sys.modules[__name__], _settings, metrics, metrics.provider_source, NonRecordingSpan,
        _spans.NRS_END, _NRS_IS_RECORDING, _trace_api, _provider_seen, _propagation,
        _CONTEXT_VAR, Context, AttachedSend, (SPAN_KEY, HOP_SPAN_KEY, TRANSACTION_KEY, BAGGAGE_KEY),
        (semconv.TRACEPARENT, semconv.BAGGAGE, "produce_scope.span", "produce_scope.open",
         DEFAULT_TRACE_STATE))
    # AttachedSend.close's common case (the context still current: its token reset) in C,
    # the Python method for the rest (test_speedups_dropped_send.py compares the two).
    AttachedSend.close = module.configure_close(  # type: ignore[method-assign]
        AttachedSend, _attached_close_py)
    return entry


#: ``_speedups.dropped_send`` (see :func:`_send_entry`), or None: the Python steps.
_send_c: Any = _send_entry()


def dropped_send(
    carrier: Carrier, sent_time: bool = True, copy: bool = False, attach: bool = True
) -> tuple[Any, AttachedSend | None] | None:
    """A send's carrier, its context attached, when the sampler is known to drop its span.

    :func:`unrecorded_send`'s counterpart with spans on: under a current span whose child
    the sampler drops (:func:`_dropped_child`), with :func:`drops_send_spans`, and in a
    transaction already in force or carried by ``carrier`` (else the scope draws one before
    the span's ID), ``produce_scope(carrier, ..., copy=copy, sent_time=sent_time).open()``
    would make that dropped child (the same random draws: its span ID alone), attach it
    current with the transaction bound, and render the carrier from that context; its
    ``close(exc)`` would only detach it (ending the API's ``NonRecordingSpan`` does nothing).
    The same here, without the scope, its attributes or its message ID, which a dropped span
    never keeps. Returns the carrier to send and the attached context, to
    :meth:`~AttachedSend.close` once the client's call returns or raises (None: nothing
    attached). None, with nothing done: the send needs its scope. Raises TypeError as the
    scope does (tests/unit/test_celery_dropped_send.py compares the two).

    ``attach=False``, for a client call that runs no user code (pika's ``basic_publish``):
    the same carrier, and nothing left attached (None in the context's place). The C entry
    then neither builds nor attaches the context; the Python steps attach it only while
    they render (a propagator may read the current context) and detach it before returning.

    The common case (a dict written in place, or a Kafka send's new empty list of pairs,
    under W3C propagation, in a transaction the current context binds) is one C call,
    :data:`_send_c`, which declines with nothing done whatever these steps would treat
    otherwise (tests/unit/test_speedups_dropped_send.py compares it with them).
    """
    if _send_c is not None:
        done = _send_c(carrier, sent_time, copy, attach)
        if done is not NotImplemented:
            if done is None or len(done) == 2:
                return done  # type: ignore[no-any-return]
            span, parent, tx, settings = done  # (the child asked for)
            return _dropped_rest(carrier, sent_time, copy, span, parent, tx, settings, attach)
    return _dropped_send(carrier, sent_time, copy, attach)


def _dropped_send(
    carrier: Carrier, sent_time: bool, copy: bool, attach: bool = True
) -> tuple[Any, AttachedSend | None] | None:
    """:func:`dropped_send`'s Python steps."""
    settings = _settings._current or get_settings()
    if not drops_send_spans(settings):
        return None
    parent = get_current()
    active = parent.get(SPAN_KEY)
    if active is None or not (  # (the scope asks _dropped_child only with an SDK)
        _provider_seen[1] if PROVIDER_GLOBAL and _trace_api._TRACER_PROVIDER is _provider_seen[0]
        else sdk_installed()  # (its cached answer inline, as consume_scope.open reads it)
    ):
        return None
    if carrier is not None and type(carrier) is not dict and type(carrier) is not list:
        _check_carrier(carrier)
    try:  # (produce_scope.open's steps, its failures counted as its own)
        tx = transaction_drawn(parent, carrier)
        if not tx:
            return None
        span: Any = _dropped_child(active, None, "produce_scope.span")  # type: ignore[arg-type]
        if span is None:  # the child may record: the scope makes it
            return None
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        return ({} if carrier is None else carrier), None
    return _dropped_rest(carrier, sent_time, copy, span, parent, tx, settings, attach)


def _dropped_rest(
    carrier: Carrier, sent_time: bool, copy: bool, span: Any, parent: Context, tx: str,
    settings: Any, attach: bool = True,
) -> tuple[Any, AttachedSend | None]:
    """:func:`dropped_send` once it has the dropped child ``span`` (or :data:`_FAILED`).
    ``attach`` False: the context attached while the carrier is rendered (a propagator may
    read it) is closed before returning."""
    attached: AttachedSend | None
    try:
        if span is _FAILED:  # counted: no send span, as the scope then makes none
            span = None
        elif not copy and (type(carrier) is dict or (type(carrier) is list and not carrier)):
            attached = _dropped_into(carrier, parent, span, tx, settings, sent_time)
            if attached is not None:
                if not attach:
                    attached.close()
                    attached = None
                return carrier, attached
        carrier, ctx, token = _send_values(parent, span, tx, carrier, settings, sent_time, copy)
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        return ({} if carrier is None else carrier), None
    if ctx is None:
        return carrier, None
    attached = _new_tuple(AttachedSend, (token, ctx))
    if not attach:
        attached.close()
        attached = None
    return carrier, attached


def _send_entry_steps() -> Callable[..., tuple[Any, AttachedSend | None] | None]:
    """:func:`dropped_send` as one C call (the C module's ``send_dropped``: :data:`_send_c`,
    then the same Python steps where it hands the send to them) where :data:`_send_c` is
    built, else :func:`dropped_send` itself."""
    if _send_c is None:
        return dropped_send
    _propagation._speedups.configure_steps(_dropped_send, _dropped_rest)
    return _propagation._speedups.send_dropped  # type: ignore[no-any-return]


#: What the clients call for :func:`dropped_send` (see :func:`_send_entry_steps`): no Python
#: frame of its own for the sends the C entry covers.
dropped_send_entry: Final = _send_entry_steps()


def transaction_drawn(parent: Context, carrier: Carrier) -> str | None:
    """``produce_scope.open``'s transaction for ``carrier`` under ``parent``, unless it would
    draw a new one (it draws that before the span's ID: such a send needs its scope)."""
    tx = parent.get(TRANSACTION_KEY)  # (current_transaction_id's common case, inline)
    if type(tx) is not str:
        tx = current_transaction_id(parent)
    return tx or produce_scope._carried(carrier)


def _dropped_into(
    values: Any, parent: Context, span: Any, tx: str, settings: Any, sent_time: bool
) -> AttachedSend | None:
    """:func:`dropped_send`'s ``_send_values`` for a dict carrier written in place, or a new
    empty list of pairs (Kafka's send without headers): with ``render``'s common case inline,
    the C writer straight into ``values``; else None, with nothing done (the general steps).

    The same context (``parent`` with ``span`` current, ``tx`` bound), attached before the
    headers are written; the same headers: W3C propagation alone, a baggage of at most the
    transaction's own entry, the writer's header choice needing no look at ``values``
    beyond whether it holds the transaction header, and ``span``'s valid span context of
    no trace state (tests/unit/test_celery_dropped_send.py and
    test_kafka_sampled_dropped_send.py compare it with the scope).
    """
    names = _propagation._names
    now = _propagation._propagate_now
    header = names.written
    if not (
        now is not None and now._HTTP_TEXT_FORMAT is _propagation._w3c_now
        and _propagation._write_common is not None and names.settings is settings
        and (header is not None or not (names.tight or names.transaction in values))
        and _ids.TUPLE_LAYOUT
    ):
        return None
    trace_id, span_id, _, flags, state, valid = span.get_span_context()
    if not valid or not (state is None or state is _propagation._DEFAULT_STATE or not state):
        return None
    scoped: dict[str, object] = {**parent}
    scoped[SPAN_KEY] = scoped[HOP_SPAN_KEY] = span
    entries: Any = parent.get(BAGGAGE_KEY)
    if (tx is not parent.get(TRANSACTION_KEY) or not settings.baggage_mirror or not entries
            or entries.get(settings.baggage_key) != tx):  # (else it would change nothing)
        bind_transaction(scoped, tx, entries, settings)
        entries = scoped.get(BAGGAGE_KEY)
    if entries and (len(entries) != 1 or entries.get(names.baggage_key) != tx):
        return None  # (other entries: render's general case)
    ctx = Context(scoped)
    attached: AttachedSend = _new_tuple(AttachedSend, (attach(ctx), ctx))
    try:
        if not _propagation._write_common(
            values, trace_id, span_id, bool(flags & 1), semconv.TRACEPARENT, header, tx,
            semconv.BAGGAGE, names.mirror_prefix if settings.baggage_mirror else None,
            names.sent if sent_time else None, None,
        ):
            if type(values) is list:  # (a new list of pairs: render's, as the scope writes it)
                write_headers(values, render(ctx, settings, None, sent_time))
            else:
                _propagation._write_text(values, trace_id, span_id, flags & 1, state, tx,
                                         None if entries else entries, settings, sent_time,
                                         header)
    except Exception as exc:
        diagnostics.internal_error("produce_scope.open", exc)
        if type(values) is list:
            values.clear()  # (a new list: sent with no headers rather than half of them)
    return attached


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
        if carrier is not None and kind is not dict and kind is not list:
            _check_carrier(carrier)
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
            # (As _attach: the context, when there is one to attach, and its token.)
            self.carrier, self._attached, self._token = _send_values(
                parent, span, tx, carrier, settings, self._sent_time, self._copy)
        except Exception as exc:
            diagnostics.internal_error("produce_scope.open", exc)
            if self.carrier is None:
                self.carrier = {}
        return self

    @staticmethod
    def _carried(carrier: Carrier) -> str | None:
        # Outside any transaction, a message that already carries a valid ID (one a
        # framework or another instrumentation passes on) keeps it. (A new empty list, a
        # Kafka send's without headers, carries none: no read.)
        if carrier is None or (type(carrier) is list and not carrier):
            return None
        return carried_transaction_id(carrier)

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
        "_incoming",
        "_kind",
        "_links",
        "_message_id",
        "_name",
        "_operation",
        "_redelivered",
        "_sent_ns",
        "_system",
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
        # _Scope.__init__'s fields, set here (one frame and a super() call less per message)
        self.span: Span | None = None
        self._token: object | None = None
        self._attached: Context | None = None
        self._closed = False
        self.metrics_record: metrics.Record | None = None
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
        self._incoming: Incoming | tuple[Any, ...] | None = None
        self.transaction_id: str | None = None
        self.queue_wait_ms: float | None = None
        self._active: SpanContext | None = None

    #: Whether a scope that makes no span opens through :meth:`_open_unrecorded` (the tests
    #: turn it off to compare that fast path with the general one).
    _unrecorded_fast: bool = True

    #: Whether a scope that makes spans opens through :meth:`_open_dropped`, with its
    #: shortcut for a span the sampler is known to drop (the tests turn it off to compare it
    #: with :meth:`_open_general`).
    _dropped_fast: bool = True

    def open(self: _S) -> _S:
        """Open the scope unless hoptrace is disabled; never raises."""
        # _Scope.open and _open's choice inline (every consumed message opens a scope);
        # get_settings()'s common case too.
        settings = _settings._current or get_settings()
        if settings.enabled:
            try:
                if self._unrecorded_fast and (  # type: ignore[attr-defined]
                    settings.propagation_only or not (  # sdk_installed(), its cached answer inline
                        _provider_seen[1] if PROVIDER_GLOBAL
                        and _trace_api._TRACER_PROVIDER is _provider_seen[0] else sdk_installed())
                ):
                    self._open_unrecorded(settings)  # type: ignore[attr-defined]
                elif self._unrecorded_fast and self._dropped_fast:  # type: ignore[attr-defined]
                    self._open_dropped(settings)  # type: ignore[attr-defined]
                else:
                    self._open(settings)
            except Exception as exc:
                diagnostics.internal_error(self._opening, exc)
        return self

    def _open(self, settings: Any) -> None:
        """Extract the message's context, start the span and attach both."""
        spans = not settings.propagation_only and sdk_installed()
        if not spans and self._unrecorded_fast:
            self._open_unrecorded(settings)
            return
        if spans and self._dropped_fast:
            self._open_dropped(settings)
            return
        now_ns = time.time_ns()
        incoming = read(self._carrier, settings)
        self._incoming = incoming
        self._open_general(settings, incoming, get_current(), now_ns, spans, None)

    def _open_dropped(self, settings: Any) -> None:
        """:meth:`_open` with spans on, first trying the shortcut for a dropped span.

        When the message carries a span context, is trusted, parent mode is on, and there is
        no ambient span, extra link or redelivery (a first delivery's flag, ``False``, gives
        the span its fixed ID), the producer's span is the parent, with no links
        (:func:`incoming_parent`'s answer). When the sampler is known to drop
        its child, that child is all the span work: no parent span object, attributes or
        links (test_sdk_spans_dropped.py). A carrier of valid context is read in one C call
        (:attr:`incoming` is built from it only when asked for), else by :func:`read`;
        everything else goes on through :meth:`_open_general`
        (test_consume_dropped_fast_path.py compares the two). Where :data:`_open_dropped_c`
        applies (as :data:`_open_c` does, and ``_dropped_child`` is the C module's), that C
        call also asks for the dropped child (a first delivery's with its fixed ID) and
        attaches the handler's context when the message carries all of its context and no
        span is current (the same test and test_speedups_random_ids.py compare it with
        these steps).
        """
        now_ns = time.time_ns()
        carrier = self._carrier
        kind = type(carrier)
        found: Any = None
        if (kind is list or kind is dict or kind is tuple) and (
            _propagation._read_incoming is not None
            and _propagation._propagate_now is not None
            and _propagation._propagate_now._HTTP_TEXT_FORMAT is _propagation._w3c_now
            and (_propagation._read_pairs if kind is not dict else _propagation._read_common)
            is not None
        ):  # read()'s C path, inline; :attr:`incoming` is built from it only when asked for
            names = _propagation._names
            opens = (_open_dropped_c is not None and _dropped_child is _c_dropped_hop
                     and settings.trust_incoming and settings.link_mode != "link"
                     and (self._redelivered is None or self._redelivered is False)
                     and not self._links and NonRecordingSpan.__init__ is _NRS_INIT
                     and metrics.provider_source._METER_PROVIDER is metrics.off_provider)
            try:
                spec = (names.spec if settings is names.settings
                        else _propagation._incoming_spec(names, settings))
                if not opens:
                    found = _propagation._read_incoming(carrier, spec)
            except Exception:  # read() below counts it
                found = opens = None
            if opens:  # (outside the try: once the sampler was asked, an error is open()'s)
                found = _open_dropped_c(
                    carrier, spec, settings.baggage_key, now_ns, self._sent_ns, self._system,
                    self._destination, self._message_id, "consume_scope.span",
                    # (a first delivery's child gets the first attempt's span ID, as _span_id
                    # gives it; the C module computes it from the salts only for this
                    # module's own function)
                    None if self._redelivered is None else first_attempt_span_id,
                    _destination_salts if first_attempt_span_id is _first_attempt_span_id
                    else None)
        # found: the C reader's result when the carrier holds only valid context (what read()
        # returns, as incoming_from builds it), else None (then read() reads it, rejects what
        # it must and counts a failure); from _open_dropped_c, the scope's fields when it
        # opened the scope (7 items), or (found,) when it asked the sampler, which may keep
        # the child
        if found is not None and len(found) != 4:  # _open_dropped_c asked the sampler
            if len(found) == 7:  # and opened the scope: its fields
                (self._incoming, self.transaction_id, wait, self._active, self._token,
                 self._attached, self.span) = found
                if wait is not None:
                    self.queue_wait_ms = wait
                self.metrics_record = None
                return
            found = self._incoming = found[0]  # the child may be kept: the general path
            self._open_general(settings, self.incoming, get_current(), now_ns, True, found[1])  # type: ignore[arg-type]
            return
        if found is not None:  # all of it valid: what read() would return, as a tuple
            self._incoming = found
            remote, carried, baggage, sent = found
        else:
            incoming = self._incoming = read(self._carrier, settings)
            remote = incoming.span_context
            carried = incoming.transaction_id
            baggage = incoming.baggage
            sent = incoming.sent_ns
        ambient = get_current()
        tx = None
        if (remote is not None and settings.trust_incoming and settings.link_mode != "link"
                and ambient.get(SPAN_KEY) is None and (
                    self._redelivered is None or self._redelivered is False)
                and not self._links):
            tx = carried or generate_transaction_id()  # (incoming_transaction)
            # (A first delivery's span gets its fixed ID, as _span_id gives it.)
            span: Any = _dropped_child(remote, None if self._redelivered is None else (
                first_attempt_span_id(remote, self._destination)), "consume_scope.span")
            if span is not None:
                self.transaction_id = tx
                if span is _FAILED:  # counted: no span, the producer's context goes on
                    span = NonRecordingSpan(remote)
                else:
                    self.span = span
                self._enter(ambient, span, tx, baggage, baggage if baggage is not None
                            else ambient.get(BAGGAGE_KEY), self._queue_wait(sent, now_ns),
                            now_ns, settings)
                return
        self._open_general(settings, self.incoming, ambient, now_ns, True, tx)  # type: ignore[arg-type]

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
        skew = self._queue_wait(incoming.sent_ns, now_ns)
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
        ctx = Context(values)  # (_attach, inline)
        self._token = attach(ctx)
        self._attached = ctx

    def _open_unrecorded(self, settings: Any) -> None:
        """:meth:`_open` when no span is made (propagation-only, no SDK): the same context.

        What the general path computes only for a span (its links, attributes, upstream ID,
        fixed span ID) is left out; everything the context, the scope's fields and metrics
        get is the same (tests/unit/test_consume_fast_path.py compares the two). Every
        consumed message runs it: :meth:`_queue_wait` and the common case of
        :meth:`_handler_values` are inline. Where :data:`_open_c` applies (a trusted sender,
        parent mode, metrics off), the C module does it all in one call when the message
        carries all of its context and no span is current (test_consume_open_c.py compares
        the two); else it hands back what it read and the steps below go on from there.
        """
        now_ns = time.time_ns()
        carrier = self._carrier
        kind = type(carrier)
        found: Any = None
        if (kind is list or kind is dict or kind is tuple) and (
            _propagation._read_incoming is not None
            and _propagation._propagate_now is not None
            and _propagation._propagate_now._HTTP_TEXT_FORMAT is _propagation._w3c_now
            and (_propagation._read_pairs if kind is not dict else _propagation._read_common)
            is not None
        ):  # read()'s C path, inline; :attr:`incoming` is built from it only when asked for
            names = _propagation._names
            try:
                spec = names.spec if settings is names.settings else _propagation._incoming_spec(
                    names, settings)
                if (_open_c is not None and settings.trust_incoming
                        and settings.link_mode != "link" and NonRecordingSpan.__init__ is _NRS_INIT
                        and metrics.provider_source._METER_PROVIDER is metrics.off_provider):
                    found = _open_c(carrier, spec, settings.baggage_key, now_ns, self._sent_ns,
                                    self._system, self._destination, self._message_id)
                    if found is not None and len(found) == 6:  # open: its fields
                        (self._incoming, self.transaction_id, wait, self._active, self._token,
                         self._attached) = found
                        if wait is not None:
                            self.queue_wait_ms = wait
                        self.metrics_record = None
                        return
                else:
                    found = _propagation._read_incoming(carrier, spec)
            except Exception:  # read() below counts it
                found = None
        if found is not None:  # all of it valid
            self._incoming = found
            remote, carried_tx, baggage, sent = found
        else:
            incoming = self._incoming = read(carrier, settings)
            remote = incoming.span_context
            carried_tx = incoming.transaction_id
            baggage = incoming.baggage
            sent = incoming.sent_ns
        ambient = get_current()
        trusted = settings.trust_incoming
        # incoming_transaction, without the upstream ID only a span records
        tx = self.transaction_id = (carried_tx if trusted else None) or generate_transaction_id()
        ambient_span = ambient.get(SPAN_KEY) if ambient else None  # (a poll loop: nothing)
        if ambient_span is not None:
            ambient_span = _ambient_parent(ambient, ambient_span, remote)
        # incoming_parent, without the links only a span records
        span: Any
        if (ambient_span is None and remote is not None and trusted
                and settings.link_mode != "link"):
            if NonRecordingSpan.__init__ is _NRS_INIT:  # NonRecordingSpan(remote), no call
                span = _new_object(NonRecordingSpan)
                span._context = remote
            else:
                span = NonRecordingSpan(remote)
            active = remote
        else:
            span = ambient_span if ambient_span is not None else NonRecordingSpan(
                mint_span_context())
            active = span.get_span_context()
        if not trusted:
            baggage = None
        skew = self._queue_wait(sent, now_ns)  # (the common case is _open_c's, above)
        if not ambient and baggage is not None and baggage.get(settings.baggage_key) is tx:
            # _handler_values' common case (a poll loop; the sender's baggage with this ID)
            ctx = Context({
                SPAN_KEY: span, TRANSACTION_KEY: tx, BAGGAGE_KEY: baggage,
                HOP_KEY: _new_tuple(HopInfo, (self._system, self._destination,
                                              self._message_id)),
                HOP_SPAN_KEY: span})
        else:
            ctx = Context(self._handler_values(ambient, span, tx, baggage, (
                baggage if baggage is not None else ambient.get(BAGGAGE_KEY)), settings))
        self._active = active
        self.metrics_record = None if (  # metrics off: the hook's own check, without its call
            metrics.provider_source._METER_PROVIDER is metrics.off_provider
        ) else metrics.consumed(
            self._system, self._operation, self._destination, self._attributes,
            self.queue_wait_ms, skew, baggage, now_ns, self._redelivered, self._carrier)
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

    def _queue_wait(self, sent: int | None, now_ns: int) -> bool:
        """Set :attr:`queue_wait_ms` from the message's send time; return whether it was skewed.

        The send time is the one the message carries (``sent``), else the broker's
        (``sent_ns``). A send time in the future (clock skew between hosts) is counted and
        gives a wait of 0.
        """
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

    @property
    def incoming(self) -> Incoming | None:
        """What the scope read from the message's carrier (None before it opened)."""
        found = self._incoming
        if type(found) is tuple:  # the C reader's result, kept as it came
            found = self._incoming = incoming_from(found)
        return found  # type: ignore[return-value]

    @incoming.setter
    def incoming(self, value: Incoming | None) -> None:
        self._incoming = value


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
    "AttachedSend",
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
    "unrecorded_send",
]
