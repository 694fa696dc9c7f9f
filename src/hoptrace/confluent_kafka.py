"""hoptrace for confluent-kafka: traced ``produce`` and a handler scope from ``poll``.

confluent-kafka's ``Producer`` and ``Consumer`` are C types: their methods cannot be patched
and their instances take no new attributes. hoptrace therefore offers

* drop-in subclasses, :class:`Producer` and :class:`Consumer`;
* :func:`instrument`, which makes ``confluent_kafka.Producer`` / ``confluent_kafka.Consumer``
  name those subclasses, so clients created *afterwards* are traced;
* :func:`wrap_producer` / :func:`wrap_consumer`, proxies around a client you already have.

Semantics:

* ``produce()`` makes a ``send {topic}`` span, injects into a copy of the headers (dict or
  list) and ends the span in the delivery report with the partition and offset. With no span
  to make (``propagation_only=True`` or no SDK), or one the sampler is known to drop (a child
  of an unsampled span under ``ParentBased``), and metrics off, it only writes the headers.
* ``poll()`` returns a record with its ``process {topic}`` scope open: the handler after it
  runs in the producer's trace and transaction. The scope is held until the next ``poll()``,
  ``consume()`` or ``close()`` on that consumer in the same thread, a ``commit()`` or
  ``store_offsets()`` (the settle points), or :func:`close_scope`
  (``hold_consume_scope=False`` turns holding off; see ``docs/kafka.md``).
* ``consume()`` records one ``receive {topic}`` span linking to every record; handle each
  record inside :func:`processing` or iterate with :func:`iterate`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import confluent_kafka

from . import _client, _kafka
from ._kafka import close_scope
from .core import diagnostics, held
from .core import settings as _settings
from .core.hop import consume_scope
from .core.instrumentor import Contrib, take_over
from .core.settings import get_settings

__all__ = [
    "ConfluentKafkaInstrumentor",
    "Consumer",
    "Producer",
    "close_scope",
    "instrument",
    "instrumented",
    "iterate",
    "processing",
    "uninstrument",
    "wrap_consumer",
    "wrap_producer",
]

# The C types themselves: confluent_kafka.Producer may already name another tool's subclass.
_PlainProducer: Any = confluent_kafka.cimpl.Producer
_PlainConsumer: Any = confluent_kafka.cimpl.Consumer
#: Contrib's instrumentation of this client, which hoptrace takes over from.
_CONTRIB: Final = Contrib(
    "confluent-kafka", "opentelemetry.instrumentation.confluent_kafka",
    "ConfluentKafkaInstrumentor", "confluent_kafka",
    "opentelemetry-instrumentation-confluent-kafka",
)


# ----------------------------------------------------------------- records ---


def processing(message: Any, group: str | None = None) -> consume_scope:
    """Return the ``process {topic}`` scope of a consumed message (``with`` or ``async with``)."""
    ts_type, ts = message.timestamp()
    return _kafka.RecordScope(
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.headers(),
        ts if ts_type != _NO_TIMESTAMP else None,
        group,
    )


_NO_TIMESTAMP: Final = confluent_kafka.TIMESTAMP_NOT_AVAILABLE


def _scope_of(message: Any, group: str | None) -> consume_scope | None:
    if message.error() is not None:
        return None
    ts_type, ts = message.timestamp()  # as processing(message, group), one frame less
    return _kafka.RecordScope(
        message.topic(), message.partition(), message.offset(), message.key(),
        message.headers(), ts if ts_type != _NO_TIMESTAMP else None, group,
    )


def iterate(messages: Iterable[Any], group: str | None = None) -> Iterator[Any]:
    """Yield the messages of a ``consume()`` result, each inside its own process scope.

    Messages carrying an error are yielded without a scope.
    """
    return held.scoped(messages, functools.partial(_scope_of, group=group))


# ---------------------------------------------------------------- producer ---


def _delivered(scope: Any, callback: Callable[..., Any] | None, err: Any, msg: Any) -> None:
    try:
        if err is not None:
            _kafka.end_send(scope, None, None, confluent_kafka.KafkaException(err))
        else:
            _kafka.end_send(scope, msg.partition(), msg.offset(), None)
    except Exception as exc:
        diagnostics.internal_error("confluent_kafka.delivery", exc)
    if callback is not None:
        callback(err, msg)


def _produce(
    original: Callable[..., Any],
    default_callback: Callable[..., Any] | None,
    topic: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reports_success: bool = True,
) -> None:
    if len(args) > 3:  # on_delivery/timestamp/headers given by position: leave them alone
        original(topic, *args, **kwargs)
        return
    given = kwargs.get("timestamp", 0) != 0
    if _kafka._dropped_fast and not (_settings._current or get_settings()).propagation_only:
        # Spans on, and a send span the sampler drops (most sends at a low sampling rate):
        # its headers in one C call (hop.dropped_send), nothing attached, as produce() runs
        # no user code. (Propagation-only: headers_only's first answer, with no call here.)
        carrier = _kafka.dropped_headers(kwargs.get("headers"), given)
        if carrier is not None:
            kwargs["headers"] = carrier
            original(topic, *args, **kwargs)
            return
    only = _kafka.headers_only()
    if only is not False:
        # No span would record (none, or one the sampler drops), and the scope's context
        # would be detached before the call below anyway (see detach_for_ack): write just
        # the headers, as the scope would; the caller's callbacks go to the client as given.
        try:
            kwargs["headers"] = _kafka.send_headers(
                kwargs.get("headers"), given, None if only is True else only,
            )
        except TypeError:  # headers the client rejects: it raises its own error
            pass
        original(topic, *args, **kwargs)
        return
    key = kwargs.get("key", args[1] if len(args) > 1 else None)
    try:
        scope = _kafka.send_scope(topic, kwargs.get("headers"), key, given)
    except Exception as exc:
        if not isinstance(exc, TypeError):
            diagnostics.internal_error("confluent_kafka.produce", exc)
        original(topic, *args, **kwargs)
        return
    kwargs["headers"] = scope.carrier
    awaits = _kafka.awaits_ack(scope)
    if awaits:
        callback = kwargs.pop("on_delivery", None) or kwargs.pop("callback", None)
        kwargs["on_delivery"] = functools.partial(
            _delivered, scope, callback or default_callback
        )
    # Detach before producing: the delivery callback may run at once in another thread that
    # polls, and must then only end the span, never touch this thread's context.
    _kafka.detach_for_ack(scope)
    try:
        original(topic, *args, **kwargs)
    except BaseException as exc:
        scope.close(exc)
        raise
    if not reports_success or not awaits:
        # delivery.report.only.error: no report comes for a success, so end the span now;
        # a failure report later finds it closed and only runs the caller's callback.
        # Without a span nothing awaits the report (nor for a span that records nothing,
        # metrics off: see detach_for_ack): close now, so metrics count the send.
        scope.close()


def _reports_success(conf: Mapping[str, Any]) -> bool:
    value = conf.get("delivery.report.only.error", False)
    return str(value).strip().lower() not in ("true", "1")


class Producer(_PlainProducer):  # type: ignore[misc]
    """``confluent_kafka.Producer`` whose ``produce()`` is traced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = args[0] if args and isinstance(args[0], Mapping) else kwargs
        callback = conf.get("on_delivery")
        self._hoptrace_on_delivery = callback if callable(callback) else None
        self._hoptrace_reports_success = _reports_success(conf)

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Produce a message inside a ``send {topic}`` span ended by its delivery report."""
        _produce(
            super().produce,
            self._hoptrace_on_delivery,
            topic,
            args,
            kwargs,
            self._hoptrace_reports_success,
        )


class _ProducerProxy:
    """A traced view of an existing producer; every other attribute is the producer's."""

    def __init__(
        self, producer: Any, on_delivery: Callable[..., Any] | None, reports_success: bool
    ) -> None:
        self._producer = producer
        self._on_delivery = on_delivery
        self._reports_success = reports_success

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __len__(self) -> int:
        return len(self._producer)

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Produce a message inside a ``send {topic}`` span ended by its delivery report."""
        _produce(
            self._producer.produce, self._on_delivery, topic, args, kwargs, self._reports_success
        )


def wrap_producer(
    producer: Any,
    on_delivery: Callable[..., Any] | None = None,
    *,
    reports_success: bool = True,
) -> Any:
    """Return a traced proxy for an existing producer.

    hoptrace ends the send span in a per-message delivery callback, which librdkafka calls
    instead of the producer-level ``on_delivery``; pass that callback here so it still runs.
    Pass ``reports_success=False`` for a producer configured with
    ``delivery.report.only.error=true``, so send spans end when ``produce()`` returns.
    """
    return _ProducerProxy(producer, on_delivery, reports_success)


# ---------------------------------------------------------------- consumer ---


def _poll(
    original: Callable[..., Any], owner: Any, group: str | None, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    held.release(owner)
    message = original(*args, **kwargs)
    if message is not None:
        try:  # _kafka.hold_record, inline: once per message
            held.hold(owner, _scope_of(message, group))
        except Exception as exc:
            diagnostics.internal_error("kafka.consume", exc)
    return message


def _consume(
    original: Callable[..., Any], owner: Any, group: str | None, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    held.release(owner)
    start = _kafka.now_ns()
    messages = original(*args, **kwargs)
    if messages:
        try:
            _kafka.receive_spans(
                (
                    _kafka.BatchEntry(m.topic(), m.partition(), m.offset(), m.headers())
                    for m in messages
                    if m.error() is None
                ),
                group,
                start,
            )
        except Exception as exc:
            diagnostics.internal_error("confluent_kafka.consume", exc)
    return messages


def _group_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    conf = args[0] if args and isinstance(args[0], Mapping) else kwargs
    group = conf.get("group.id")
    return group if isinstance(group, str) else None


class _Consuming:
    """The traced consumer methods, over ``_target()`` (the C consumer) and ``_owner``."""

    _hoptrace_group: str | None

    def _target(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _owner(self) -> Any:
        return self

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        """Return the next message with its process scope held until the next poll."""
        return _poll(self._target().poll, self._owner(), self._hoptrace_group, args, kwargs)

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        """Return a batch of messages and record a ``receive`` span linking to each one."""
        return _consume(
            self._target().consume, self._owner(), self._hoptrace_group, args, kwargs
        )

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        """Commit, then close the scope held for the last message (its settle point)."""
        try:
            return self._target().commit(*args, **kwargs)
        finally:
            held.settle(self._owner())

    def store_offsets(self, *args: Any, **kwargs: Any) -> Any:
        """Store offsets, then close the scope held for the last message (its settle point)."""
        try:
            return self._target().store_offsets(*args, **kwargs)
        finally:
            held.settle(self._owner())

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close this thread's held scope and end any other thread's held span (a shutdown
        from another thread), then close the consumer."""
        held.release_all(self._owner())
        return self._target().close(*args, **kwargs)


class Consumer(_Consuming, _PlainConsumer):  # type: ignore[misc]
    """``confluent_kafka.Consumer`` whose ``poll()`` holds the message's process scope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hoptrace_group = _group_of(args, kwargs)

    def _target(self) -> Any:
        return super(_Consuming, self)


class _ConsumerProxy(_Consuming, _kafka.Proxy):
    """A traced view of an existing consumer; every other attribute is the consumer's."""

    def __init__(self, consumer: Any, group: str | None) -> None:
        super().__init__(consumer)
        self._hoptrace_group = group

    def _target(self) -> Any:
        return self._client

    def _owner(self) -> Any:
        return self._client


def wrap_consumer(consumer: Any, group_id: str | None = None) -> Any:
    """Return a traced proxy for an existing consumer (``group_id`` names its group on spans)."""
    return _ConsumerProxy(consumer, group_id)


# ---------------------------------------------------------------- patching ---

_lock = threading.Lock()

def instrument() -> None:
    """Make ``confluent_kafka.Producer``/``Consumer`` the traced subclasses (idempotent).

    Only clients created after this call are traced.
    """
    take_over(_CONTRIB, instrumented)
    with _lock:
        setattr(confluent_kafka, "Producer", Producer)  # noqa: B010
        setattr(confluent_kafka, "Consumer", Consumer)  # noqa: B010


def uninstrument() -> None:
    """Put confluent-kafka's own ``Producer``/``Consumer`` back (idempotent).

    A name that another tool has since pointed at its own class is left as it is.
    """
    with _lock:
        if confluent_kafka.Producer is Producer:
            setattr(confluent_kafka, "Producer", _PlainProducer)  # noqa: B010
        if confluent_kafka.Consumer is Consumer:
            setattr(confluent_kafka, "Consumer", _PlainConsumer)  # noqa: B010


def instrumented() -> bool:
    """Return whether :func:`instrument` is in force."""
    return confluent_kafka.Producer is Producer


class ConfluentKafkaInstrumentor(_client.Instrumentor):
    """hoptrace's confluent-kafka instrumentation, for ``opentelemetry-instrument``."""

    dependencies = ("confluent-kafka >= 2.3, < 3",)
