"""The transaction ID as an OpenTelemetry propagator, and the propagators hoptrace writes through.

:class:`TransactionIdPropagator` is registered under the ``opentelemetry_propagator`` entry
point as ``hoptrace``, so ``OTEL_PROPAGATORS=tracecontext,baggage,hoptrace`` makes every OTel
instrumentation (contrib's messaging and HTTP clients included) carry the transaction ID and
restore it as a value in the OTel Context. It makes sure the W3C baggage carries the
``transaction.id`` entry, and writes the transaction header only when ``transaction_header``
is set or the baggage cannot carry the ID; it reads either (the header first).

:func:`configured_textmap` tells hoptrace's own ``inject`` / ``extract`` which propagators
are in force: ``None`` for the W3C set (``tracecontext`` and ``baggage``, with or without
``hoptrace``), which hoptrace reads and writes itself; otherwise the global propagator
(B3, Jaeger, X-Ray, a custom one), which hoptrace then goes through.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, unquote

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from . import diagnostics, semconv
from .context import BAGGAGE_KEY, TRANSACTION_KEY, current_transaction_id, get_current
from .settings import TRANSACTION_ID_PATTERN, get_settings

_valid_id = TRANSACTION_ID_PATTERN.fullmatch
_MAX_BAGGAGE = 8192


def _first_text(values: object) -> str | None:
    """The first value a Getter returned, as text, or None."""
    if not values:
        return None
    first = values[0] if isinstance(values, (list, tuple)) else values
    if isinstance(first, (bytes, bytearray)):
        try:
            first = bytes(first).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return first if isinstance(first, str) else None


def baggage_entry(header: str, key: str) -> str | None:
    """Return the value of ``key`` in a W3C ``baggage`` header, percent-decoded, or None."""
    if len(header) > _MAX_BAGGAGE:
        return None
    for member in header.split(","):
        name, sep, value = member.split(";", 1)[0].partition("=")
        if sep and name.strip(" \t") == key:
            value = value.strip(" \t")
            return unquote(value) if "%" in value else value
    return None


def _valid_or_none(tx: str | None) -> str | None:
    """``tx`` if it is a valid transaction ID; None (an invalid one is warned about)."""
    if tx is None or _valid_id(tx):
        return tx
    diagnostics.warn(
        "rejected.transaction_id.format",
        "hoptrace: ignored incoming %s (format): %r",
        "transaction_id",
        tx[:80],
    )
    return None


class TransactionIdPropagator(TextMapPropagator):
    """Carries hoptrace's transaction ID through OpenTelemetry's propagation API.

    ``extract`` reads the transaction header (``x-transaction-id``), else the baggage entry
    (``transaction.id``), and puts the ID in the Context where ``current_transaction_id()``
    and the log fields find it. ``inject`` writes the ID to the ``baggage`` header: beside
    the other entries when the W3C baggage propagator is configured too (so the order in
    ``OTEL_PROPAGATORS`` does not matter), alone otherwise. It writes the transaction header
    too when ``transaction_header`` is set, when ``baggage_mirror`` is off, or when the W3C
    baggage propagator could overwrite the entry (the Context's baggage lacks it).
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """Return ``context`` with the carrier's transaction ID, if it holds a valid one."""
        ctx = context if context is not None else Context()
        try:
            settings = get_settings()
            if not settings.enabled or not settings.trust_incoming:
                return ctx
            tx = _valid_or_none(
                _first_text(getter.get(carrier, settings.read_transaction_header))
            )
            if tx is None:  # no header, or an invalid one: the baggage entry, if valid
                bag = ctx.get(BAGGAGE_KEY)
                mirrored = bag.get(settings.baggage_key) if isinstance(bag, Mapping) else None
                if not isinstance(mirrored, str):
                    header = _first_text(getter.get(carrier, semconv.BAGGAGE))
                    mirrored = baggage_entry(header, settings.baggage_key) if header else None
                tx = _valid_or_none(mirrored)
            if tx is None:
                return ctx
            return Context({**ctx, TRANSACTION_KEY: tx})
        except Exception as exc:
            diagnostics.internal_error("propagator.extract", exc)
            return ctx

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Write the Context's transaction ID into ``carrier``; nothing outside a transaction."""
        try:
            settings = get_settings()
            if not settings.enabled:
                return
            ctx = context if context is not None else get_current()
            tx = current_transaction_id(ctx)
            if tx is None:
                return
            header = settings.written_transaction_header
            entries = ctx.get(BAGGAGE_KEY)
            if not isinstance(entries, Mapping):
                entries = {}
            carried = baggage_propagated()
            if header is None and carried and entries.get(settings.baggage_key) != tx:
                # The W3C baggage propagator may write after us, from a baggage without the
                # entry: the header carries the ID then.
                header = settings.read_transaction_header
            if header is not None:
                setter.set(carrier, header, tx)
            if not settings.baggage_mirror:
                return
            # With the W3C baggage propagator configured, every entry goes out, so whichever
            # of the two writes the header last, none is lost; without it, only ours.
            parts = [
                f"{key}={quote(str(value), safe='')}"
                for key, value in (entries.items() if carried else ())
                if key != settings.baggage_key
            ]
            parts.append(f"{settings.baggage_key}={tx}")
            setter.set(carrier, semconv.BAGGAGE, ",".join(parts))
        except Exception as exc:
            diagnostics.internal_error("propagator.inject", exc)

    @property
    def fields(self) -> set[str]:
        """The header names this propagator writes."""
        return {get_settings().read_transaction_header, semconv.BAGGAGE}


# ------------------------------------------------------------- the configured propagators ---

_W3C_TYPES: Final = (
    "opentelemetry.trace.propagation.tracecontext.TraceContextTextMapPropagator",
    "opentelemetry.baggage.propagation.W3CBaggagePropagator",
)
_OURS: Final = f"{TransactionIdPropagator.__module__}.{TransactionIdPropagator.__qualname__}"

# [global textmap last seen, its classification]: None (the W3C set) or the propagator.
_seen: list[Any] = [object(), None]
_propagate: Any = None


def _members(textmap: object) -> list[object] | None:
    """The propagators a composite holds (itself when it is not one), or None if unknown."""
    if type(textmap).__name__ != "CompositePropagator":
        return [textmap]
    members = getattr(textmap, "_propagators", None)
    return list(members) if isinstance(members, (list, tuple)) else None


def is_w3c_set(textmap: object) -> bool:
    """Whether ``textmap`` is exactly W3C trace context plus baggage (and, optionally, ours)."""
    members = _members(textmap)
    if members is None:
        return False
    names = {f"{type(m).__module__}.{type(m).__qualname__}" for m in members}
    names.discard(_OURS)
    return names == set(_W3C_TYPES)


_BAGGAGE_TYPE: Final = _W3C_TYPES[1]
_baggage_seen: list[Any] = [object(), False]


def baggage_propagated() -> bool:
    """Whether the global propagators include the W3C baggage propagator."""
    module = propagate_module()
    if not module:
        return True
    textmap = module.get_global_textmap()
    seen = _baggage_seen
    if textmap is not seen[0]:
        members = _members(textmap) or []
        seen[1] = any(
            f"{type(m).__module__}.{type(m).__qualname__}" == _BAGGAGE_TYPE for m in members
        )
        seen[0] = textmap
    return bool(seen[1])


def _load_propagate() -> Any:
    global _propagate
    if _propagate is None:
        try:
            _propagate = importlib.import_module("opentelemetry.propagate")
        except Exception as exc:  # OTEL_PROPAGATORS names a propagator that is not installed
            diagnostics.warn(
                "propagators.load",
                "hoptrace: could not load the propagators OTEL_PROPAGATORS names (%s); "
                "using W3C trace context and baggage",
                exc,
            )
            _propagate = sys.modules.get("opentelemetry.propagate", False)
    return _propagate


def propagate_module() -> Any:
    """The ``opentelemetry.propagate`` module, imported on first use; False if it failed."""
    return _propagate if _propagate is not None else _load_propagate()


def configured_textmap() -> TextMapPropagator | None:
    """Return the global propagator when hoptrace must go through it; None for the W3C set."""
    propagate = _propagate if _propagate is not None else _load_propagate()
    if not propagate:
        return None
    try:
        textmap = propagate._HTTP_TEXT_FORMAT
    except AttributeError:  # pragma: no cover - another OTel API layout
        textmap = propagate.get_global_textmap()
    seen = _seen
    if textmap is not seen[0]:
        seen[1] = None if is_w3c_set(textmap) else textmap
        seen[0] = textmap
    return seen[1]  # type: ignore[no-any-return]


__all__ = [
    "TransactionIdPropagator",
    "baggage_entry",
    "baggage_propagated",
    "configured_textmap",
    "is_w3c_set",
    "propagate_module",
]
