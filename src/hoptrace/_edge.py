"""The HTTP edge of a transaction: a SERVER span (or the one already active) plus the ID.

Shared by :mod:`hoptrace.asgi` and :mod:`hoptrace.wsgi`; knows no web framework. An incoming
``traceparent`` / ``tracestate`` / ``baggage`` / transaction header is validated by the core's
reader, exactly as for a message. When a span is already active (OpenTelemetry's own ASGI or
WSGI instrumentation made the server span), that span is reused: no second span is started,
the transaction ID is attached to the context and set on the span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ._config import Settings, get_settings
from .core import diagnostics, semconv
from .core.context import (
    BAGGAGE_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    bind_transaction,
    current_transaction_id,
    end_span,
    generate_transaction_id,
    mint_span_context,
    restore,
    sdk_installed,
)
from .core.hop import incoming_parent, start_child_span
from .core.propagation import read
from .core.propagator import configured_textmap


def propagation_header_names(settings: Settings) -> dict[str, str]:
    """Map each lowercased header hoptrace reads at an HTTP edge to its configured spelling."""
    names = [
        semconv.TRACEPARENT,
        semconv.TRACESTATE,
        semconv.BAGGAGE,
        settings.transaction_header,
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


class server_scope:
    """The context of one HTTP request, attached from ``open()`` until ``close()``.

    Starts a ``{method}`` SERVER span (renamed ``{method} {route}`` once the route is known),
    a child of a valid incoming ``traceparent``; or reuses a span already active.
    """

    __slots__ = (
        "_method",
        "_path",
        "_scheme",
        "_status",
        "_token",
        "_trust",
        "carrier",
        "reused",
        "span",
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
        self.carrier = carrier
        self._trust = trust_incoming
        self._method = method
        self._path = path
        self._scheme = scheme
        self._status: int | None = None
        self._token: object | None = None
        self.span: Span | None = None
        self.reused = False
        self.transaction_id: str | None = None

    def open(self) -> server_scope:
        """Read the request's context, start or reuse the server span, and attach both."""
        settings = get_settings()
        if not settings.enabled:
            return self
        try:
            self._open(settings)
        except Exception as exc:
            diagnostics.internal_error("server_scope.open", exc)
        return self

    def _open(self, settings: Settings) -> None:
        incoming = read(self.carrier, settings)
        ambient = otel_context.get_current()
        trusted = settings.trust_incoming if self._trust is None else self._trust
        upstream: str | None = None
        if trusted:
            tx = (
                incoming.transaction_id
                or current_transaction_id(ambient)
                or generate_transaction_id()
            )
        else:
            # Never the caller's ID, nor one an outer instrumentation restored from its
            # baggage; only one that hoptrace set in this process.
            upstream = incoming.transaction_id
            own = ambient.get(TRANSACTION_KEY)
            tx = own if isinstance(own, str) else generate_transaction_id()
        self.transaction_id = tx
        values: dict[str, object] = {**ambient}
        active = cast("Span | None", ambient.get(SPAN_KEY))
        if active is not None and active.get_span_context().is_valid:
            # An outer instrumentation already made the server span: reuse it.
            self.reused = True
            self.span = active
            if active.is_recording():
                active.set_attribute(semconv.TRANSACTION_ID, tx)
                if upstream is not None:
                    active.set_attribute(semconv.TRANSACTION_UPSTREAM_ID, upstream)
            baggage = ambient.get(BAGGAGE_KEY)
            if incoming.baggage is not None and trusted and not baggage:
                baggage = incoming.baggage
            bind_transaction(values, tx, baggage, settings)
            self._token = otel_context.attach(Context(values))
            return

        links: list[Link] = []
        parent, keep = incoming_parent(incoming.span_context, settings, None, links,
                                       link_mode=False, trust=trusted)
        baggage = incoming.baggage if keep else None
        span: Span | None = None
        if not settings.propagation_only and sdk_installed():
            attrs: dict[str, AttributeValue] = {
                semconv.HTTP_REQUEST_METHOD: self._method,
                semconv.URL_PATH: self._path,
                semconv.URL_SCHEME: self._scheme,
                semconv.TRANSACTION_ID: tx,
            }
            if incoming.rejected:
                attrs[semconv.CONTEXT_REJECTED] = list(incoming.rejected)
            if upstream is not None:
                attrs[semconv.TRANSACTION_UPSTREAM_ID] = upstream
            span = self.span = start_child_span(
                self._method, parent, SpanKind.SERVER, attrs, links, None, "server_scope.span",
                baggage if baggage is not None else ambient.get(BAGGAGE_KEY),
            )
        if span is None:
            span = parent if parent is not None else NonRecordingSpan(mint_span_context())
        values[SPAN_KEY] = span
        bind_transaction(
            values, tx, baggage if baggage is not None else ambient.get(BAGGAGE_KEY), settings
        )
        self._token = otel_context.attach(Context(values))

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
        token, self._token = self._token, None
        span, self.span = self.span, None
        if span is not None and not self.reused and span.is_recording():
            if exc is None and self._status is not None and self._status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            end_span(span, exc, "server_scope.close")
        if token is not None and not restore(token):
            diagnostics.count("scope.closed_elsewhere")

    def detach(self) -> None:
        """Detach the request's context now and leave the span open for a later ``close()``."""
        token, self._token = self._token, None
        if token is not None and not restore(token):
            diagnostics.count("scope.closed_elsewhere")
