"""Instrumentors for ``opentelemetry-instrument``, and taking over from contrib's for a client.

Each integration module defines a :class:`ClientInstrumentor` subclass, registered under the
``opentelemetry_instrumentor`` entry point, so ``opentelemetry-instrument`` loads hoptrace for
every client that is installed (the others skip themselves through
``instrumentation_dependencies()``).

When OpenTelemetry's contrib instrumentation for the same client is active too, two
instrumentations would each make a span per send and per process, and write the headers
twice. hoptrace takes over: :func:`take_over` uninstruments contrib's instrumentor for that
client if it is on, and keeps it from instrumenting while hoptrace's is on, in either order.
One warning names the conflict and the ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` value that
keeps contrib's from loading.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from .patching import Patcher

_log = logging.getLogger("hoptrace")

try:
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor as _Base,
    )
except ImportError:  # pragma: no cover - opentelemetry-instrumentation not installed
    _Base = object


class ClientInstrumentor(_Base):  # type: ignore[misc]
    """hoptrace's instrumentation of one client, as an OpenTelemetry instrumentor.

    Subclasses set :attr:`dependencies` and implement ``_instrument`` / ``_uninstrument``.
    Works without ``opentelemetry-instrumentation`` installed too (``instrument()`` and
    ``uninstrument()`` then call those directly).
    """

    dependencies: tuple[str, ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        """Return the client versions this instrumentation supports (pip requirement form)."""
        return self.dependencies

    def _instrument(self, **kwargs: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _uninstrument(self, **kwargs: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    if _Base is object:  # pragma: no cover - without opentelemetry-instrumentation

        def instrument(self, **kwargs: Any) -> None:
            """Instrument the client."""
            self._instrument(**kwargs)

        def uninstrument(self, **kwargs: Any) -> None:
            """Uninstrument the client."""
            self._uninstrument(**kwargs)


class Contrib(NamedTuple):
    """OpenTelemetry contrib's instrumentation of the client a hoptrace module traces."""

    client: str
    module: str
    instrumentor: str
    entry_point: str
    distribution: str


_lock = threading.RLock()
_guards = Patcher("hoptrace.take_over")
_warned: set[str] = set()


def _warn(contrib: Contrib, what: str) -> None:
    if contrib.client in _warned:
        return
    _warned.add(contrib.client)
    _log.warning(
        "hoptrace: OpenTelemetry's %s instrumentation (%s) %s; hoptrace traces %s itself and "
        "keeps that one off, so each message gets one send and one process span. Set "
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=%s to stop it loading and silence this warning.",
        contrib.client, contrib.distribution, what, contrib.client, contrib.entry_point,
    )


def _guard_instrument(contrib: Contrib, ours: Callable[[], bool]) -> Any:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def instrument(self: Any, **kwargs: Any) -> Any:
            if ours():
                # Refused before OTel's base class marks it instrumented, so it can still be
                # instrumented once hoptrace's instrumentation of the client is off.
                _warn(contrib, "was asked to instrument it too")
                return None
            return original(self, **kwargs)

        return instrument

    return make


def take_over(contrib: Contrib, ours: Callable[[], bool]) -> None:
    """Turn contrib's instrumentation of this client off, and keep it off while ``ours()``.

    Call it before hoptrace wraps the client. Does nothing when the contrib package is not
    installed. Never raises.
    """
    try:
        if importlib.util.find_spec(contrib.module) is None:
            return
    except (ImportError, ValueError):
        return
    try:
        cls = getattr(importlib.import_module(contrib.module), contrib.instrumentor, None)
        if cls is None:
            return
        with _lock:
            instance = cls()
            if getattr(instance, "_is_instrumented_by_opentelemetry", False):
                instance.uninstrument()
                _warn(contrib, "was active")
            _guards.wrap(cls, "instrument", _guard_instrument(contrib, ours))
    except Exception as exc:
        _log.warning("hoptrace: could not check %s for a second %s instrumentation: %r",
                     contrib.distribution, contrib.client, exc)


def reset_warnings() -> None:
    """Let each take-over warning be written once more (for tests)."""
    _warned.clear()


__all__ = ["ClientInstrumentor", "Contrib", "reset_warnings", "take_over"]
