"""WSGI edge: continue or start a transaction for every HTTP request.

::

    from hoptrace.wsgi import TransactionMiddleware
    app.wsgi_app = TransactionMiddleware(app.wsgi_app)     # Flask

Each request continues a valid incoming ``traceparent`` and ``X-Transaction-ID`` (validated as
for a message) or starts a new transaction; the response carries the transaction ID in the
transaction header. Under OpenTelemetry's own WSGI middleware, its server span is reused. The
span ends when the response body has been sent (iterated to the end, or closed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, cast

from opentelemetry import context as otel_context

from ._edge import EdgeMiddleware, header_carrier, propagation_header_names, server_scope
from .core import diagnostics
from .core.settings import get_settings

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


def _route_of(environ: Environ) -> str | None:
    """Return the matched route rule when the app is Flask / Werkzeug, else None."""
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) else None


class _Body:
    """The app's response iterable, run in the request's context; ends the span on close."""

    def __init__(self, body: Iterable[bytes], edge: server_scope) -> None:
        self._body = body
        self._iterator: Iterator[bytes] | None = None
        self._edge = edge
        self._context = otel_context.get_current()
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = otel_context.attach(self._context)
        try:
            if self._iterator is None:
                self._iterator = iter(self._body)
            return next(self._iterator)
        except StopIteration:
            self._finish(None)  # the whole body is out; close() may come later or never
            raise
        except BaseException as exc:
            self._finish(exc)
            raise
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        """Close the app's iterable, then end the request's span."""
        error: BaseException | None = None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._edge.close(error)


class TransactionMiddleware(EdgeMiddleware[WSGIApp]):
    """WSGI middleware: one transaction (and server span) per HTTP request."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Run the request inside its transaction; add the ID to the response headers."""
        settings = get_settings()
        edge: server_scope | None = None
        header = ""
        try:
            pairs = []
            for name in propagation_header_names(settings):
                value = environ.get("HTTP_" + name.upper().replace("-", "_"))
                if value is not None:
                    pairs.append((name, value))
            edge = server_scope(
                header_carrier(pairs, settings),
                str(environ.get("REQUEST_METHOD") or "GET"),
                str(environ.get("PATH_INFO") or "/"),
                str(environ.get("wsgi.url_scheme") or "http"),
                self.trust_incoming,
            )
            header = settings.read_transaction_header
        except Exception as exc:
            diagnostics.internal_error("wsgi.open", exc)
        if edge is None:
            return self.app(environ, start_response)

        def start_with_transaction(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                tx = edge.transaction_id
                if tx is not None:
                    lowered = header.lower()
                    headers = [(k, v) for k, v in headers if k.lower() != lowered]
                    headers.append((header, tx))
                edge.set_status_code(int(status.split(" ", 1)[0]))
                # Flask drops its request from the environ once the view returns: read it now.
                edge.set_route(_route_of(environ))
            except Exception as exc:
                diagnostics.internal_error("wsgi.start_response", exc)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        edge.open()
        try:
            body = self.app(environ, start_with_transaction)
            return cast(Iterable[bytes], _Body(body, edge))
        except BaseException as exc:
            edge.close(exc)
            raise
        finally:
            # _Body re-attaches the request's context while the server iterates the body.
            edge.release_context()
