"""The HTTP edge of a transaction: a SERVER span (or the one already active) plus the ID.

Shared by :mod:`hoptrace.asgi` and :mod:`hoptrace.wsgi`; knows no web framework. An incoming
``traceparent`` / ``tracestate`` / ``baggage`` / transaction header is validated by the core's
reader, exactly as for a message. When a span is already active (OpenTelemetry's own ASGI or
WSGI instrumentation made the server span), that span is reused: no second span is started,
the transaction ID is attached to the context and set on the span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .core import diagnostics, metrics, semconv
from .core.context import (
    BAGGAGE_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    bind_transaction,
    current_transaction_id,
    get_current,
    mint_span_context,
    sdk_installed,
    span_in,
)
from .core.hop import (
    _Scope,
    incoming_attributes,
    incoming_parent,
    incoming_transaction,
    start_child_span,
)
from .core.propagation import Incoming, read
from .core.propagator import configured_textmap
from .core.settings import Settings


def propagation_header_names(settings: Settings) -> dict[str, str]:
    """Map each lowercased header hoptrace reads at an HTTP edge to its configured spelling."""
    names = [
        semconv.TRACEPARENT,
        semconv.TRACESTATE,
        semconv.BAGGAGE,
        settings.read_transaction_header,
    ]
    textmap = configured_textmap()
    if textmap is not None:  # B3, Jaeger, …: the headers that propagator reads too
        try:
            names.extend(field for field in textmap.fields if isinstance(field, str))
        except Exception as exc:
            diagnostics.internal_error("edge.propagator_fields", exc)
    return {name.lower(): name for name in names}


def header_carrier(
    pairs: Iterable[tuple[str | bytes, str | bytes]], settings: Settings
) -> list[tuple[str, str | bytes]]:
    """Return the propagation headers among ``pairs`` as a carrier the core reader accepts.

    HTTP header names are case-insensitive; the core matches the configured spelling.
    """
    wanted = propagation_header_names(settings)
    carrier: list[tuple[str, str | bytes]] = []
    for key, value in pairs:
        text = key.decode("latin-1") if isinstance(key, bytes) else key
        name = wanted.get(text.lower())
        if name is not None:
            carrier.append((name, value))
    return carrier


class server_scope(_Scope):
    """The context of one HTTP request, attached from ``open()`` until ``close()``.

    Starts a ``{method}`` SERVER span (renamed ``{method} {route}`` once the route is known),
    a child of a valid incoming ``traceparent``; or reuses a span already active. The
    transaction ID, the parent-or-link choice and the span's attributes for rejected or
    untrusted context are the consume scope's (:mod:`hoptrace.core.hop`), as is the
    attach/close plumbing; a ``close()`` always restores the context the request found.
    """

    __slots__ = (
        "_method",
        "_path",
        "_scheme",
        "_status",
        "_trust",
        "carrier",
        "reused",
        "transaction_id",
    )

    def __init__(
        self,
        carrier: list[tuple[str, str | bytes]],
        method: str,
        path: str,
        scheme: str,
        trust_incoming: bool | None = None,
    ) -> None:
        super().__init__()
        self.carrier = carrier
        self._trust = trust_incoming
        self._method = method
        self._path = path
        self._scheme = scheme
        self._status: int | None = None
        self.reused = False
        self.transaction_id: str | None = None

    def _open(self, settings: Settings) -> None:
        """Read the request's context, start or reuse the server span, and attach both."""
        incoming = read(self.carrier, settings)
        ambient = get_current()
        trusted = settings.trust_incoming if self._trust is None else self._trust
        # Untrusted: never the caller's ID, nor one an outer instrumentation restored from
        # its baggage; only one that hoptrace set in this process.
        inherited = current_transaction_id(ambient) if trusted else ambient.get(TRANSACTION_KEY)
        tx, upstream = incoming_transaction(
            incoming, trusted, inherited if isinstance(inherited, str) else None
        )
        self.transaction_id = tx
        active = span_in(ambient)
        if active is not None and active.get_span_context().is_valid:
            self._reuse(active, ambient, incoming, trusted, tx, upstream, settings)
            return
        links: list[Link] = []
        parent, keep = incoming_parent(incoming.span_context, settings, None, links,
                                       link_mode=False, trust=trusted)
        baggage = incoming.baggage if keep and incoming.baggage is not None \
            else ambient.get(BAGGAGE_KEY)
        span: Span | None = None
        if not settings.propagation_only and sdk_installed():
            attrs: dict[str, AttributeValue] = {
                semconv.HTTP_REQUEST_METHOD: self._method,
                semconv.URL_PATH: self._path,
                semconv.URL_SCHEME: self._scheme,
                semconv.TRANSACTION_ID: tx,
            }
            span = self.span = start_child_span(
                self._method, parent, SpanKind.SERVER,
                incoming_attributes(attrs, incoming, upstream), links, None, "server_scope.span",
                baggage,
            )
        if span is None:
            span = parent if parent is not None else NonRecordingSpan(mint_span_context())
        values: dict[str, object] = {**ambient, SPAN_KEY: span}
        # pathway origin, when metrics on
        bind_transaction(values, tx, metrics.stamp_baggage(baggage), settings)
        self._attach(Context(values))

    def _reuse(
        self, active: Span, ambient: Context, incoming: Incoming, trusted: bool, tx: str,
        upstream: str | None, settings: Settings,
    ) -> None:
        """An outer instrumentation already made the server span: add the transaction to it."""
        self.reused = True
        self.span = active
        if active.is_recording():
            active.set_attribute(semconv.TRANSACTION_ID, tx)
            if upstream is not None:
                active.set_attribute(semconv.TRANSACTION_UPSTREAM_ID, upstream)
        baggage = ambient.get(BAGGAGE_KEY)
        if incoming.baggage is not None and trusted and not baggage:
            baggage = incoming.baggage
        baggage = metrics.stamp_baggage(baggage)  # pathway origin, when metrics on
        values: dict[str, object] = {**ambient}
        bind_transaction(values, tx, baggage, settings)
        self._attach(Context(values))

    def set_route(self, route: str | None) -> None:
        """Name the span ``{method} {route}`` (a route template such as ``/items/{id}``)."""
        span = self.span
        if route and span is not None and not self.reused and span.is_recording():
            try:
                span.update_name(f"{self._method} {route}")
                span.set_attribute(semconv.HTTP_ROUTE, route)
            except Exception as exc:
                diagnostics.internal_error("server_scope.set_route", exc)

    def set_status_code(self, status: int) -> None:
        """Record the response status code; 5xx marks the span as an error."""
        self._status = status
        span = self.span
        if span is not None and not self.reused and span.is_recording():
            span.set_attribute(semconv.HTTP_RESPONSE_STATUS_CODE, status)

    def close(self, exc: BaseException | None = None) -> None:
        """End the span this scope started (recording ``exc``) and detach the context."""
        span = self.span
        if self.reused:
            self.span = None  # the outer instrumentation's span: it ends it
        elif (span is not None and exc is None and self._status is not None
              and self._status >= 500 and span.is_recording()):
            span.set_status(Status(StatusCode.ERROR))
        self._close(exc, True)

    def release_context(self) -> None:
        """Detach the request's context now and leave the span open for a later ``close()``."""
        self._release(True)


_App = TypeVar("_App")


class EdgeMiddleware(Generic[_App]):
    """What the ASGI and WSGI middlewares share: the app and whom they trust."""

    def __init__(self, app: _App, *, trust_incoming: bool | None = None) -> None:
        """Wrap ``app``. ``trust_incoming=False`` treats callers as untrusted (see Security).

        ``None`` follows the ``trust_incoming`` setting. An untrusted request never continues
        the caller's trace, baggage or transaction ID: it gets a new transaction, with the
        caller's ID kept as ``hoptrace.transaction.upstream_id`` on the server span.
        """
        self.app = app
        self.trust_incoming = trust_incoming
