"""Settings: one frozen dataclass, set by :func:`configure` or ``HOPTRACE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from random import randbytes
from typing import Any, Literal

LinkMode = Literal["parent", "link"]

#: A transaction ID is 1..128 printable characters from this set, so it can never
#: carry CR/LF or other bytes that would forge or split a log line.
TRANSACTION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,64}")
_BAGGAGE_KEY = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,256}")

#: W3C Baggage limits (https://www.w3.org/TR/baggage/#limits).
W3C_BAGGAGE_MAX_BYTES = 8192
W3C_BAGGAGE_MAX_MEMBERS = 180
#: W3C Trace Context: at most 32 list members; 512 characters is the recommended floor.
W3C_TRACESTATE_MAX_MEMBERS = 32


class ConfigurationError(ValueError):
    """A setting passed to :func:`hoptrace.configure` or a ``HOPTRACE_*`` variable is invalid."""


def new_transaction_id() -> str:
    """Return a fresh transaction ID: 32 lowercase hex characters (128 random bits)."""
    return randbytes(16).hex()


@dataclass(frozen=True)
class Settings:
    """Every hoptrace setting. Build one with :func:`hoptrace.configure`."""

    enabled: bool = True
    propagation_only: bool = False
    fast_spans: bool = True
    transaction_header: str = "x-transaction-id"
    sent_time_header: str = "x-hoptrace-sent-ns"
    baggage_mirror: bool = True
    baggage_key: str = "transaction.id"
    link_mode: LinkMode = "parent"
    trust_incoming: bool = True
    baggage_allowlist: frozenset[str] | None = None
    max_baggage_bytes: int = W3C_BAGGAGE_MAX_BYTES
    max_baggage_members: int = W3C_BAGGAGE_MAX_MEMBERS
    max_tracestate_bytes: int = 512
    warning_interval: float = 60.0
    transaction_id_generator: Callable[[], str] = field(default=new_transaction_id)

    def __post_init__(self) -> None:
        _validate(self)


_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}

# setting name -> (env var, parser)
_ENV: dict[str, tuple[str, Callable[[str, str], Any]]] = {}


def _parse_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise ConfigurationError(f"{var}={raw!r}: expected one of true/false/1/0/yes/no/on/off")


def _parse_int(var: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{var}={raw!r}: expected an integer") from None


def _parse_float(var: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{var}={raw!r}: expected a number") from None


def _parse_str(var: str, raw: str) -> str:
    return raw.strip()


def _parse_allowlist(var: str, raw: str) -> frozenset[str] | None:
    if raw.strip() in ("", "*"):
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


for _name, _parser in {
    "enabled": _parse_bool,
    "propagation_only": _parse_bool,
    "fast_spans": _parse_bool,
    "transaction_header": _parse_str,
    "sent_time_header": _parse_str,
    "baggage_mirror": _parse_bool,
    "baggage_key": _parse_str,
    "link_mode": _parse_str,
    "trust_incoming": _parse_bool,
    "baggage_allowlist": _parse_allowlist,
    "max_baggage_bytes": _parse_int,
    "max_baggage_members": _parse_int,
    "max_tracestate_bytes": _parse_int,
    "warning_interval": _parse_float,
}.items():
    _ENV[_name] = ("HOPTRACE_" + _name.upper(), _parser)


def _validate(s: Settings) -> None:
    for name in ("enabled", "propagation_only", "fast_spans", "baggage_mirror", "trust_incoming"):
        if not isinstance(getattr(s, name), bool):
            raise ConfigurationError(f"{name} must be a bool, got {getattr(s, name)!r}")
    for name in ("transaction_header", "sent_time_header"):
        value = getattr(s, name)
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
            raise ConfigurationError(
                f"{name} must be a header name (1-64 token chars), got {value!r}"
            )
        if value.lower() in ("traceparent", "tracestate", "baggage"):
            raise ConfigurationError(f"{name} must not reuse the W3C header {value!r}")
    if s.transaction_header.lower() == s.sent_time_header.lower():
        raise ConfigurationError("transaction_header and sent_time_header must differ")
    if not isinstance(s.baggage_key, str) or not _BAGGAGE_KEY.fullmatch(s.baggage_key):
        raise ConfigurationError(f"baggage_key must be a W3C baggage key, got {s.baggage_key!r}")
    if s.link_mode not in ("parent", "link"):
        raise ConfigurationError(f"link_mode must be 'parent' or 'link', got {s.link_mode!r}")
    if s.baggage_allowlist is not None and (
        not isinstance(s.baggage_allowlist, frozenset)
        or not all(isinstance(k, str) for k in s.baggage_allowlist)
    ):
        raise ConfigurationError("baggage_allowlist must be None or a frozenset of str")
    bounds = {
        "max_baggage_bytes": (1, W3C_BAGGAGE_MAX_BYTES),
        "max_baggage_members": (1, W3C_BAGGAGE_MAX_MEMBERS),
        "max_tracestate_bytes": (1, 8192),
    }
    for name, (lo, hi) in bounds.items():
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigurationError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    if isinstance(s.warning_interval, bool) or not isinstance(s.warning_interval, (int, float)):
        raise ConfigurationError(f"warning_interval must be a number, got {s.warning_interval!r}")
    if s.warning_interval < 0:
        raise ConfigurationError("warning_interval must be >= 0")
    if not callable(s.transaction_id_generator):
        raise ConfigurationError("transaction_id_generator must be a callable returning str")
    if s.transaction_id_generator is not new_transaction_id:
        sample = s.transaction_id_generator()
        if not isinstance(sample, str) or not TRANSACTION_ID_PATTERN.fullmatch(sample):
            raise ConfigurationError(
                "transaction_id_generator returned "
                f"{sample!r}; IDs must match [A-Za-z0-9._:-]{{1,128}}"
            )


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the settings named by ``HOPTRACE_*`` variables, parsed and keyed by field name."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name, (var, parser) in _ENV.items():
        raw = env.get(var)
        if raw is not None:
            found[name] = parser(var, raw)
    return found


_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
_current: Settings | None = None


def get_settings() -> Settings:
    """Return the settings in force (from the environment until :func:`configure` runs)."""
    global _current
    if _current is None:
        _current = Settings(**settings_from_env())
    return _current


def configure(**options: Any) -> Settings:
    """Set hoptrace's settings; keyword arguments win over ``HOPTRACE_*`` variables."""
    global _current
    unknown = set(options) - _FIELDS
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}"
        )
    merged = settings_from_env()
    if "baggage_allowlist" in options and options["baggage_allowlist"] is not None:
        allow = options["baggage_allowlist"]
        if isinstance(allow, str) or not isinstance(allow, Iterable):
            raise ConfigurationError("baggage_allowlist must be an iterable of keys or None")
        options["baggage_allowlist"] = frozenset(allow)
    merged.update(options)
    _current = Settings(**merged)
    _on_change(_current)
    return _current


def reset() -> Settings:
    """Drop every :func:`configure` override and re-read ``HOPTRACE_*`` variables."""
    global _current
    _current = None
    current = get_settings()
    _on_change(current)
    return current


_listeners: list[Callable[[Settings], None]] = []


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call ``listener`` with the new settings each time they change."""
    _listeners.append(listener)


def _on_change(settings: Settings) -> None:
    for listener in _listeners:
        listener(settings)
