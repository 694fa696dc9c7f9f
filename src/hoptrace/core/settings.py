"""Settings: one frozen dataclass, set by :func:`configure` or ``HOPTRACE_*`` variables.

A keyword argument to :func:`configure` that is invalid raises :class:`ConfigurationError`. An
invalid ``HOPTRACE_*`` variable never does (settings are read at import): hoptrace logs one
warning naming the variable, its value and the reason, and that setting keeps its default.

The old import path ``hoptrace._config`` is this same module object (see ``_config.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
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

#: The conventional transaction header: read on every consume, written only when
#: ``transaction_header`` names it (or when the baggage cannot carry the ID).
DEFAULT_TRANSACTION_HEADER = "x-transaction-id"


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
    #: With the OTel SDK's tracer, make a span the sampler provably drops (the child of an
    #: unsampled parent under static ParentBased delegates; a transaction's root under
    #: ParentBased(TraceIdRatioBased)) as the SDK's NonRecordingSpan, without building its
    #: attributes. False: every span through ``tracer.start_span``. Recording spans always
    #: come from ``tracer.start_span``: the lean recorder that once made them saved only 3-13%
    #: of the spans overhead in ``make bench``, and was removed.
    fast_spans: bool = True
    #: None: read ``x-transaction-id``, write nothing (the ID travels in the baggage entry
    #: ``baggage_key``). A name: read and write that header as well.
    transaction_header: str | None = None
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
    #: Metrics to leave unrecorded (names from METRIC_NAMES, or "*" for all of them).
    disabled_metrics: frozenset[str] = frozenset()
    #: Opt-in metrics to record as well (names from OPT_IN_METRICS, or "*" for all of them).
    #: ``disabled_metrics`` wins over it.
    enabled_metrics: frozenset[str] = frozenset()
    hold_consume_scope: bool = True
    transaction_id_generator: Callable[[], str] = field(default=new_transaction_id)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def read_transaction_header(self) -> str:
        """The header read for the transaction ID on every consume (and at the HTTP edge)."""
        return self.transaction_header or DEFAULT_TRANSACTION_HEADER

    @property
    def written_transaction_header(self) -> str | None:
        """The header every message carries the transaction ID in, or None (baggage only).

        Set ``transaction_header`` to write one. Without the baggage entry (``baggage_mirror``
        off), the conventional header carries the ID so that it is never lost.
        """
        if self.transaction_header is not None:
            return self.transaction_header
        return None if self.baggage_mirror else DEFAULT_TRANSACTION_HEADER


_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise ConfigurationError("expected one of true/false/1/0/yes/no/on/off")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigurationError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigurationError("expected a number") from None


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_optional_header(raw: str) -> str | None:
    return raw.strip() or None  # empty: unset, the default


def _parse_names(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _parse_allowlist(raw: str) -> frozenset[str] | None:
    if raw.strip() in ("", "*"):
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


# setting name -> (env var, parser)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    name: ("HOPTRACE_" + name.upper(), parser)
    for name, parser in {
        "enabled": _parse_bool,
        "propagation_only": _parse_bool,
        "fast_spans": _parse_bool,
        "transaction_header": _parse_optional_header,
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
        "disabled_metrics": _parse_names,
        "enabled_metrics": _parse_names,
        "hold_consume_scope": _parse_bool,
    }.items()
}


# -- validation: one check per field, then the checks across fields ---------------------------


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a bool, got {value!r}")


def _check_header(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ConfigurationError(f"{name} must be a header name (1-64 token chars), got {value!r}")
    if value.lower() in ("traceparent", "tracestate", "baggage"):
        raise ConfigurationError(f"{name} must not reuse the W3C header {value!r}")


def _check_optional_header(name: str, value: object) -> None:
    if value is not None:
        _check_header(name, value)


def _check_baggage_key(name: str, value: object) -> None:
    if not isinstance(value, str) or not _BAGGAGE_KEY.fullmatch(value):
        raise ConfigurationError(f"{name} must be a W3C baggage key, got {value!r}")


def _check_link_mode(name: str, value: object) -> None:
    if value not in ("parent", "link"):
        raise ConfigurationError(f"{name} must be 'parent' or 'link', got {value!r}")


def _check_allowlist(name: str, value: object) -> None:
    if value is not None and (
        not isinstance(value, frozenset) or not all(isinstance(k, str) for k in value)
    ):
        raise ConfigurationError(f"{name} must be None or a frozenset of str")


#: Every metric hoptrace records (see docs/metrics.md); ``disabled_metrics`` names some of them.
METRIC_NAMES: tuple[str, ...] = (
    "messaging.client.sent.messages",
    "messaging.client.consumed.messages",
    "messaging.client.operation.duration",
    "messaging.process.duration",
    "hoptrace.queue_wait",
    "hoptrace.queue_wait.clock_skew",
    "hoptrace.pathway.duration",
    "hoptrace.retries",
    "hoptrace.dead_letters",
)


#: The metrics recorded only when ``enabled_metrics`` names them: the pathway carries its
#: origin time in every message's baggage, so it costs bytes on the wire and work on every
#: hop (docs/metrics.md, "Cost").
OPT_IN_METRICS: tuple[str, ...] = ("hoptrace.pathway.duration",)


def _check_metric_names(name: str, value: object) -> None:
    if not isinstance(value, frozenset) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"{name} must be a frozenset of metric names")
    unknown = sorted(value - set(METRIC_NAMES) - {"*"})
    if unknown:
        raise ConfigurationError(
            f"{name}: unknown metric(s) {unknown}; known: {list(METRIC_NAMES)}"
        )


def _check_opt_in_names(name: str, value: object) -> None:
    _check_metric_names(name, value)
    assert isinstance(value, frozenset)
    by_default = sorted(value - set(OPT_IN_METRICS) - {"*"})
    if by_default:
        raise ConfigurationError(
            f"{name}: {by_default} already on by default; {name} names opt-in metrics only: "
            f"{list(OPT_IN_METRICS)}"
        )


def metric_on(settings: Settings, metric: str) -> bool:
    """Whether ``settings`` record ``metric`` (with a MeterProvider that records)."""
    off = settings.disabled_metrics
    if metric in off or "*" in off:
        return False
    if metric in OPT_IN_METRICS:
        wanted = settings.enabled_metrics
        return metric in wanted or "*" in wanted
    return True


def _int_between(lo: int, hi: int) -> Callable[[str, object], None]:
    def check(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigurationError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")

    return check


def _check_interval(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not value >= 0:  # also refuses NaN
        raise ConfigurationError(f"{name} must be >= 0, got {value!r}")


def _check_generator(name: str, value: object) -> None:
    if not callable(value):
        raise ConfigurationError(f"{name} must be a callable returning str")
    if value is not new_transaction_id:
        sample = value()
        if not isinstance(sample, str) or not TRANSACTION_ID_PATTERN.fullmatch(sample):
            raise ConfigurationError(
                f"{name} returned {sample!r}; IDs must match [A-Za-z0-9._:-]{{1,128}}"
            )


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "enabled": _check_bool,
    "propagation_only": _check_bool,
    "fast_spans": _check_bool,
    "transaction_header": _check_optional_header,
    "sent_time_header": _check_header,
    "baggage_mirror": _check_bool,
    "baggage_key": _check_baggage_key,
    "link_mode": _check_link_mode,
    "trust_incoming": _check_bool,
    "baggage_allowlist": _check_allowlist,
    "max_baggage_bytes": _int_between(1, W3C_BAGGAGE_MAX_BYTES),
    "max_baggage_members": _int_between(1, W3C_BAGGAGE_MAX_MEMBERS),
    "max_tracestate_bytes": _int_between(1, 8192),
    "warning_interval": _check_interval,
    "disabled_metrics": _check_metric_names,
    "enabled_metrics": _check_opt_in_names,
    "hold_consume_scope": _check_bool,
    "transaction_id_generator": _check_generator,
}


def _check_headers_differ(values: Mapping[str, Any]) -> None:
    tx = values["transaction_header"]
    if (tx or DEFAULT_TRANSACTION_HEADER).lower() == values["sent_time_header"].lower():
        if tx is None:
            raise ConfigurationError(
                f"sent_time_header must differ from {DEFAULT_TRANSACTION_HEADER!r}, the "
                "transaction header read on every consume (unless transaction_header names "
                "another)"
            )
        raise ConfigurationError("transaction_header and sent_time_header must differ")


#: Checks across fields, each with the fields it reads; run after every field passed its own.
_CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], None]], ...] = (
    (("transaction_header", "sent_time_header"), _check_headers_differ),
)


def _validate(s: Settings) -> None:
    values = vars(s)
    for name, check in _CHECKS.items():
        check(name, values[name])
    for _, cross_check in _CROSS_CHECKS:
        cross_check(values)


def _passes(name: str, value: object) -> bool:
    try:
        _CHECKS[name](name, value)
    except ConfigurationError:
        return False
    return True


# -- HOPTRACE_* variables: a bad one is a warning, never an exception -------------------------

_logger = logging.getLogger("hoptrace")
_warned_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def _warn_env(var: str, raw: str, name: str, reason: str) -> None:
    # Once per variable and value in this process: reset() re-reads the environment.
    with _warned_lock:
        if (var, raw) in _warned:
            return
        _warned.add((var, raw))
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    _logger.warning(
        "hoptrace: ignoring %s=%r (%s); %s keeps its default %r",
        var,
        shown,
        reason,
        name,
        _DEFAULTS[name],
    )


def _env_values(env: Mapping[str, str], options: Mapping[str, Any]) -> dict[str, Any]:
    # The valid settings named by HOPTRACE_* variables, except those ``options`` sets.
    found: dict[str, Any] = {}
    raws: dict[str, str] = {}
    for name, (var, parser) in _ENV.items():
        raw = env.get(var)
        if raw is None or name in options:
            continue
        try:
            value = parser(raw)
            _CHECKS[name](name, value)
        except ConfigurationError as exc:
            _warn_env(var, raw, name, str(exc))
            continue
        found[name] = value
        raws[name] = raw
    for fields, cross_check in _CROSS_CHECKS:
        if not any(name in found for name in fields):
            continue
        values = {**_DEFAULTS, **found, **options}
        if not all(_passes(name, values[name]) for name in fields):
            continue  # an option is wrong on its own: Settings() will say so
        try:
            cross_check(values)
        except ConfigurationError as exc:
            for name in fields:
                if name in found:
                    _warn_env(_ENV[name][0], raws[name], name, str(exc))
                    del found[name]
    return found


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the valid settings named by ``HOPTRACE_*`` variables; warn about invalid ones."""
    return _env_values(os.environ if environ is None else environ, {})


_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
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
        raise ConfigurationError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    if "baggage_allowlist" in options and options["baggage_allowlist"] is not None:
        allow = options["baggage_allowlist"]
        if isinstance(allow, str) or not isinstance(allow, Iterable):
            raise ConfigurationError("baggage_allowlist must be an iterable of keys or None")
        options["baggage_allowlist"] = frozenset(allow)
    for names in ("disabled_metrics", "enabled_metrics"):
        if names in options and not isinstance(options[names], str):
            options[names] = _frozen_names(names, options[names])
    merged = _env_values(os.environ, options)
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


def _frozen_names(name: str, value: object) -> frozenset[Any]:
    if not isinstance(value, Iterable):
        raise ConfigurationError(f"{name} must be an iterable of metric names")
    return frozenset(value)


_listeners: list[Callable[[Settings], None]] = []


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call ``listener`` with the new settings each time they change."""
    _listeners.append(listener)


def _on_change(settings: Settings) -> None:
    for listener in _listeners:
        listener(settings)
