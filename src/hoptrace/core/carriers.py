"""Reading and writing header carriers of every shape the brokers use.

Supported carriers:

* mappings (AMQP / Celery / kombu headers, confluent-kafka dict headers) whose values may be
  ``str``, ``bytes``, ``int``, ``None`` or nested tables;
* lists of ``(key, value)`` pairs (aiokafka, kafka-python, confluent-kafka list headers);
* tuples of pairs, which are immutable: writing returns a new list.

Writing replaces entries that already exist and never appends duplicates. Reading never
raises: a value that is not text comes back as a :class:`Rejected` reason.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Final

from opentelemetry.propagators.textmap import Getter, Setter

#: Every carrier shape hoptrace accepts.
Carrier = (
    MutableMapping[str, Any]
    | Mapping[str, Any]
    | list[tuple[str, Any]]
    | tuple[tuple[str, Any], ...]
    | None
)

#: Longest header value decoded while scanning a pair list (the W3C baggage limit).
_DECODE_LIMIT: Final = 8192

#: Longest value :class:`HeadersGetter` hands to a propagator.
_GETTER_LIMIT: Final = 65536

#: The default that tells a mapping carrier has no such header.
MISSING: Final = object()


class Rejected(str):
    """The reason a header value could not be used (``type``, ``encoding``, ``size`` …)."""

    __slots__ = ()


REJECT_TYPE: Final = Rejected("type")
REJECT_ENCODING: Final = Rejected("encoding")
REJECT_SIZE: Final = Rejected("size")
REJECT_DUPLICATE: Final = Rejected("duplicate")


def read_headers(carrier: object, names: Sequence[str] | frozenset[str]) -> dict[str, Any]:
    """Return the raw values of ``names`` present in ``carrier``.

    In a list carrier a name seen twice maps to a list of every raw value, in order; short
    ``bytes`` values are decoded to text when they are valid UTF-8. Unknown carrier types
    read as empty. Never raises.
    """
    found: dict[str, Any] = {}
    if carrier is None:
        return found
    try:
        kind = type(carrier)
        if kind is list or kind is tuple or (
            not isinstance(carrier, Mapping) and isinstance(carrier, (list, tuple))
        ):
            _scan_pairs(carrier, names, found)  # type: ignore[arg-type]
        elif kind is dict or isinstance(carrier, Mapping):
            get = carrier.get  # type: ignore[attr-defined]
            for name in names:
                value = get(name, MISSING)
                if value is not MISSING:
                    found[name] = value
    except Exception:
        return {}
    return found


def _scan_pairs(
    carrier: list[Any] | tuple[Any, ...],
    wanted: Sequence[str] | frozenset[str],
    found: dict[str, Any],
) -> None:
    for item in carrier:
        if type(item) is tuple and len(item) == 2:
            key, value = item
        else:
            try:
                key, value = item
            except (TypeError, ValueError):
                continue
        if type(key) is not str:
            if not isinstance(key, (bytes, bytearray)):
                continue
            try:
                key = bytes(key).decode("ascii")
            except UnicodeDecodeError:
                continue
        if key not in wanted:
            continue
        if type(value) is bytes and len(value) <= _DECODE_LIMIT:
            # Kafka headers are bytes: decode here, once, so the reader takes its text fast
            # path. Invalid UTF-8 stays bytes and is rejected there, with its reason.
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if key in found:
            previous = found[key]
            if isinstance(previous, _Many):
                previous.append(value)
            else:
                found[key] = _Many((previous, value))
        else:
            found[key] = value


class _Many(list[Any]):
    """Every value of a header that a list carrier holds more than once."""

    __slots__ = ()


def is_many(value: object) -> bool:
    """Return whether ``value`` is the set of values of a header seen more than once."""
    return isinstance(value, _Many)


def utf8_size(text: str) -> int:
    """The size of ``text`` in bytes on the wire (UTF-8): the W3C limits count bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def as_text(value: object, max_len: int) -> str | Rejected:
    """Return ``value`` as text, or the reason it cannot be used (``max_len`` counts UTF-8
    bytes). Never raises."""
    if type(value) is str:
        return value if utf8_size(value) <= max_len else REJECT_SIZE
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > max_len:
            return REJECT_SIZE
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return REJECT_ENCODING
    if isinstance(value, str):  # a str subclass: normalise it
        text = str(value)
        return text if utf8_size(text) <= max_len else REJECT_SIZE
    return REJECT_TYPE


def write_headers(
    carrier: object, values: Mapping[str, str], *, copy: bool = False
) -> MutableMapping[str, Any] | list[tuple[str, Any]]:
    """Write ``values`` into ``carrier``, replacing existing entries; return the carrier.

    Mappings get ``str`` values, pair lists get ``bytes`` values. A tuple, an immutable
    mapping, ``None`` or ``copy=True`` gives a new carrier and leaves the original untouched.
    """
    if carrier is None:
        return dict(values)
    kind = type(carrier)  # exact types first: isinstance on an ABC costs a Python-level call
    if kind is dict and not copy:
        carrier.update(values)  # type: ignore[attr-defined]
        return carrier  # type: ignore[return-value]
    if kind is list or kind is tuple:
        return _write_pairs(carrier, values, copy)  # type: ignore[arg-type]
    if isinstance(carrier, MutableMapping) and not copy:
        carrier.update(values)
        return carrier
    if isinstance(carrier, Mapping):
        out = dict(carrier)
        out.update(values)
        return out
    if isinstance(carrier, (list, tuple)):
        return _write_pairs(carrier, values, copy)
    raise TypeError(
        f"unsupported carrier type {type(carrier).__name__}: use a dict of headers, "
        "a list of (key, value) pairs, or a tuple of pairs"
    )


def _write_pairs(
    carrier: list[Any] | tuple[Any, ...], values: Mapping[str, str], copy: bool
) -> list[tuple[str, Any]]:
    kept = [item for item in carrier if _pair_key(item) not in values]
    kept.extend((k, v.encode("utf-8")) for k, v in values.items())
    if isinstance(carrier, list) and not copy:
        carrier[:] = kept
        return carrier
    return kept


def _pair_key(item: object) -> object:
    try:
        key = item[0]  # type: ignore[index]
    except Exception:
        return None
    if isinstance(key, (bytes, bytearray)):
        try:
            return bytes(key).decode("ascii")
        except UnicodeDecodeError:
            return None
    return key


class HeadersGetter(Getter[Any]):
    """An OTel ``Getter`` over any hoptrace carrier, for use with OTel's own propagators."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        """Return the text values of ``key``, skipping values that are not valid text."""
        if type(carrier) is dict:  # the common case: one text value
            value = carrier.get(key)
            if value is None:
                return None
            if type(value) is str and len(value) <= _GETTER_LIMIT:
                return [value]
        raw = read_headers(carrier, (key,))
        if key not in raw:
            return None
        values = raw[key] if is_many(raw[key]) else [raw[key]]
        texts = [
            t for t in (as_text(v, _GETTER_LIMIT) for v in values) if not isinstance(t, Rejected)
        ]
        return texts or None

    def keys(self, carrier: Any) -> list[str]:
        """Return every header name in ``carrier``."""
        if isinstance(carrier, Mapping):
            return [str(k) for k in carrier]
        if isinstance(carrier, (list, tuple)):
            return [str(_pair_key(item)) for item in carrier]
        return []


class HeadersSetter(Setter[Any]):
    """An OTel ``Setter`` for mutable carriers (dicts and pair lists); replaces, never appends."""

    def set(self, carrier: Any, key: str, value: str) -> None:
        """Set ``key`` to ``value`` in ``carrier``, replacing any earlier entry."""
        write_headers(carrier, {key: value})
