"""``inject`` and ``extract``: W3C trace context, baggage, transaction ID and send time.

``inject`` writes, replacing what is there:

* ``traceparent`` / ``tracestate`` from the active span (minted, unsampled, when no OTel SDK
  is installed and no trace is active, so every hop still shares a trace ID);
* ``baggage`` from the context, plus the transaction ID as its ``transaction.id`` entry
  (generating an ID outside any transaction);
* the transaction header only when ``transaction_header`` names one, or when the baggage
  cannot carry the ID (``baggage_mirror`` off, the entry over the baggage limits, configured
  propagators that write no baggage), so the ID is never lost. ``extract`` reads
  ``x-transaction-id`` (or the configured header) on every message, before the entry;
* the send time in nanoseconds since the epoch (``x-hoptrace-sent-ns``).

``extract`` never raises. Each malformed value is rejected, counted and warned about (at most
once per interval); what is valid is kept.

The common case of both (well-formed headers of the kinds hoptrace sends, in a dict, or for
``extract`` also in a list or tuple of ``(str, bytes)`` pairs as the Kafka clients give, with a
baggage holding only the transaction ID, or the pathway metric's origin entry and the
transaction ID) runs in the optional C module ``hoptrace._speedups`` when it is built and
``HOPTRACE_PURE_PYTHON`` is unset; :data:`ACCELERATED` says which is in use. Everything else
takes the Python code below, which the C code defers to, so both give the same results.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from random import getrandbits as _getrandbits
from time import time_ns
from typing import Any, Final
from urllib.parse import quote, unquote

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator, default_setter
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from . import diagnostics, semconv
from .carriers import (
    Carrier,
    HeadersGetter,
    Rejected,
    as_text,
    is_many,
    read_headers,
    utf8_size,
    write_headers,
)
from .context import (
    SENT_NS_KEY,
    TRANSACTION_KEY,
    bind_transaction,
    current_transaction_id,
)
from .ids import generate_transaction_id, mint_span_context
from .metrics import ORIGIN_BAGGAGE_KEY
from .otel_shims import BAGGAGE_KEY, SPAN_KEY, get_current, sdk_installed
from .propagator import baggage_entry, configured_textmap, propagate_module
from .settings import (
    TRANSACTION_ID_PATTERN,
    Settings,
    get_settings,
    new_transaction_id,
    on_change,
)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_KEY = re.compile(
    r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_BAGGAGE_KEY_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+")
_BAGGAGE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}").fullmatch
_TRANSACTION_ID = TRANSACTION_ID_PATTERN.fullmatch
_MISSING: Final = object()
_ODD: Final = frozenset("13579bdf")  # last hex digit of trace-flags with the sampled bit set
_DEFAULT_STATE: Final = DEFAULT_TRACE_STATE


def _checked_span_context(
    trace_id: int, span_id: int, flags: TraceFlags, state: TraceState
) -> SpanContext:
    return SpanContext(trace_id, span_id, True, flags, state)


def _fast_span_context(
    trace_id: int, span_id: int, flags: TraceFlags, state: TraceState
) -> SpanContext:
    # The IDs were validated (non-zero, 128/64-bit hex), so SpanContext's own checks would
    # only repeat them. Used only when the layout check below holds for this OTel version.
    return _tuple_new(SpanContext, (trace_id, span_id, True, flags, state, True))


_tuple_new = tuple.__new__
_probe = _checked_span_context(1, 2, TraceFlags(1), DEFAULT_TRACE_STATE)
#: SpanContext is the 6-tuple (trace_id, span_id, is_remote, flags, state, is_valid).
_TUPLE_LAYOUT: Final = (
    isinstance(_probe, tuple)
    and tuple(_probe) == (1, 2, True, 1, DEFAULT_TRACE_STATE, True)
    and _fast_span_context(1, 2, TraceFlags(1), DEFAULT_TRACE_STATE) == _probe
    and _fast_span_context(1, 2, TraceFlags(1), DEFAULT_TRACE_STATE).is_remote
)
_span_context = _fast_span_context if _TUPLE_LAYOUT else _checked_span_context
_MAX_TRACEPARENT = 512
_MAX_SENT = 20
_MAX_TRANSACTION = 128

#: Room the baggage "<origin key>=<digits>,<mirror key>=<tx>" takes beyond the digits, the
#: mirror key and the transaction ID: the origin key, "=" and ",".
_ORIGIN_ROOM: Final = len(ORIGIN_BAGGAGE_KEY) + 2

_SAMPLED: Final = TraceFlags(1)
_NOT_SAMPLED: Final = TraceFlags(0)


def _load_speedups() -> Any:
    if os.environ.get("HOPTRACE_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from .. import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _speedups


_speedups = _load_speedups()
#: Whether :func:`read` reads a dict in C (the tests set these two to None to compare the
#: Python reader with it)...
_read_common = _speedups.read_common if _speedups is not None else None
#: ... and a list or tuple of (str, bytes) pairs, Kafka's headers (None: a stale build).
_read_pairs = getattr(_speedups, "read_pairs", None)
#: What read() calls for either: read_common or read_pairs, and what the Python reader
#: builds from their result (the span context, the baggage), in one call. None: a stale
#: build, or an OTel whose SpanContext is not the 6-tuple the C code builds; then the
#: Python reader reads everything.
_read_incoming = getattr(_speedups, "read_incoming", None) if _TUPLE_LAYOUT else None
_write_common = _speedups.write_common if _speedups is not None else None
_mint_common = _speedups.mint_common if _speedups is not None else None
#: Whether the C module ``hoptrace._speedups`` handles the common case of inject and extract.
ACCELERATED: Final = _speedups is not None


#: The OTel propagate module once loaded, and its global propagator when last seen to be the
#: W3C set. ``read`` and ``render`` compare the global propagator with it by identity, so the
#: W3C fast path costs one attribute read; anything else goes through :func:`_through`.
_propagate_now: Any = None
_w3c_now: object = None


def _through() -> TextMapPropagator | None:
    """The configured propagator to go through, or None for the W3C set (then remembered)."""
    global _propagate_now, _w3c_now
    textmap = configured_textmap()
    module = propagate_module()
    if textmap is None and module and hasattr(module, "_HTTP_TEXT_FORMAT"):
        _propagate_now = module
        _w3c_now = module._HTTP_TEXT_FORMAT
    return textmap


class Incoming:
    """What :func:`read` found in a carrier: the valid parts and the rejection reasons."""

    # Class-level defaults: most messages set two or three of these, so an instance only
    # stores what was found.
    span_context: SpanContext | None = None
    baggage: dict[str, str] | None = None
    transaction_id: str | None = None
    sent_ns: int | None = None
    rejected: tuple[str, ...] = ()


class _Names:
    """Header names for the settings in force, rebuilt when the settings change."""

    __slots__ = (
        "all", "baggage_key", "mirror_prefix", "mirror_room", "sent", "settings", "spec", "tight",
        "transaction", "wanted", "written",
    )

    def __init__(self, settings: Settings) -> None:
        #: The transaction header read on every consume, and written when ``written`` is None
        #: but the baggage cannot carry the ID (or the carrier holds one, which would go stale).
        self.transaction = settings.read_transaction_header
        self.written = settings.written_transaction_header
        #: The longest transaction ID the mirror alone carries within ``max_baggage_bytes``,
        #: and whether a valid ID (at most 128 characters) can be longer.
        self.mirror_room = settings.max_baggage_bytes - len(settings.baggage_key) - 1
        self.tight = self.mirror_room < _MAX_TRANSACTION
        self.sent = settings.sent_time_header
        self.baggage_key = settings.baggage_key
        self.mirror_prefix = settings.baggage_key + "="
        self.all = (
            semconv.TRACEPARENT,
            semconv.TRACESTATE,
            semconv.BAGGAGE,
            self.transaction,
            self.sent,
        )
        self.wanted = frozenset(self.all)
        #: ``settings``' arguments to ``_speedups.read_incoming`` (see :func:`_incoming_spec`).
        self.settings = settings
        self.spec = _incoming_spec(self, settings)


def _incoming_spec(names: _Names, settings: Settings) -> tuple[Any, ...]:
    """``_speedups.read_incoming``'s spec: read_common's arguments, then what to build."""
    allow = settings.baggage_allowlist
    return (
        semconv.TRACEPARENT, semconv.TRACESTATE, semconv.BAGGAGE, names.transaction,
        names.sent, names.mirror_prefix, settings.max_baggage_bytes, _MAX_TRANSACTION,
        # The origin entry, where the Python reader would keep it whole.
        (allow is None or ORIGIN_BAGGAGE_KEY in allow) and settings.max_baggage_members > 1,
        SpanContext, _SAMPLED, _NOT_SAMPLED, _DEFAULT_STATE, names.baggage_key,
        ORIGIN_BAGGAGE_KEY,
    )


_names = _Names(get_settings())


def _refresh(settings: Settings) -> None:
    global _names
    _names = _Names(settings)


on_change(_refresh)


class _Shown:
    """A rejected value as a warning shows it: built only if the warning is written, and safe.

    Text is cut before ``repr`` (a 1 MB header costs nothing), and a value whose ``repr``
    raises is shown by its type.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        value = self.value
        try:
            if isinstance(value, (str, bytes, bytearray)):
                shown = repr(value[:80]) + ("..." if len(value) > 80 else "")
            else:
                shown = repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"
        return shown if len(shown) <= 80 else shown[:77] + "..."


def _reject(incoming: Incoming, header: str, reason: str, value: object = None) -> None:
    incoming.rejected = (*incoming.rejected, f"{header}.{reason}")
    diagnostics.warn(
        f"rejected.{header}.{reason}",
        "hoptrace: ignored incoming %s (%s): %s",
        header,
        reason,
        _Shown(value),
    )


def _single_text(incoming: Incoming, header: str, raw: object, max_len: int) -> str | None:
    """Return one header's value as text, or None after rejecting it."""
    if is_many(raw):
        values = [as_text(v, max_len) for v in raw]  # type: ignore[attr-defined]
        first = values[0]
        if isinstance(first, Rejected) or any(v != first for v in values[1:]):
            _reject(incoming, header, "duplicate", raw)
            return None
        return first
    text = as_text(raw, max_len)
    if isinstance(text, Rejected):
        _reject(incoming, header, text, raw)
        return None
    return text


def _joined_text(incoming: Incoming, header: str, raw: object, max_len: int) -> str | None:
    """Return a list-valued header (tracestate, baggage) as text; repeats join with commas."""
    if is_many(raw):
        parts = []
        for value in raw:  # type: ignore[attr-defined]
            text = as_text(value, max_len)
            if isinstance(text, Rejected):
                _reject(incoming, header, text, value)
                return None
            parts.append(text)
        joined = ",".join(parts)
        if utf8_size(joined) > max_len:
            _reject(incoming, header, "size", joined)
            return None
        return joined
    text = as_text(raw, max_len)
    if isinstance(text, Rejected):
        _reject(incoming, header, text, raw)
        return None
    return text


def _parse_traceparent(incoming: Incoming, text: str) -> tuple[int, int, bool] | None:
    if len(text) == 55 and _TRACEPARENT_00(text):
        trace_id = int(text[3:35], 16)
        span_id = int(text[36:52], 16)
        if trace_id and span_id:
            return trace_id, span_id, text[54] in _ODD
        _reject(incoming, semconv.TRACEPARENT, "zero_id", text)
        return None
    match = _TRACEPARENT.match(text)
    if match is None:
        _reject(incoming, semconv.TRACEPARENT, "format", text)
        return None
    version = match.group(1)
    if version == "ff" or (version == "00" and len(text) != 55):
        _reject(incoming, semconv.TRACEPARENT, "format", text)
        return None
    if len(text) > 55 and text[55] != "-":
        _reject(incoming, semconv.TRACEPARENT, "format", text)
        return None
    trace_id = int(match.group(2), 16)
    span_id = int(match.group(3), 16)
    if trace_id == 0 or span_id == 0:
        _reject(incoming, semconv.TRACEPARENT, "zero_id", text)
        return None
    return trace_id, span_id, bool(int(match.group(4), 16) & 1)


def _parse_tracestate(incoming: Incoming, text: str) -> TraceState | None:
    pairs = []
    seen = set()
    for member in text.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, sep, value = member.partition("=")
        if (
            not sep
            or not _TRACESTATE_KEY.fullmatch(key)
            or not _TRACESTATE_VALUE.fullmatch(value)
            or key in seen
        ):
            _reject(incoming, semconv.TRACESTATE, "format", text)
            return None
        seen.add(key)
        pairs.append((key, value))
    if len(pairs) > 32:
        _reject(incoming, semconv.TRACESTATE, "members", text)
        return None
    return TraceState(pairs) if pairs else None


def _parse_baggage(incoming: Incoming, text: str, settings: Settings) -> dict[str, str]:
    entries: dict[str, str] = {}
    allow = settings.baggage_allowlist
    mirror = settings.baggage_key
    members = 0
    bad = False
    for member in text.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        members += 1
        if members > settings.max_baggage_members:
            _reject(incoming, semconv.BAGGAGE, "members", text)
            break
        pair = member.split(";", 1)[0]
        key, sep, value = pair.partition("=")
        key = key.strip(" \t")
        value = value.strip(" \t")
        if not sep or not _BAGGAGE_KEY_RE.fullmatch(key) or not _BAGGAGE_VALUE_RE.fullmatch(value):
            bad = True
            continue
        if allow is not None and key not in allow and key != mirror:
            diagnostics.count("baggage.filtered")
            continue
        entries[key] = unquote(value) if "%" in value else value
    if bad:
        _reject(incoming, semconv.BAGGAGE, "format", text)
    return entries


def _text(incoming: Incoming, header: str, raw: object, max_len: int, joined: bool) -> str | None:
    """Return a header value as text (fast path for plain str and bytes), or None if rejected."""
    kind = type(raw)
    if kind is str:
        if utf8_size(raw) <= max_len:  # type: ignore[arg-type]
            return raw  # type: ignore[return-value]
        _reject(incoming, header, "size", raw)
        return None
    if kind is bytes:
        if len(raw) <= max_len:  # type: ignore[arg-type]
            try:
                return raw.decode("utf-8")  # type: ignore[attr-defined, no-any-return]
            except UnicodeDecodeError:
                _reject(incoming, header, "encoding", raw)
                return None
        _reject(incoming, header, "size", raw)
        return None
    if joined:
        return _joined_text(incoming, header, raw, max_len)
    return _single_text(incoming, header, raw, max_len)


def read(carrier: Carrier | object, settings: Settings) -> Incoming:
    """Read and validate everything hoptrace propagates from ``carrier``. Never raises."""
    if _propagate_now is None or _propagate_now._HTTP_TEXT_FORMAT is not _w3c_now:
        textmap = _through()
        if textmap is not None:
            return _read_through(textmap, carrier, settings)
    incoming = Incoming()
    try:
        names = _names
        kind = type(carrier)
        # The common case in C (a list: Kafka's (str, bytes) pairs), in one call.
        if (kind is dict or kind is list or kind is tuple) and _read_incoming is not None and (
            _read_common if kind is dict else _read_pairs
        ) is not None:
            found = _read_incoming(
                carrier,
                names.spec if settings is names.settings else _incoming_spec(names, settings),
            )
            if found is not None:  # all of it valid already
                return incoming_from(found, incoming)
        raw = carrier if type(carrier) is dict else read_headers(carrier, names.wanted)
        if not raw:
            return incoming
        _take_all(incoming, raw, names, settings)
    except Exception as exc:
        diagnostics.internal_error("extract", exc)
    return incoming


def incoming_from(found: tuple[Any, ...], incoming: Incoming | None = None) -> Incoming:
    """The :class:`Incoming` (``incoming``, else a new one) filled with the C reader's result
    ``found``, a carrier's context that is all valid, as :func:`read` returns it."""
    if incoming is None:
        incoming = Incoming()
    span_context, incoming.transaction_id, baggage, incoming.sent_ns = found
    if span_context is not None:
        incoming.span_context = span_context
    if baggage is not None:  # (as _parse_baggage gives it)
        incoming.baggage = baggage
    return incoming


def _take_all(
    incoming: Incoming, raw: dict[str, object], names: _Names, settings: Settings
) -> None:
    """Fill ``incoming`` from the raw header values in ``raw``, validating each."""
    get = raw.get
    tp_raw = get(semconv.TRACEPARENT, _MISSING)
    if tp_raw is not _MISSING:
        text = (
            tp_raw
            if type(tp_raw) is str and len(tp_raw) <= _MAX_TRACEPARENT
            else _text(incoming, semconv.TRACEPARENT, tp_raw, _MAX_TRACEPARENT, False)
        )
        parsed = _parse_traceparent(incoming, text) if text is not None else None
        if parsed is not None:
            ts_raw = get(semconv.TRACESTATE, _MISSING)
            incoming.span_context = _span_context(
                parsed[0], parsed[1], _SAMPLED if parsed[2] else _NOT_SAMPLED,
                _DEFAULT_STATE if ts_raw is _MISSING else _trace_state(incoming, ts_raw, settings),
            )
    tx_raw = get(names.transaction, _MISSING)
    if tx_raw is not _MISSING:
        _take_transaction(incoming, tx_raw)
    bag_raw = get(semconv.BAGGAGE, _MISSING)
    if bag_raw is not _MISSING:
        text = (
            bag_raw
            if type(bag_raw) is str and len(bag_raw) <= settings.max_baggage_bytes
            and bag_raw.isascii()
            else _text(incoming, semconv.BAGGAGE, bag_raw, settings.max_baggage_bytes, True)
        )
        if text is not None:
            tx = incoming.transaction_id
            if tx is not None and text == names.mirror_prefix + tx:
                incoming.baggage = {names.baggage_key: tx}  # the common case: only the mirror
            elif (
                tx is None
                and text.startswith(names.mirror_prefix)
                and (alone := text[len(names.mirror_prefix):]).isalnum()
                and alone.isascii()
                and len(alone) <= _MAX_TRANSACTION
            ):
                # No transaction header (none is written by default): the mirror alone.
                incoming.baggage = {names.baggage_key: alone}
                incoming.transaction_id = alone
            else:
                incoming.baggage = _parse_baggage(incoming, text, settings)
                if tx is None:
                    _take_mirror(incoming, names.baggage_key)
    sent_raw = get(names.sent, _MISSING)
    if sent_raw is not _MISSING:
        _take_sent(incoming, sent_raw)


def _trace_state(incoming: Incoming, raw: object, settings: Settings) -> TraceState:
    """The trace state from the tracestate header's raw value; the empty one if none is valid."""
    text = _text(incoming, semconv.TRACESTATE, raw, settings.max_tracestate_bytes, True)
    return (_parse_tracestate(incoming, text) if text else None) or _DEFAULT_STATE


def _take_transaction(incoming: Incoming, raw: object) -> None:
    """Set the transaction ID from its header's raw value, or reject it."""
    if type(raw) is str and (
        # Generated IDs are alphanumeric: two C-level checks instead of the regex.
        (raw.isalnum() and raw.isascii() and len(raw) <= _MAX_TRANSACTION)
        or _TRANSACTION_ID(raw)
    ):
        incoming.transaction_id = raw
        return
    tx = _text(incoming, "transaction_id", raw, _MAX_TRANSACTION, False)
    if tx is not None:
        if _TRANSACTION_ID(tx):
            incoming.transaction_id = tx
        else:
            _reject(incoming, "transaction_id", "format", tx)


def _take_mirror(incoming: Incoming, key: str) -> None:
    """Set the transaction ID from the baggage entry ``key``, if there is a valid one."""
    mirrored = incoming.baggage.get(key) if incoming.baggage else None
    if mirrored is not None:
        if _TRANSACTION_ID(mirrored):
            incoming.transaction_id = mirrored
        else:
            _reject(incoming, "transaction_id", "format", mirrored)


def _take_sent(incoming: Incoming, raw: object) -> None:
    """Set the send time from its header's raw value, or reject it."""
    sent = raw if type(raw) is str and len(raw) <= _MAX_SENT else _text(
        incoming, "sent_time", raw, _MAX_SENT, False
    )
    if sent is not None:
        if sent.isdigit() and sent.isascii():
            incoming.sent_ns = int(sent)
        else:
            _reject(incoming, "sent_time", "format", sent)


_GETTER: Final = HeadersGetter()


def _take_baggage_entry(incoming: Incoming, carrier: object, key: str) -> None:
    """Set the transaction ID from the entry ``key`` of the carrier's ``baggage`` header."""
    raw = read_headers(carrier, (semconv.BAGGAGE,)).get(semconv.BAGGAGE, _MISSING)
    if raw is _MISSING:
        return
    text = _text(incoming, semconv.BAGGAGE, raw, get_settings().max_baggage_bytes, True)
    mirrored = baggage_entry(text, key) if text is not None else None
    if mirrored is not None:
        if _TRANSACTION_ID(mirrored):
            incoming.transaction_id = mirrored
        else:
            _reject(incoming, "transaction_id", "format", mirrored)


def _read_through(textmap: TextMapPropagator, carrier: object, settings: Settings) -> Incoming:
    """Read ``carrier`` through the configured propagators, then hoptrace's own headers."""
    incoming = Incoming()
    try:
        ctx = textmap.extract(carrier, Context(), getter=_GETTER)
        span = ctx.get(SPAN_KEY)
        if span is not None:
            sc = span.get_span_context()  # type: ignore[attr-defined]
            if sc.is_valid:
                incoming.span_context = sc
        entries = ctx.get(BAGGAGE_KEY)
        if entries:
            allow = settings.baggage_allowlist
            incoming.baggage = {
                k: v for k, v in entries.items()  # type: ignore[attr-defined]
                if allow is None or k in allow or k == settings.baggage_key
            }
        names = _names
        raw = read_headers(carrier, (names.transaction, names.sent))
        tx_raw = raw.get(names.transaction, _MISSING)
        if tx_raw is not _MISSING:
            _take_transaction(incoming, tx_raw)
        if incoming.transaction_id is None:
            restored = ctx.get(TRANSACTION_KEY)  # hoptrace's propagator, in the configured set
            if isinstance(restored, str):
                incoming.transaction_id = restored
            else:
                _take_mirror(incoming, names.baggage_key)
            if incoming.transaction_id is None and not incoming.baggage:
                # Propagators that read no baggage (B3 alone): the entry, where the ID travels.
                _take_baggage_entry(incoming, carrier, names.baggage_key)
        sent_raw = raw.get(names.sent, _MISSING)
        if sent_raw is not _MISSING:
            _take_sent(incoming, sent_raw)
    except Exception as exc:
        diagnostics.internal_error("extract", exc)
    return incoming


def extract(carrier: Carrier | object, context: Context | None = None) -> Context:
    """Return a Context holding the trace, baggage and transaction ID found in ``carrier``.

    Built on ``context`` (or an empty Context). Never raises: malformed values are dropped,
    counted and warned about.
    """
    settings = get_settings()
    if not settings.enabled:
        return context if context is not None else Context()
    incoming = read(carrier, settings)
    values: dict[str, object] = {} if context is None else dict(context)
    if incoming.span_context is not None:
        values[SPAN_KEY] = NonRecordingSpan(incoming.span_context)
    tx = incoming.transaction_id
    entries = incoming.baggage
    if tx is not None:
        if entries is not None and entries.get(_names.baggage_key) is tx:
            values[TRANSACTION_KEY] = tx  # the common case: the baggage holds it already
            values[BAGGAGE_KEY] = entries
        else:
            bind_transaction(values, tx, entries, settings)
    elif entries is not None:
        values[BAGGAGE_KEY] = entries
    if incoming.sent_ns is not None:
        values[SENT_NS_KEY] = incoming.sent_ns
    return Context(values)


def _encode_baggage(
    entries: Mapping[str, object], transaction_id: str | None, settings: Settings
) -> tuple[str, bool]:
    """The baggage header for ``entries`` plus the mirror of ``transaction_id`` (if not None),
    within the limits; and whether the mirror is in it (it is kept first, unless it alone is
    over ``max_baggage_bytes``)."""
    mirror = settings.baggage_key
    parts = []
    for key, value in entries.items():
        if key == mirror:
            continue
        text = value if isinstance(value, str) else str(value)
        if not _BAGGAGE_VALUE_RE.fullmatch(text):
            text = quote(text, safe="")
        parts.append(f"{key}={text}")
    if transaction_id is not None:
        parts.append(f"{mirror}={transaction_id}")
    header = ",".join(parts)
    mirrored = transaction_id is not None
    if (len(parts) > settings.max_baggage_members
            or utf8_size(header) > settings.max_baggage_bytes):
        kept: list[str] = []
        size = 0
        for part in reversed(parts):  # keep the mirror (last) first
            if len(kept) >= settings.max_baggage_members:
                break
            grown = size + utf8_size(part) + (1 if kept else 0)
            if grown > settings.max_baggage_bytes:
                if mirrored and not kept:
                    mirrored = False  # the mirror alone is over the limit: the header carries it
                continue
            size = grown
            kept.append(part)
        diagnostics.warn(
            "dropped.baggage.outgoing",
            "hoptrace: outgoing baggage over the W3C limits; dropped %d entries",
            len(parts) - len(kept),
        )
        header = ",".join(reversed(kept))
    return header, mirrored


def inject(
    carrier: Carrier = None, *, context: Context | None = None, copy: bool = False
) -> Any:
    """Write the current trace context, baggage, transaction ID and send time into ``carrier``.

    Returns the carrier: the same object for a dict or list, a new one for ``None``, a tuple
    or an immutable mapping, or for any carrier when ``copy=True``. Existing entries are
    replaced, never duplicated. Raises TypeError for a carrier type it cannot write.
    """
    settings = get_settings()
    if not settings.enabled:
        return {} if carrier is None else carrier
    kind = type(carrier)
    if (
        kind is not dict
        and kind is not list
        and carrier is not None
        and not isinstance(carrier, (Mapping, list, tuple))
    ):
        raise TypeError(
            f"unsupported carrier type {type(carrier).__name__}: use a dict of headers, "
            "a list of (key, value) pairs, or a tuple of pairs"
        )
    ctx = context if context is not None else get_current()
    try:
        if carrier and ctx.get(TRANSACTION_KEY) is None and current_transaction_id(ctx) is None:
            carried = carried_transaction_id(carrier)
            if carried is not None:  # a message passed on outside any transaction keeps its ID
                ctx = Context({**ctx, TRANSACTION_KEY: carried})
        if kind is dict and not copy:
            # Write straight into the caller's dict; on error it holds only whole values.
            return render(ctx, settings, carrier)  # type: ignore[arg-type]
        values = render(ctx, settings, None, True, holds_transaction_header(carrier))
    except Exception as exc:
        diagnostics.internal_error("inject", exc)
        return {} if carrier is None else carrier
    return write_headers(carrier, values, copy=copy)


def carried_transaction_id(carrier: object) -> str | None:
    """The valid transaction ID an outgoing carrier already holds (header, else baggage).

    A message relayed outside any transaction (by a framework, or another instrumentation
    that restored no hoptrace context) keeps the ID it carries instead of getting a new one.
    """
    try:
        names = _names
        raw = read_headers(carrier, (names.transaction, semconv.BAGGAGE))
        if not raw:
            return None
        header = as_text(raw[names.transaction], _MAX_TRANSACTION) \
            if names.transaction in raw else None
        if isinstance(header, str) and not isinstance(header, Rejected) \
                and _TRANSACTION_ID(header):
            return header
        bag = as_text(raw[semconv.BAGGAGE], 8192) if semconv.BAGGAGE in raw else None
        if isinstance(bag, str) and not isinstance(bag, Rejected):
            mirrored = baggage_entry(bag, names.baggage_key)
            if mirrored is not None and _TRANSACTION_ID(mirrored):
                return mirrored
    except Exception as exc:
        diagnostics.internal_error("carried_transaction_id", exc)
    return None


def holds_transaction_header(carrier: object) -> bool:
    """Whether ``carrier`` holds a transaction header that hoptrace would not write.

    Such a header (on a message passed on) would go out stale and win over the baggage entry
    at the consumer, so ``render(..., replace_header=True)`` writes it with the current ID.
    """
    names = _names
    if names.written is not None or not carrier:
        return False
    try:
        if type(carrier) is dict:
            return names.transaction in carrier
        return bool(read_headers(carrier, (names.transaction,)))
    except Exception as exc:
        diagnostics.internal_error("holds_transaction_header", exc)
        return False


def _header_key(values: dict[str, Any], tx: object, replace: bool) -> str | None:
    """The header to write the transaction ID ``tx`` (None: minted, 32 characters) in, or None.

    The configured ``transaction_header``; else the read header when ``values`` or the carrier
    holds one already (``replace``), or when the mirror alone would be over the baggage limit.
    """
    names = _names
    key = names.written
    if key is None and (
        replace
        or names.transaction in values
        or (32 if tx is None else len(tx) if type(tx) is str else 0) > names.mirror_room
    ):
        key = names.transaction
    return key


def render(
    ctx: Context, settings: Settings, values: dict[str, Any] | None = None,
    sent_time: bool = True, replace_header: bool = False, span: object = None,
) -> dict[str, Any]:
    """Write the header values that carry ``ctx`` into ``values`` (a new dict if None).

    ``sent_time=False`` leaves the send time out, for messages whose broker stamps it.
    ``replace_header=True`` writes the transaction header even when hoptrace writes none, for
    a carrier that holds one already (see :func:`holds_transaction_header`).
    ``span``, if not None, is written as if it were ``ctx``'s span (a send span, without a
    copy of ``ctx`` to hold it).
    """
    if values is None:
        values = {}
    if _propagate_now is None or _propagate_now._HTTP_TEXT_FORMAT is not _w3c_now:
        textmap = _through()
        if textmap is not None:
            return _render_through(textmap, ctx if span is None else Context(
                {**ctx, SPAN_KEY: span}), settings, values, sent_time, replace_header)
    tx: Any = ctx.get(TRANSACTION_KEY)
    entries: Any = ctx.get(BAGGAGE_KEY)
    origin: Any = None
    if entries:
        if tx is None:
            tx = current_transaction_id(ctx)  # restored by another instrumentation's baggage
        if len(entries) == 1 and tx is not None and entries.get(_names.baggage_key) == tx:
            entries = None  # only the transaction's own entry, which the mirror writes
        else:
            origin = _origin_only(entries, settings)
    span = ctx.get(SPAN_KEY) if span is None else span
    valid = False
    if span is not None:
        sc = span.get_span_context()  # type: ignore[attr-defined]
        # One C-level unpack instead of six property calls (layout checked at import).
        trace_id, span_id, _, flags, state, valid = sc if _TUPLE_LAYOUT else _as_tuple(sc)
    if not valid:
        if not sdk_installed():
            return _write_minted(values, tx, entries, settings, sent_time, replace_header)
        # With an SDK, no traceparent: the first hop that makes a span decides the trace.
        trace_id = span_id = state = None
        flags = 0
    tx = tx or generate_transaction_id()
    names = _names
    header = names.written
    if header is None and (replace_header or names.transaction in values or names.tight):
        header = _header_key(values, tx, replace_header)  # (the checks above: the hot path)
    if (
        _write_common is not None
        and (not entries or (origin is not None and _origin_fits(origin, tx, settings)))
        and (state is None or state is _DEFAULT_STATE or not state)
        and _write_common(
            values, trace_id, span_id, bool(flags & 1), semconv.TRACEPARENT, header,
            tx, semconv.BAGGAGE, names.mirror_prefix if settings.baggage_mirror else None,
            names.sent if sent_time else None, origin,
        )
    ):
        return values
    return _write_text(
        values, trace_id, span_id, flags & 1, state, tx, entries, settings, sent_time, header
    )


def _origin_only(entries: Any, settings: Settings) -> str | None:
    """The origin entry's value when the baggage is that entry and the mirror's, else None.

    Such a baggage is written as ``<origin key>=<value>,<mirror>`` (what ``_encode_baggage``
    gives: other entries first, the mirror last), which the C writers can do when the value is
    1 to 16 ASCII digits (they check that, and decline otherwise).
    """
    if (not settings.baggage_mirror or len(entries) > 2
            or settings.baggage_key == ORIGIN_BAGGAGE_KEY):  # (one entry, in Python)
        return None
    origin = entries.get(ORIGIN_BAGGAGE_KEY)
    if type(origin) is not str or (len(entries) == 2 and settings.baggage_key not in entries):
        return None
    return origin


def _origin_fits(origin: str, tx: object, settings: Settings) -> bool:
    """Whether the origin entry and the mirror of ``tx`` (None: a minted ID, 32 characters)
    fit the baggage limits. (Counted in characters: the C writers take only ASCII.)"""
    if tx is None:
        size = 32
    elif type(tx) is str:
        size = len(tx)
    else:
        return False  # a malformed transaction ID in the context: the Python writer
    return (
        settings.max_baggage_members > 1
        and len(origin) + size + len(_names.mirror_prefix) + _ORIGIN_ROOM
        <= settings.max_baggage_bytes
    )


def _as_tuple(sc: SpanContext) -> tuple[Any, ...]:  # pragma: no cover - another OTel layout
    return (sc.trace_id, sc.span_id, sc.is_remote, sc.trace_flags, sc.trace_state, sc.is_valid)


def _write_minted(
    values: dict[str, Any], tx: str | None, entries: Any, settings: Settings, sent_time: bool,
    replace_header: bool,
) -> dict[str, Any]:
    """Write headers for a context without a trace and without an SDK: mint the IDs, unsampled.

    One draw of random bytes gives the trace ID, the span ID and, outside a transaction, the
    transaction ID (new_transaction_id's 16 bytes).
    """
    own_tx = tx is None and settings.transaction_id_generator is new_transaction_id
    if tx is None and not own_tx:
        tx = generate_transaction_id()
    # (random.randbytes' own step, without its Python-level call on 3.11; the same bytes)
    raw = _getrandbits(320).to_bytes(40, "little") if own_tx else _getrandbits(
        192).to_bytes(24, "little")
    origin = _origin_only(entries, settings) if entries else None
    names = _names
    header = names.written
    if header is None and (replace_header or names.transaction in values or names.tight):
        header = _header_key(values, tx, replace_header)  # (the checks above: the hot path)
    if (
        _mint_common is not None
        and (not entries or (origin is not None and _origin_fits(origin, tx, settings)))
        and _mint_common(
            values, raw, semconv.TRACEPARENT, header, tx, semconv.BAGGAGE,
            names.mirror_prefix if settings.baggage_mirror else None,
            names.sent if sent_time else None, origin,
        )
    ):
        return values
    if own_tx:
        tx = raw[24:].hex()
    return _write_text(
        values, int.from_bytes(raw[:16], "big") or 1, int.from_bytes(raw[16:24], "big") or 1, 0,
        None, tx, entries, settings, sent_time, header,  # type: ignore[arg-type]
    )


def _write_text(
    values: dict[str, Any], trace_id: int | None, span_id: int | None, sampled: int,
    state: TraceState | None, tx: str, entries: Any, settings: Settings, sent_time: bool,
    header: str | None,
) -> dict[str, Any]:
    """Write the headers in Python: what the C writers defer to.

    ``header``: the transaction header to write (see :func:`_header_key`), or None when the
    baggage entry carries the ID; the header is still written if the limits drop the entry.
    """
    names = _names
    if trace_id is not None:
        flags = "01" if sampled else "00"
        values[semconv.TRACEPARENT] = f"00-{trace_id:032x}-{span_id:016x}-{flags}"
        if state is not None and state is not _DEFAULT_STATE and state:
            values[semconv.TRACESTATE] = state.to_header()
    bag: str | None = None
    if entries:
        bag, mirrored = _encode_baggage(
            entries, tx if settings.baggage_mirror else None, settings
        )
        if not mirrored and header is None:
            header = names.transaction  # the limits dropped the entry: never lose the ID
    elif settings.baggage_mirror:
        bag = names.mirror_prefix + tx
    if header is not None:
        values[header] = tx
    if bag is not None:
        values[semconv.BAGGAGE] = bag
    if sent_time:
        values[names.sent] = str(time_ns())
    return values


def _render_through(
    textmap: TextMapPropagator, ctx: Context, settings: Settings, values: dict[str, Any],
    sent_time: bool, replace_header: bool,
) -> dict[str, Any]:
    """Write ``ctx`` through the configured propagators, then hoptrace's own headers.

    The transaction header goes out when configured, and also when the propagators wrote no
    baggage carrying the ID (B3 or Jaeger alone, say), so the ID is never lost.
    """
    tx = current_transaction_id(ctx) or generate_transaction_id()
    span = ctx.get(SPAN_KEY)
    outgoing: dict[str, object] = dict(ctx)
    if (span is None or not span.get_span_context().is_valid) and not sdk_installed():  # type: ignore[attr-defined]
        outgoing[SPAN_KEY] = NonRecordingSpan(mint_span_context())
    bind_transaction(outgoing, tx, ctx.get(BAGGAGE_KEY), settings)
    names = _names
    header = _header_key(values, tx, replace_header)
    textmap.inject(values, context=Context(outgoing), setter=default_setter)
    if header is None:
        bag = values.get(semconv.BAGGAGE)
        if not isinstance(bag, str) or baggage_entry(bag, names.baggage_key) != tx:
            header = names.transaction
    if header is not None:
        values[header] = tx
    if sent_time:
        values[_names.sent] = str(time_ns())
    return values
