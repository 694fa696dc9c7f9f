"""Fast reads of OpenTelemetry's internals, each with a fallback to the public API.

The current Context, the keys under which the OTel API stores the span and the baggage, the
global tracer provider and hoptrace's tracer from it. Each read here saves a Python call or
an ``os.environ`` lookup on every hop; each is checked once at import (or falls back to the
public call) so a future OTel version that changes its internals only loses the speed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Final

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, ProxyTracerProvider

from . import __version__, diagnostics, semconv


def _runtime_context_var() -> ContextVar[Context] | None:
    # OTel's default runtime context keeps the current Context in one ContextVar. Reading it
    # directly saves two Python calls per lookup on every hop; any other runtime context
    # (chosen with OTEL_PYTHON_CONTEXT) goes through the public API.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar):
        return var
    return None


_CONTEXT_VAR = _runtime_context_var()
#: Return the current OTel Context (the fast equivalent of ``opentelemetry.context.get_current``).
get_current: Callable[[], Context] = (
    _CONTEXT_VAR.get if _CONTEXT_VAR is not None else otel_context.get_current
)


#: Make a Context current; return the token that :func:`detach` and :func:`restore` take.
#: (The ContextVar's own ``set``, a C call, under OTel's default runtime context.)
attach: Callable[[Context], object] = (
    _CONTEXT_VAR.set if _CONTEXT_VAR is not None else otel_context.attach
)


def detach(token: object) -> None:
    """Restore the Context that was current before :func:`attach` returned ``token``."""
    try:
        if _CONTEXT_VAR is not None:
            _CONTEXT_VAR.reset(token)  # type: ignore[arg-type]
        else:
            otel_context.detach(token)  # type: ignore[arg-type]
    except Exception as exc:
        diagnostics.internal_error("detach", exc)


def restore(token: object) -> bool:
    """Make current again the Context found when :func:`attach` returned ``token``.

    Whatever was attached since and never detached (a handler's leaked context) goes with
    it. Returns False, restoring nothing, when ``token`` belongs to another thread or task
    or was used already.
    """
    if _CONTEXT_VAR is not None:
        try:
            _CONTEXT_VAR.reset(token)  # type: ignore[arg-type]
            return True
        except (ValueError, RuntimeError):
            return False
    detach(token)
    return True


def _discover_key(ctx: Context) -> str:
    (key,) = ctx.keys()
    return key


# The OTel API keeps the keys under which it stores the current span and the baggage private.
# Learn them once from the public setters so a context can be built with one dict copy.
SPAN_KEY: Final = _discover_key(trace.set_span_in_context(INVALID_SPAN, Context()))
BAGGAGE_KEY: Final = _discover_key(otel_baggage.set_baggage("k", "v", Context()))

_provider_seen: list[object] = [None, False]  # [provider, is it a real SDK]


def _global_provider() -> object:
    # trace.get_tracer_provider() reads os.environ on every call while none is set (~1 µs).
    # The module global it reads is stable across OTel 1.x; fall back to the public call.
    try:
        return trace._TRACER_PROVIDER
    except AttributeError:  # pragma: no cover - a future OTel API without it
        provider = trace.get_tracer_provider()
        return None if isinstance(provider, ProxyTracerProvider) else provider


#: Whether the OTel API keeps the global provider in ``trace._TRACER_PROVIDER`` (read directly).
PROVIDER_GLOBAL: Final = hasattr(trace, "_TRACER_PROVIDER")


def sdk_installed() -> bool:
    """Return whether a real tracer provider (an OTel SDK) is installed globally."""
    # (Asked once per scope: the global read and the answer for the last provider, inline.)
    provider = trace._TRACER_PROVIDER if PROVIDER_GLOBAL else _global_provider()
    seen = _provider_seen
    if provider is seen[0]:
        return seen[1]  # type: ignore[return-value]
    if provider is None:
        return False
    seen[1] = not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))
    seen[0] = provider
    return bool(seen[1])


_tracer_cache: list[object] = [None, None]  # [provider, tracer]


def tracer() -> trace.Tracer:
    """Return hoptrace's tracer from the global tracer provider (cached per provider)."""
    provider = _global_provider()
    cache = _tracer_cache
    if provider is None or provider is not cache[0]:
        cache[1] = trace.get_tracer("hoptrace", __version__, schema_url=semconv.SCHEMA_URL)
        cache[0] = provider
    return cache[1]  # type: ignore[return-value]


__all__: Final = [
    "BAGGAGE_KEY",
    "SPAN_KEY",
    "attach",
    "detach",
    "get_current",
    "restore",
    "sdk_installed",
    "tracer",
]
