"""Stackable, reversible method patching shared by every integration's ``instrument()``.

An integration builds one :class:`Patcher` and calls :meth:`Patcher.wrap` for each method it
instruments. Other tools wrap the same methods (OpenTelemetry contrib and ddtrace through
wrapt, others with plain functions), before or after hoptrace, so a patch must stack:

* ``wrap`` is a no-op for a method this patcher already wraps, wherever its wrapper sits in
  the chain;
* :meth:`Patcher.restore` removes only hoptrace's own wrapper. On top of the chain, the
  method it replaced comes back. Under a wrapt proxy, the proxy is re-pointed past it.
  Under any other wrapper, which holds a reference to it that only its owner can change, it
  turns into a pass-through, and a later ``wrap`` switches that same wrapper back on instead
  of stacking a second one.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import FunctionType
from typing import Any

_MARK = "__hoptrace_wrapped__"
_MAX_CHAIN = 64


class _Patch:
    """One method wrapped by hoptrace: where, what it replaced, and whether it is live."""

    __slots__ = ("attribute", "had_own", "live", "original", "owner", "wrapper")

    def __init__(self, owner: Any, attribute: str, original: Any, had_own: bool) -> None:
        self.owner = owner
        self.attribute = attribute
        self.original = original
        self.had_own = had_own
        self.live = True
        self.wrapper: Any = None


def _as_method(original: Any) -> Any:
    """``original`` as a function taking the instance first, the way a method is called.

    A plain function already is one. Another tool's wrapper that is a descriptor but not a
    function (a wrapt proxy) must be bound to the instance first, as attribute access would,
    or it runs without knowing its instance.
    """
    # type(), not isinstance(): a wrapt proxy passes for the class of what it wraps.
    if type(original) is FunctionType or not hasattr(type(original), "__get__"):
        return original

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call


def _dispatcher(patch: _Patch, impl: Callable[..., Any], original: Any) -> Callable[..., Any]:
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if patch.live:
            return impl(*args, **kwargs)
        return original(*args, **kwargs)

    return dispatch


def _chain(top: Any) -> list[Any]:
    """``top`` and every object below it, following ``__wrapped__``."""
    chain: list[Any] = []
    item = top
    while item is not None and len(chain) < _MAX_CHAIN:
        chain.append(item)
        try:
            item = getattr(item, "__wrapped__", None)
        except Exception:
            break
    return chain


def _is_wrapt_proxy(item: object) -> bool:
    try:
        import wrapt
    except ImportError:  # pragma: no cover - wrapt comes with opentelemetry-instrumentation
        return False
    # wrapt 2 names the base of every proxy BaseObjectProxy; wrapt 1, ObjectProxy.
    return isinstance(item, getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy))


class Patcher:
    """Wraps methods on classes or modules, and takes back only its own wrappers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._patched: list[_Patch] = []
        self._dormant: list[_Patch] = []

    @property
    def active(self) -> bool:
        """Whether any method is currently wrapped by this patcher."""
        return bool(self._patched)

    def wrap(
        self,
        owner: Any,
        attribute: str,
        make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> None:
        """Wrap ``owner.attribute`` with ``make_wrapper(original)`` unless this patcher has."""
        with self._lock:
            had_own = attribute in vars(owner)
            current = vars(owner)[attribute] if had_own else getattr(owner, attribute)
            chain = _chain(current)
            for patch in self._patched:
                if patch.owner is owner and patch.attribute == attribute:
                    return
            for patch in self._dormant:
                if patch.owner is owner and patch.attribute == attribute and any(
                    item is patch.wrapper for item in chain
                ):
                    patch.live = True  # our pass-through under another tool's wrapper
                    self._dormant.remove(patch)
                    self._patched.append(patch)
                    return
            if isinstance(current, (staticmethod, classmethod)):
                raise TypeError(f"{owner!r}.{attribute}: static/class methods are not wrapped")
            patch = _Patch(owner, attribute, current, had_own)
            target = _as_method(current) if isinstance(owner, type) else current
            wrapper = _dispatcher(patch, make_wrapper(target), target)
            functools.update_wrapper(wrapper, current)
            setattr(wrapper, _MARK, self.name)
            patch.wrapper = wrapper
            setattr(owner, attribute, wrapper)
            self._patched.append(patch)

    def restore(self) -> None:
        """Take out every wrapper this patcher added, newest first; leave others in place."""
        with self._lock:
            while self._patched:
                patch = self._patched.pop()
                owner, attribute = patch.owner, patch.attribute
                current = vars(owner).get(attribute, None)
                if current is None:
                    current = getattr(owner, attribute, None)
                if current is patch.wrapper:
                    if patch.had_own:
                        setattr(owner, attribute, patch.original)
                    else:
                        try:
                            delattr(owner, attribute)
                        except AttributeError:
                            pass
                    continue
                chain = _chain(current)
                above = next(
                    (chain[i - 1] for i in range(1, len(chain)) if chain[i] is patch.wrapper), None
                )
                if above is not None and _is_wrapt_proxy(above):
                    try:
                        above.__wrapped__ = patch.original
                        continue
                    except Exception:  # pragma: no cover - a proxy that refuses
                        pass
                patch.live = False
                self._dormant.append(patch)


def original_of(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the function a hoptrace wrapper wraps (``func`` itself if it is not one)."""
    while getattr(func, _MARK, None) is not None:
        func = func.__wrapped__  # type: ignore[attr-defined]
    return func
