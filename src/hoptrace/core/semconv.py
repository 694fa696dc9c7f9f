"""Every span name and attribute hoptrace writes, in one place (OTel messaging semconv 1.27+)."""

from __future__ import annotations

from typing import Final

SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.27.0"

# Header names (W3C Trace Context and Baggage).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
BAGGAGE: Final = "baggage"

# Operation types and names.
OP_SEND: Final = "send"
OP_RECEIVE: Final = "receive"
OP_PROCESS: Final = "process"
OP_SETTLE: Final = "settle"

# Messaging attributes.
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_CONVERSATION_ID: Final = "messaging.message.conversation_id"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_RETRY_COUNT: Final = "messaging.message.retry.count"
MESSAGING_BODY_SIZE: Final = "messaging.message.body.size"

# Kafka.
KAFKA_PARTITION: Final = "messaging.destination.partition.id"
KAFKA_OFFSET: Final = "messaging.kafka.offset"
KAFKA_MESSAGE_KEY: Final = "messaging.kafka.message.key"

# RabbitMQ.
RABBITMQ_ROUTING_KEY: Final = "messaging.rabbitmq.destination.routing_key"
RABBITMQ_DELIVERY_TAG: Final = "messaging.rabbitmq.message.delivery_tag"

# Celery.
CELERY_TASK_NAME: Final = "celery.task.name"
CELERY_TASK_STATE: Final = "celery.task.state"

# Systems (values of messaging.system).
SYSTEM_KAFKA: Final = "kafka"
SYSTEM_RABBITMQ: Final = "rabbitmq"
SYSTEM_REDIS: Final = "redis"
SYSTEM_CELERY: Final = "celery"

# hoptrace's own attributes.
TRANSACTION_ID: Final = "hoptrace.transaction.id"
#: The transaction ID an untrusted sender claimed (validated), kept for correlation only.
TRANSACTION_UPSTREAM_ID: Final = "hoptrace.transaction.upstream_id"
QUEUE_WAIT_MS: Final = "hoptrace.queue_wait_ms"
CLOCK_SKEW: Final = "hoptrace.clock_skew"
CONTEXT_REJECTED: Final = "hoptrace.context.rejected"
LINK_REASON: Final = "hoptrace.link.reason"

# HTTP server spans made by the ASGI / WSGI edge middlewares (OTel HTTP semconv).
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"

# The destination of a publish to RabbitMQ's nameless exchange with no routing key.
RABBITMQ_DEFAULT_EXCHANGE: Final = "amq.default"


def send_span_name(destination: str) -> str:
    """Return the PRODUCER span name for ``destination``."""
    return f"send {destination}"


def process_span_name(destination: str) -> str:
    """Return the CONSUMER span name for ``destination``."""
    return f"process {destination}"


def receive_span_name(destination: str) -> str:
    """Return the batch-receive CLIENT span name for ``destination``."""
    return f"receive {destination}"


def rabbitmq_destination(exchange: str | None, routing_key: str, queue: str | None = None) -> str:
    """Return ``{exchange}:{routing_key}`` (send) or ``{exchange}:{routing_key}:{queue}``.

    As the RabbitMQ conventions say: an empty part is left out (the default exchange, an
    empty routing key), a queue named as its routing key is written once, and ``amq.default``
    stands only for a publish to the default exchange with no routing key. A publish to queue
    ``orders`` through the default exchange is ``orders`` on both sides.
    """
    name = routing_key if not exchange else f"{exchange}:{routing_key}" if routing_key else exchange
    if queue and queue != routing_key:
        name = f"{name}:{queue}" if name else queue
    return name or RABBITMQ_DEFAULT_EXCHANGE
