"""What every client module shares: its on/off switches and its ``opentelemetry-instrument``
entry point. A client module names its patches and its supported versions; nothing more."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import trace

from .core.instrumentor import ClientInstrumentor
from .core.patching import Patcher


def switches(patcher: Patcher, client: str) -> tuple[Callable[[], None], Callable[[], bool]]:
    """Return the ``uninstrument`` and ``instrumented`` functions of a patching client module."""

    def uninstrument() -> None:
        patcher.restore()

    def instrumented() -> bool:
        return patcher.active

    uninstrument.__doc__ = f"Put {client}'s original methods back (idempotent)."
    instrumented.__doc__ = "Return whether ``instrument()`` is in force."
    return uninstrument, instrumented


#: Set on a client object (consumer, subscriber) by a framework integration that traces its
#: messages itself (``hoptrace.faststream``); client modules then leave that object alone.
CLAIM_ATTRIBUTE: Final = "_hoptrace_claimed_by"


def claim(client: object, by: str) -> None:
    """Mark ``client`` as traced by the integration ``by`` (first claim wins; C types skip)."""
    if client is not None and getattr(client, CLAIM_ATTRIBUTE, None) is None:
        try:
            setattr(client, CLAIM_ATTRIBUTE, by)
        except (AttributeError, TypeError):  # a C type, or __slots__
            pass


def claimed(client: object) -> bool:
    """Whether a framework integration traces ``client``'s messages itself."""
    return getattr(client, CLAIM_ATTRIBUTE, None) is not None


def names_active_span(traceparent: object) -> bool:
    """Whether a ``traceparent`` header value names the active span as its parent.

    True when the caller sends inside its own ``produce_scope`` (or an integration built on
    top of a client's did): the send is traced already and gets no second span.
    """
    if isinstance(traceparent, (bytes, bytearray)):
        try:
            traceparent = bytes(traceparent).decode("ascii")
        except UnicodeDecodeError:
            return False
    if type(traceparent) is not str or len(traceparent) < 52:
        return False
    context = trace.get_current_span().get_span_context()
    return context.is_valid and traceparent[36:52] == format(context.span_id, "016x")


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def wrap_each(patcher: Patcher, targets: Mapping[Any, Mapping[str, Wrapper]]) -> None:
    """Patch ``{owner class: {method name: make_wrapper}}`` with ``patcher``."""
    for owner, methods in targets.items():
        for attribute, make_wrapper in methods.items():
            patcher.wrap(owner, attribute, make_wrapper)


class Instrumentor(ClientInstrumentor):
    """A client's instrumentor: runs its module's ``instrument()`` / ``uninstrument()``.

    Subclasses, defined in the client module, set only ``dependencies``.
    """

    def _hook(self, name: str) -> Callable[[], None]:
        return getattr(sys.modules[type(self).__module__], name)  # type: ignore[no-any-return]

    def _instrument(self, **kwargs: Any) -> None:
        self._hook("instrument")()

    def _uninstrument(self, **kwargs: Any) -> None:
        self._hook("uninstrument")()
