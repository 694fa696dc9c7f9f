"""Counters for rejected input and internal errors, and rate-limited warnings about them."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from .settings import get_settings

logger = logging.getLogger("hoptrace")

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_last_warned: dict[str, float] = {}


def count(event: str) -> None:
    """Add one to the counter named ``event`` (for example ``rejected.traceparent.format``)."""
    with _lock:
        _counts[event] += 1


def _due(event: str) -> tuple[bool, int]:
    """Count ``event``; say whether a warning about it is due, and how often it was seen."""
    now = time.monotonic()
    interval = get_settings().warning_interval
    with _lock:
        _counts[event] += 1
        seen = _counts[event]
        last = _last_warned.get(event)
        if last is not None and now - last < interval:
            return False, seen
        _last_warned[event] = now
        return True, seen


def warn(event: str, message: str, *args: object) -> None:
    """Count ``event`` and log a warning about it, at most once per ``warning_interval``."""
    due, seen = _due(event)
    if due:
        try:
            logger.warning(message + " [%s, seen %d time(s)]", *args, event, seen)
        except Exception:
            pass


def internal_error(where: str, exc: BaseException) -> None:
    """Record an error raised inside hoptrace itself; the hop continues without it."""
    due, seen = _due(f"internal_error.{where}")
    if due:
        try:
            logger.warning(
                "hoptrace: internal error in %s (seen %d time(s)); the message goes on without "
                "tracing: %r",
                where,
                seen,
                exc,
                exc_info=exc,
            )
        except Exception:
            pass


def diagnostics() -> dict[str, int]:
    """Return a snapshot of every counter: rejections by reason, clock skew, internal errors."""
    with _lock:
        return dict(_counts)


def rejections() -> int:
    """Return how many incoming header values have been rejected so far."""
    with _lock:
        return sum(v for k, v in _counts.items() if k.startswith("rejected."))


def reset_diagnostics() -> None:
    """Zero every counter and forget when warnings were last logged."""
    with _lock:
        _counts.clear()
        _last_warned.clear()
