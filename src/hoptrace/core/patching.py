"""Idempotent, reversible method patching shared by every integration's ``instrument()``.

An integration builds one :class:`Patcher` and calls :meth:`Patcher.wrap` for each method it
instruments. ``wrap`` is a no-op for a method already wrapped by the same patcher, and
:meth:`Patcher.restore` puts every original back, so ``instrument()`` and
``uninstrument()`` are both safe to call twice.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_MARK = "__hoptrace_wrapped__"


class Patcher:
    """Wraps methods on classes or modules and can put every original back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._patched: list[tuple[Any, str, Any, bool]] = []

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
        """Replace ``owner.attribute`` with ``make_wrapper(original)`` unless already wrapped."""
        with self._lock:
            had_own = attribute in vars(owner)
            original = vars(owner)[attribute] if had_own else getattr(owner, attribute)
            if getattr(original, _MARK, None) == self.name:
                return
            target = original
            if isinstance(original, (staticmethod, classmethod)):
                raise TypeError(f"{owner!r}.{attribute}: static/class methods are not wrapped")
            wrapper = make_wrapper(target)
            functools.update_wrapper(wrapper, target)
            setattr(wrapper, _MARK, self.name)
            setattr(owner, attribute, wrapper)
            self._patched.append((owner, attribute, original, had_own))

    def restore(self) -> None:
        """Put back every original this patcher replaced, newest first."""
        with self._lock:
            while self._patched:
                owner, attribute, original, had_own = self._patched.pop()
                if had_own:
                    setattr(owner, attribute, original)
                else:
                    try:
                        delattr(owner, attribute)
                    except AttributeError:
                        pass


def original_of(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the function a hoptrace wrapper wraps (``func`` itself if it is not one)."""
    while getattr(func, _MARK, None) is not None:
        func = func.__wrapped__  # type: ignore[attr-defined]
    return func
