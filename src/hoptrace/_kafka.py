"""Kafka mapping shared by the aiokafka, confluent-kafka and kafka-python integrations.

Each client module turns its own record type into the few plain values used here (topic,
partition, offset, key, headers, timestamp) and gets back hoptrace scopes. It is also the
one consume path of the three: the scope an iterator-style call (``getone()``, ``poll()``,
``next()``) holds for the record it returned (:mod:`hoptrace.core.held`), closed by the next
call, a commit (the client's settle point) or :func:`close_scope`; the explicit per-record
scope :func:`processing`; :func:`iterate` over a batch; and the :class:`Proxy` base of the
``Traced*`` wrappers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span
from opentelemetry.util.types import AttributeValue

from .core import diagnostics, held, metrics, semconv
from .core import propagation as _propagation
from .core import settings as _settings
from .core.carriers import write_headers
from .core.context import (
    BAGGAGE_KEY,
    SPAN_KEY,
    TRANSACTION_KEY,
    current_transaction_id,
    generate_transaction_id,
    get_current,
    sdk_installed,
)
from .core.hop import (
    _FAILED,
    AttachedSend,
    _dropped_child,
    consume_scope,
    produce_scope,
    receive_scope,
    spans_active,
    unrecorded_send,
)
from .core.hop import dropped_send_entry as _hop_dropped_send
from .core.propagation import (
    carried_transaction_id,
    holds_transaction_header,
    render,
)
from .core.settings import get_settings

SYSTEM: Final = semconv.SYSTEM_KAFKA
_encode: Final = str.encode  # (UTF-8, as a header value's bytes)
#: The C module's ``pairs_of``: :func:`_new_pairs`' comprehension in one call, ~4k
#: instructions less per send (None: pure Python or a stale build; the tests set it to None
#: to compare the two).
_pairs_of: Callable[[object], list[tuple[str, bytes]] | None] | None = getattr(
    _propagation._speedups, "pairs_of", None)
#: The C module's ``record_id``: a record's ``f"{topic}-{partition}@{offset}"``, ~1.2k
#: instructions less per consumed record (None: as ``_pairs_of``).
_record_id: Callable[[object, object, object], str | None] | None = getattr(
    _propagation._speedups, "record_id", None)
#: The public names aiokafka's and kafka-python's modules share.
CLIENT_API: Final = (
    "TracedConsumer", "TracedProducer", "close_scope", "instrument", "instrumented", "iterate",
    "processing", "uninstrument",
)


def message_id(topic: str, partition: int, offset: int) -> str:
    """Return the ``messaging.message.id`` hoptrace uses for a Kafka record: ``topic-p@offset``."""
    return f"{topic}-{partition}@{offset}"


def key_text(key: object) -> str | None:
    """Return a record key as text when it is a ``str`` or UTF-8 bytes, else None."""
    if type(key) is str:
        return key
    if isinstance(key, (bytes, bytearray)):
        try:
            return bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def record_attributes(
    partition: int, offset: int, key: object, group: str | None
) -> dict[str, AttributeValue]:
    """Return the Kafka attributes of a consumed record's span."""
    attrs: dict[str, AttributeValue] = {
        semconv.KAFKA_PARTITION: str(partition),
        semconv.KAFKA_OFFSET: offset,
    }
    text = key_text(key) if key is not None else None
    if text is not None:
        attrs[semconv.KAFKA_MESSAGE_KEY] = text
    if group:
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
    return attrs


class RecordScope(consume_scope):
    """A record's ``process {topic}`` scope, whose span leaves out the record's message ID.

    Kafka has no message ID: the ``topic-partition@offset`` that :func:`current_hop` and log
    lines get only repeats the destination, partition and offset the span records already.

    Built once per consumed record, so :class:`consume_scope`'s fields are set here in one
    frame; the span's Kafka attributes (:func:`record_attributes`) are only built when a
    span records or metrics read them (from the record's fields kept here).
    """

    __slots__ = ("_group", "_key", "_offset", "_partition")
    span_message_id = False
    # What consume_scope.__init__ would set alike for every record, read from the class (a
    # class attribute hides the base's slot of the name): five stores less per record.
    _system = SYSTEM
    _operation = semconv.OP_PROCESS
    _redelivered = None
    _links = None
    _name = None

    def _attributes(self) -> dict[str, AttributeValue]:
        """consume_scope's ``attributes`` (read as ``self._attributes``: this bound method, a
        callable that only a span or metrics call)."""
        return record_attributes(self._partition, self._offset, self._key, self._group)

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: object,
        headers: object,
        create_time_ms: int | None,
        group: str | None,
    ) -> None:
        # As consume_scope.__init__(headers, topic, SYSTEM, message_id=..., attributes=...,
        # sent_ns=...) sets them.
        self.span = None
        self._token = None
        self._attached = None
        self._closed = False
        self.metrics_record = None
        self._carrier = headers
        self._destination = topic
        message_id = _record_id(topic, partition, offset) if _record_id is not None else None
        self._message_id = f"{topic}-{partition}@{offset}" if message_id is None else message_id
        self._partition = partition
        self._offset = offset
        self._key = key
        self._group = group
        self._sent_ns = (
            create_time_ms * 1_000_000 if create_time_ms and create_time_ms > 0 else None
        )
        self._incoming = None
        self.transaction_id = None
        self.queue_wait_ms = None
        self._active = None


#: The (unopened) ``process {topic}`` scope of one consumed record:
#: ``record_scope(topic, partition, offset, key, headers, create_time_ms, group)``.
record_scope: Final = RecordScope


_new_object: Final = object.__new__


def consumer_record_scope(record: Any, group: str | None) -> consume_scope:
    """Return the process scope of an aiokafka or kafka-python ``ConsumerRecord``."""
    # RecordScope(...) without the class call's own machinery (type_call, slot_tp_init): the
    # instance, then its __init__ as a plain method call (~0.3k instructions less a record;
    # always a RecordScope, so always its own __init__).
    scope = _new_object(RecordScope)
    scope.__init__(  # type: ignore[misc]
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.headers,
        # 0: CreateTime (stamped at send), 1: LogAppendTime (stamped by the broker)
        record.timestamp if record.timestamp_type in (0, 1) else None,
        group,
    )
    return scope


class BatchEntry(NamedTuple):
    """One record of a batch pull, as :func:`receive_spans` needs it."""

    topic: str
    partition: int
    offset: int
    headers: object


def receive_spans(
    entries: Iterable[BatchEntry], group: str | None, start_time_ns: int
) -> None:
    """Record one ``receive {topic}`` span per topic of a batch, linking to every record.

    ``entries`` is consumed only when spans are made, so a lazy iterable costs nothing in
    propagation-only mode or without an SDK.
    """
    if not spans_active():
        return
    try:
        by_topic: dict[str, list[tuple[object, str | None]]] = {}
        for entry in entries:
            by_topic.setdefault(entry.topic, []).append(
                (
                    entry.headers,
                    message_id(entry.topic, entry.partition, entry.offset),
                )
            )
        attrs: dict[str, AttributeValue] | None = (
            {semconv.MESSAGING_CONSUMER_GROUP_NAME: group} if group else None
        )
        for topic, messages in by_topic.items():
            scope = receive_scope(
                messages, topic, SYSTEM, attributes=attrs, start_time_ns=start_time_ns
            )
            scope.open()
            scope.close()
    except Exception as exc:
        diagnostics.internal_error("kafka.receive", exc)


# ----------------------------------------------------------------- producer ---


def send_scope(
    topic: str, headers: object, key: object, timestamp_given: bool = False
) -> produce_scope:
    """Open a ``send {topic}`` scope; its ``carrier`` is a new header list to send.

    The record's own timestamp (CreateTime, stamped at send) gives the consumer its queue
    wait, so no send-time header is written unless the caller set the timestamp itself.
    Raises TypeError only when ``headers`` is not a list, tuple or mapping.
    """
    attrs: dict[str, AttributeValue] | None = None
    if key is not None:
        text = key_text(key)
        if text is not None:
            attrs = {semconv.KAFKA_MESSAGE_KEY: text}
    carrier: Any = [] if headers is None else headers
    return produce_scope(
        carrier, topic, SYSTEM, attributes=attrs, copy=headers is not None,
        sent_time=timestamp_given,
    ).open()


def headers_only() -> bool | Span:
    """Return whether a send needs only its headers: no span would record, metrics are off.

    For a client call that runs no user code (confluent-kafka's ``produce()``), a send scope
    then only writes the headers: its context is attached just to be detached again before
    the call, its span (if any) records nothing and its metrics hooks do nothing.
    :func:`send_headers` writes the same headers without it.

    True when no span would be made (``propagation_only=True``, or no SDK). With spans on,
    the send span the scope would make when the sampler is known to drop it (a child of the
    current, unsampled span under ``ParentBased`` with static delegates: see
    :func:`hoptrace.core.spans.dropped_child`): the headers must carry that span, as the
    scope's would. False otherwise (a span that may record, metrics on, a sampler hoptrace
    cannot reason about): the send needs its scope.
    """
    settings = _settings._current or get_settings()  # (no call once they are made)
    if not settings.enabled or (  # (metrics known off: enabled()'s first check, inline)
        metrics.provider_source._METER_PROVIDER is not metrics.off_provider and metrics.enabled()
    ):
        return False
    if settings.propagation_only:
        return True
    # What produce_scope._start_span asks first (metrics off: the context is the current one).
    # A drop is known only for the SDK's tracer, so only then is sdk_installed() asked.
    active = get_current().get(SPAN_KEY)
    if active is not None:
        dropped = _dropped_child(active, None, "kafka.headers_only")  # type: ignore[arg-type]
        if dropped is not None:
            return False if dropped is _FAILED else dropped
    return not sdk_installed()


def send_headers(headers: object, timestamp_given: bool = False, span: Span | None = None) -> Any:
    """Return the headers a send scope would send (see :func:`send_scope`), without the scope.

    Only for a send that :func:`headers_only` allows; ``span`` is the send span it returned,
    if any. The same headers as the scope path: the current transaction's ID, else a valid
    one ``headers`` carries, else a new one; the current trace (a new unsampled one without
    an SDK), or ``span``; a new list for ``None``, else a copy of ``headers`` whose own
    entries of those names are replaced. Raises TypeError only when ``headers`` is not a
    list, tuple or mapping.
    """
    kind = type(headers)
    if (headers is not None and kind is not list and kind is not dict
            and not isinstance(headers, (Mapping, list, tuple))):
        raise TypeError(
            f"unsupported carrier type {kind.__name__}: use a dict of headers, "
            "a list of (key, value) pairs, or a tuple of pairs"
        )
    carrier: Any = [] if headers is None else headers
    try:
        ctx = get_current()
        tx = ctx.get(TRANSACTION_KEY)
        # As the scope chooses: no transaction in force (a malformed one counts as none),
        # so a valid ID the headers carry is kept, else a new one. (No baggage: no ID in
        # force, without current_transaction_id's call.)
        if (tx is None and (not ctx.get(BAGGAGE_KEY) or current_transaction_id(ctx) is None)) or (
            tx is not None and not isinstance(tx, str)
        ):
            chosen = carried_transaction_id(headers) if headers else None
            if chosen is None and tx is not None:
                chosen = generate_transaction_id()
            if chosen is not None:
                ctx = Context({**ctx, TRANSACTION_KEY: chosen})
        # The scope's context: its send span (if any) current, without a copy to hold it.
        values = render(ctx, _settings._current or get_settings(), None, timestamp_given,
                        headers is not None and holds_transaction_header(headers), span)
        if headers is None:  # what write_headers makes of a new list (the values are str)
            pairs = _pairs_of(values) if _pairs_of is not None else None  # (_new_pairs' C step)
            return pairs if pairs is not None else _new_pairs(values)
        return write_headers(carrier, values, copy=True)
    except Exception as exc:
        diagnostics.internal_error("kafka.send_headers", exc)
        return carrier


def attached_send(
    headers: object, key: object, timestamp_given: bool
) -> tuple[Any, AttachedSend | None] | None:
    """:func:`open_send` for a send that makes no span and records no metric, without a scope.

    Returns the headers to send and the send's context, attached for the client's call
    (which runs the user's serializers and partitioner); close it when the call returns or
    raises (None: nothing attached). The same headers and context as the scope
    (:func:`hoptrace.core.hop.unrecorded_send`); the caller's headers when they are of a
    type the client rejects (its own error follows). None: the send needs :func:`open_send`.
    """
    if (key is not None and type(key) is not bytes and isinstance(key, (bytes, bytearray))
            and type(key) is not bytearray):
        return None  # (key_text runs a subclass's own code: send_scope's errors and counts)
    if headers is None:
        if _dropped_fast and not (_settings._current or get_settings()).propagation_only:
            # With spans on, a send span the sampler drops first (most sends at a low
            # sampling rate): None, with nothing done, where it does not apply, and always
            # without an SDK, so the SDK check in unrecorded_send is made only then.
            done = _hop_dropped_send([], timestamp_given, False)
            if done is not None:
                return done
        # The scope's new list, [] with the values written in: the same pairs as those of
        # the new dict the values make (a failure's empty dict is that empty list).
        attached = unrecorded_send(None, timestamp_given, True, True)
        if attached is None:  # (spans on and a span that may record: the scope)
            return None
        if type(attached[0]) is list:  # (the pairs, from the C writer)
            return attached
        return _new_pairs(attached[0]), attached[1]  # (else the dict)
    try:
        attached = unrecorded_send(headers, timestamp_given, True)  # type: ignore[arg-type]
    except TypeError:  # (as open_send: the send goes untraced)
        return headers, None
    return attached if attached is not None else _dropped(headers, timestamp_given)


def _dropped(headers: object, timestamp_given: bool) -> tuple[Any, AttachedSend | None] | None:
    """:func:`dropped_send` where it is on (asked after ``unrecorded_send``, so that
    propagation-only sends pay nothing for it); the caller's headers when they are of a type
    the client rejects. (No headers, never rejected, call ``dropped_send`` directly.)"""
    if not _dropped_fast:
        return None
    try:
        return dropped_send(headers, timestamp_given)
    except TypeError:  # (as open_send: the send goes untraced)
        return headers, None


#: Whether :func:`attached_send` tries :func:`dropped_send` (the tests turn it off to compare
#: it with the send scope).
_dropped_fast: bool = True


def dropped_send(
    headers: object, timestamp_given: bool
) -> tuple[Any, AttachedSend | None] | None:
    """:func:`attached_send` for a send whose span the sampler is known to drop, no scope.

    :func:`hoptrace.core.hop.dropped_send` of the carrier and copy flag :func:`send_scope`
    gives the scope (a new empty list of pairs for no headers, else a copy of ``headers``):
    with spans on and metrics off, inside a transaction and under a current span whose child
    the sampler drops, the send scope (:func:`open_send`) would attach its context (that
    dropped span current, the transaction bound), render the headers from it, and at the ack
    or the client's error only detach it: ending a ``NonRecordingSpan`` with or without an
    error does nothing while the API's ``end`` and ``is_recording`` are its own, and nothing
    awaits the ack (:func:`detach_for_ack`). The same here without the scope: the same span
    (the same random draws), context and headers. None: the send needs its scope. Raises
    TypeError as the scope does.
    """
    return _hop_dropped_send(
        [] if headers is None else headers, timestamp_given, headers is not None)


def dropped_headers(headers: object, timestamp_given: bool) -> Any:
    """:func:`dropped_send`'s headers for a client call that runs no user code
    (confluent-kafka's ``produce()``): the same headers, with nothing left attached (the
    scope's context would be detached before the call anyway: see :func:`detach_for_ack`).
    None, with nothing done: the send needs :func:`headers_only` or its scope (spans off,
    a span that may record, metrics on, headers of a type the client rejects). The caller
    asks it only with spans on and :data:`_dropped_fast` (propagation-only sends pay
    nothing for it)."""
    try:
        done = _hop_dropped_send(
            [] if headers is None else headers, timestamp_given, headers is not None, False)
    except TypeError:  # (send_headers and the scope decide what such headers get)
        return None
    return None if done is None else done[0]


def _new_pairs(values: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """What ``write_headers`` makes of a new pair list: each value as its UTF-8 bytes."""
    pairs = _pairs_of(values) if _pairs_of is not None else None
    if pairs is None:  # (no C module, or values it leaves to Python)
        # (A comprehension: ~1.2k instructions less than list(zip(keys, map(str.encode, ...))).)
        pairs = [(key, _encode(value)) for key, value in values.items()]
    return pairs


def open_send(
    topic: str, headers: object, key: object, timestamp_given: bool, label: str
) -> produce_scope | None:
    """Open a send scope (see :func:`send_scope`), or None to send the record untraced.

    Headers of a type the client rejects give None silently: the client raises its own error.
    """
    try:
        return send_scope(topic, headers, key, timestamp_given)
    except Exception as exc:
        if not isinstance(exc, TypeError):
            diagnostics.internal_error(label, exc)
        return None


def await_ack(
    scope: produce_scope, future: Any, hook: Callable[[Any, produce_scope], None], label: str
) -> Any:
    """Detach a send's context and end its span when ``future`` reports (``hook`` wires it)."""
    pending = detach_for_ack(scope)
    if pending is None:
        scope.close()  # no span awaits the ack: end the send now, so metrics count it
    else:
        try:
            hook(future, pending)
        except Exception as exc:
            diagnostics.internal_error(label, exc)
            end_send(pending, None, None, None)
    return future


def end_send_with(scope: produce_scope | None, metadata: object) -> None:
    """End a detached send with the partition and offset of the client's record metadata."""
    end_send(
        scope, getattr(metadata, "partition", None), getattr(metadata, "offset", None), None
    )


def detach_for_ack(scope: produce_scope) -> produce_scope | None:
    """Detach ``scope``'s context where it was attached; return it if anything awaits the ack.

    Nothing does without a span, nor for the OTel API's ``NonRecordingSpan`` (a send span the
    sampler dropped) with metrics off: ending that span and adding the record's partition
    and offset to it do nothing, so the send can end now instead of in a callback.
    """
    scope.release_context()
    return scope if awaits_ack(scope) else None


def awaits_ack(scope: produce_scope) -> bool:
    """Whether ending ``scope`` at the broker's ack records anything (see detach_for_ack)."""
    span = scope.span
    return span is not None and (
        type(span) is not NonRecordingSpan or scope.metrics_record is not None
    )


def end_send(
    scope: produce_scope | None,
    partition: int | None,
    offset: int | None,
    exc: BaseException | None,
) -> None:
    """End a send detached by :func:`detach_for_ack`, with the record's partition and offset."""
    if scope is None:
        return
    try:
        if exc is None:
            if partition is not None and partition >= 0:
                scope.set_attribute(semconv.KAFKA_PARTITION, str(partition))
            if offset is not None and offset >= 0:
                scope.set_attribute(semconv.KAFKA_OFFSET, offset)
    except Exception as err:
        diagnostics.internal_error("kafka.end_send", err)
    scope.close(exc)


# ------------------------------------------------------------ consume path ---


def processing(record: Any, group: str | None = None) -> consume_scope:
    """Return the ``process {topic}`` scope of a consumed record (``with`` or ``async with``).

    For code that wants the record's exact boundaries: the handler runs inside the block, and
    nothing after it joins the record's trace.
    """
    return consumer_record_scope(record, group)


def iterate(
    batch: Mapping[Any, Iterable[Any]] | Iterable[Any], group: str | None = None
) -> Iterator[Any]:
    """Yield the records of a batch pull, each inside its own process scope."""
    return held.scoped(flatten(batch), functools.partial(consumer_record_scope, group=group))


class Proxy:
    """A traced view of a client object; every attribute it does not define is the client's."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def close_scope(consumer: Any = None) -> None:
    """Close the process scope a call left held for ``consumer`` in this task or thread.

    With no ``consumer``, close every scope held in this task or thread.
    """
    held.release(consumer._client if isinstance(consumer, Proxy) else consumer)


def hold_record(
    owner: object, record: Any, scope_of: Callable[[Any, str | None], consume_scope | None],
    group: str | None,
) -> Any:
    """Hold ``record``'s process scope (``scope_of(record, group)``) for ``owner``; return it."""
    try:
        held.hold(owner, scope_of(record, group))
    except Exception as exc:
        diagnostics.internal_error("kafka.consume", exc)
    return record


def receive_records(batch: Mapping[Any, Iterable[Any]], group: str | None, start: int) -> None:
    """Record the ``receive`` spans of a ``{partition: [ConsumerRecord]}`` batch pull."""
    receive_spans(
        (BatchEntry(r.topic, r.partition, r.offset, r.headers)
         for records in batch.values() for r in records),
        group,
        start,
    )


def flatten(batch: Mapping[Any, Iterable[Any]] | Iterable[Any]) -> Iterable[Any]:
    """Return the records of a ``{partition: [records]}`` mapping, or ``batch`` itself."""
    if isinstance(batch, Mapping):
        return [record for records in batch.values() for record in records]
    return batch


def now_ns() -> int:
    """Return the wall-clock time in ns (the start of a batch pull)."""
    return time.time_ns()
