"""kombu: ``send`` spans on ``Producer.publish``, ``process`` scopes around consumer callbacks.

::

    hoptrace.kombu.instrument()

* ``Producer.publish`` opens ``send {exchange}:{routing_key}`` and publishes a copy of the
  ``headers`` it was given, with the context added (the caller's dict is never changed).
* Every message a ``Consumer`` receives — its ``callbacks``, its ``on_message`` handler, and so
  every ``ConsumerMixin`` — runs inside ``process {exchange}:{routing_key}:{queue}`` with the
  message's context, transaction ID and baggage attached.

``messaging.system`` follows the transport: ``rabbitmq`` for amqp, ``redis`` for redis, the
transport's driver name otherwise.

Celery publishes and consumes through kombu and is traced by ``hoptrace.celery``. So that a
task message never gets two spans, this module leaves alone every message whose headers carry
Celery's ``task`` header (task protocol 2, Celery's default since 4.0), and every publish whose
headers were already written by the span active at that moment (someone traced it already).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from . import _amqp, _client
from .core import diagnostics, semconv
from .core.patching import Patcher

__all__ = ["CELERY_TASK_HEADER", "instrument", "is_instrumented", "uninstrument"]

#: Messages whose headers hold this key belong to Celery and are skipped here.
CELERY_TASK_HEADER: Final = "task"

_patcher: Final = Patcher("hoptrace.kombu")
_SYSTEMS: Final = {"amqp": semconv.SYSTEM_RABBITMQ, "redis": semconv.SYSTEM_REDIS}
_PUBLISH_DEFAULTS: Final = (
    "routing_key", "delivery_mode", "mandatory", "immediate", "priority", "content_type",
    "content_encoding", "serializer", "headers", "compression", "exchange", "retry",
    "retry_policy", "declare", "expiration", "timeout", "confirm_timeout",
)


def _system(channel: Any) -> str:
    """Return ``messaging.system`` for the transport ``channel`` belongs to."""
    try:
        driver = channel.connection.client.transport.driver_type
    except Exception:
        return semconv.SYSTEM_RABBITMQ
    return _SYSTEMS.get(driver, driver if type(driver) is str else semconv.SYSTEM_RABBITMQ)


def _is_celery(headers: object) -> bool:
    if headers is None:  # (the common cases first: no ABC check for them)
        return False
    if type(headers) is dict:
        return CELERY_TASK_HEADER in headers
    return isinstance(headers, Mapping) and CELERY_TASK_HEADER in headers


def _exchange_name(exchange: Any) -> str | None:
    name = getattr(exchange, "name", exchange)
    return name if type(name) is str and name else None


def _wrap_publish(original: Callable[..., Any]) -> Callable[..., Any]:
    def publish(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        if args:
            # Positional arguments past the body: name them as Producer.publish does.
            kwargs = {**dict(zip(_PUBLISH_DEFAULTS, args, strict=False)), **kwargs}
            args = ()
        headers = kwargs.get("headers")
        if headers is not None and _is_celery(headers):
            return original(self, body, **kwargs)
        routing_key = kwargs.get("routing_key")
        if routing_key is None:
            routing_key = getattr(self, "routing_key", None)
        channel = self.channel  # (first, as below: a channel promise resolves out of context)
        begun = _amqp.begin_unrecorded(
            headers, routing_key, kwargs.get("message_id"), "kombu.publish")
        if begun is not None:  # no span, no metric: _amqp.publish's steps, no closure
            carrier, attached, guard = begun
            if carrier is not None:
                kwargs["headers"] = carrier
            try:
                result = original(self, body, **kwargs)
            except BaseException as exc:
                _amqp._finish(attached, guard, exc)
                raise
            _amqp._finish(attached, guard)
            return result

        def send(carrier: Any) -> Any:
            if carrier is not None:
                kwargs["headers"] = carrier
            return original(self, body, **kwargs)

        return _amqp.publish(
            send, headers, _system(channel),
            exchange=_exchange_name(kwargs.get("exchange") or getattr(self, "exchange", None)),
            routing_key=routing_key, message_id=kwargs.get("message_id"),
            correlation_id=kwargs.get("correlation_id"), label="kombu.publish",
        )

    return publish


def _queue_name(consumer: Any, delivery_info: Mapping[str, Any]) -> str | None:
    """Return the name of the queue a message came from, when the consumer can tell."""
    tags = getattr(consumer, "_active_tags", None) or {}
    tag = delivery_info.get("consumer_tag")
    if tag is not None:
        for queue, active in tags.items():
            if active == tag:
                return str(queue)
    queues: Any = getattr(consumer, "queues", None) or ()
    if len(queues) == 1:
        return str(queues[0].name)
    return None


def _wrap_receive(original: Callable[..., Any]) -> Callable[..., Any]:
    def _receive_callback(self: Any, message: Any) -> Any:
        scope = None
        try:
            headers = getattr(message, "headers", None)
            if not _is_celery(headers):
                info = getattr(message, "delivery_info", None) or {}
                properties = getattr(message, "properties", None) or {}
                scope = _amqp.open_delivery_fields(
                    headers,
                    _system(self.channel),
                    info.get("exchange"),
                    info.get("routing_key"),
                    _queue_name(self, info),
                    properties.get("message_id"),
                    info.get("delivery_tag"),
                    properties.get("correlation_id"),
                    properties.get("timestamp"),
                    # py-amqp always sets the flag; kombu's virtual transports (Redis, SQS …)
                    # set it only on a message they restore, so a missing flag is a first try.
                    info.get("redelivered", False),
                )
        except Exception as exc:
            diagnostics.internal_error("kombu.receive", exc)
        return _amqp.run_in(scope, original, self, message)

    return _receive_callback


def instrument() -> None:
    """Trace ``Producer.publish`` and every ``Consumer`` (callbacks, on_message, ConsumerMixin)."""
    from kombu.messaging import Consumer, Producer

    _patcher.wrap(Producer, "publish", _wrap_publish)
    _patcher.wrap(Consumer, "_receive_callback", _wrap_receive)


uninstrument, is_instrumented = _client.switches(_patcher, "kombu")


class KombuInstrumentor(_client.Instrumentor):
    """hoptrace's kombu instrumentation, for ``opentelemetry-instrument`` (entry point)."""

    dependencies = ("kombu >= 5.3, < 6",)
