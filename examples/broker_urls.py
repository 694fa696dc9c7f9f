"""Where the examples find their brokers: one set of environment variables, shared with the tests.

    HOPTRACE_AMQP_URL         RabbitMQ, default amqp://guest:guest@127.0.0.1:5672/%2F
    HOPTRACE_KAFKA_BOOTSTRAP  Kafka bootstrap servers, default 127.0.0.1:9092
    HOPTRACE_REDIS_URL        Redis, default redis://127.0.0.1:6379/0

The defaults are what ``scripts/brokers up`` runs. The AMQP URL names the default vhost ``/`` as
``/%2F``, the spelling every client here reads as ``/`` (pika, aio-pika, kombu, Celery,
FastStream). Celery's and kombu's documentation write it ``//``, which pika reads as the empty
vhost (``NOT_ALLOWED - vhost not found``): :func:`amqp_url` rewrites ``//`` to ``/%2F``, so
either spelling works.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

AMQP_URL_ENV = "HOPTRACE_AMQP_URL"
KAFKA_BOOTSTRAP_ENV = "HOPTRACE_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "HOPTRACE_REDIS_URL"

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def normalize_amqp_url(url: str) -> str:
    """``amqp://host//`` (kombu's spelling of vhost ``/``) -> ``amqp://host/%2F``; else ``url``."""
    parts = urlsplit(url)
    if parts.path == "//":
        return parts._replace(path="/%2F").geturl()
    return url


def amqp_url() -> str:
    """``$HOPTRACE_AMQP_URL`` (or the local default), in a form every AMQP client accepts."""
    return normalize_amqp_url(os.environ.get(AMQP_URL_ENV, "").strip() or DEFAULT_AMQP_URL)


def kafka_bootstrap() -> str:
    """``$HOPTRACE_KAFKA_BOOTSTRAP`` (or the local default): ``host:port[,host:port...]``."""
    return os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip() or DEFAULT_KAFKA_BOOTSTRAP


def redis_url() -> str:
    """``$HOPTRACE_REDIS_URL`` (or the local default)."""
    return os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_REDIS_URL
