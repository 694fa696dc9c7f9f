"""ASGI edge: continue or start a transaction for every HTTP request.

::

    from hoptrace.asgi import TransactionMiddleware
    app = TransactionMiddleware(app)          # or app.add_middleware(TransactionMiddleware)

Each request continues a valid incoming ``traceparent`` and ``X-Transaction-ID`` (validated as
for a message) or starts a new transaction; the response carries the transaction ID in the
transaction header. Under OpenTelemetry's own ASGI middleware, its server span is reused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._config import get_settings
from ._edge import EdgeMiddleware, header_carrier, server_scope
from .core import diagnostics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _route_of(scope: Scope) -> str | None:
    """Return the matched route template, or None when the app does not say.

    FastAPI and Starlette >= 1.7 set ``scope["route"]``. Older Starlette leaves only the matched
    ``scope["endpoint"]`` (its router updates the request's scope in place): the template is
    then that of the one route in ``scope["app"].routes`` (searched through mounts) with this
    endpoint. An endpoint served by several routes names none.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    routes = getattr(scope.get("app"), "routes", None)
    if endpoint is None or not routes:
        return None
    found = _paths_of(endpoint, routes, 0)
    return found[0] if len(found) == 1 else None


def _paths_of(endpoint: object, routes: Any, depth: int) -> list[str]:
    """The paths of the routes in ``routes`` (and in mounted apps' routes) serving ``endpoint``."""
    found: list[str] = []
    if depth > 8 or not isinstance(routes, list):
        return found
    for route in routes:
        path = getattr(route, "path", None)
        if getattr(route, "endpoint", None) is endpoint and isinstance(path, str):
            found.append(path)
        else:
            found += _paths_of(endpoint, getattr(route, "routes", None), depth + 1)
    return found


class TransactionMiddleware(EdgeMiddleware[ASGIApp]):
    """ASGI middleware: one transaction (and server span) per HTTP request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its transaction; add the ID to the response headers."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        edge: server_scope | None = None
        header = b""
        try:
            edge = server_scope(
                header_carrier(scope.get("headers") or (), settings),
                str(scope.get("method") or "GET"),
                str(scope.get("path") or "/"),
                str(scope.get("scheme") or "http"),
                self.trust_incoming,
            ).open()
            header = settings.read_transaction_header.lower().encode("latin-1")
        except Exception as exc:
            diagnostics.internal_error("asgi.open", exc)

        async def send_with_transaction(message: Message) -> None:
            if edge is not None and message.get("type") == "http.response.start":
                try:
                    tx = edge.transaction_id
                    if tx is not None:
                        kept = [
                            pair
                            for pair in message.get("headers") or ()
                            if bytes(pair[0]).lower() != header
                        ]
                        kept.append((header, tx.encode("ascii")))
                        message["headers"] = kept
                    edge.set_status_code(int(message.get("status", 200)))
                except Exception as exc:
                    diagnostics.internal_error("asgi.send", exc)
            await send(message)

        if edge is None:
            await self.app(scope, receive, send)
            return
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_transaction)
        except BaseException as exc:
            error = exc
            raise
        finally:
            edge.set_route(_route_of(scope))
            edge.close(error)
