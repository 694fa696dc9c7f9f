"""Where the integration tests find real brokers.

A plain helper module (no fixtures): ``tests/integration/conftest.py`` wires
fixtures on top of it. For each kind of broker (``"amqp"``, ``"redis"``,
``"kafka"``) :func:`locate` looks, in order, at

1. the environment: ``HOPTRACE_AMQP_URL``, ``HOPTRACE_REDIS_URL``,
   ``HOPTRACE_KAFKA_BOOTSTRAP`` (the variables the examples read too; an AMQP URL's ``//``
   default vhost is rewritten to ``/%2F``, which pika needs and every other client accepts);
2. testcontainers, when the ``testcontainers`` package is installed and a
   Docker engine answers (one container per kind per process, stopped at
   exit; set ``HOPTRACE_TEST_TESTCONTAINERS=0`` to never use Docker);
3. local brokers on the default ports (what ``scripts/brokers up`` runs), if a
   TCP connect succeeds.

:func:`require` turns "not found" into a pytest skip, or into a failure when
``CI`` is ``true``/``1``. :func:`restart` restarts a broker that
``scripts/brokers`` runs, for fault-injection tests.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

import pytest

Kind = Literal["amqp", "redis", "kafka"]
Source = Literal["env", "testcontainers", "local"]

DEFAULTS: dict[str, str] = {
    "amqp": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "redis": "redis://127.0.0.1:6379/0",
    "kafka": "127.0.0.1:9092",
}

AMQP_URL_ENV = "HOPTRACE_AMQP_URL"
REDIS_URL_ENV = "HOPTRACE_REDIS_URL"
KAFKA_BOOTSTRAP_ENV = "HOPTRACE_KAFKA_BOOTSTRAP"
ENV_VARS: dict[str, str] = {
    "amqp": AMQP_URL_ENV,
    "redis": REDIS_URL_ENV,
    "kafka": KAFKA_BOOTSTRAP_ENV,
}
TESTCONTAINERS_ENV = "HOPTRACE_TEST_TESTCONTAINERS"
"""Set to ``0`` to skip the Docker/testcontainers step even if Docker answers."""

DEFAULT_PORTS: dict[str, int] = {
    kind: urlsplit(url if "://" in url else f"tcp://{url}").port or 0
    for kind, url in DEFAULTS.items()
}
"""Port used when a URL names none: the port of the default URL."""
_NAMES: dict[str, str] = {"amqp": "RabbitMQ", "redis": "Redis", "kafka": "Kafka"}
_SCRIPT_NAMES: dict[str, str] = {"amqp": "rabbitmq", "redis": "redis", "kafka": "kafka"}
_ALIASES: dict[str, str] = {"rabbitmq": "amqp", "rabbit": "amqp"}

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKERS_SCRIPT = REPO_ROOT / "scripts" / "brokers"


@dataclass(frozen=True)
class BrokerLocation:
    """A reachable broker: ``url`` is an AMQP/Redis URL or a Kafka bootstrap list."""

    kind: str
    url: str
    source: Source

    @property
    def host(self) -> str:
        return host_port(self.kind, self.url)[0]

    @property
    def port(self) -> int:
        return host_port(self.kind, self.url)[1]


_CONNECT_TIMEOUT = 0.5
_lock = threading.Lock()
_containers: dict[str, tuple[Any, BrokerLocation]] = {}
_docker_ok: bool | None = None
_atexit_registered = False


def pika_url(url: str) -> str:
    """Kombu/Celery write the default vhost as ``amqp://...//``; pika reads that as
    vhost ``""`` (-> ``NOT_ALLOWED - vhost not found``) and needs ``/%2F``, which kombu, Celery,
    aio-pika and FastStream read as ``/`` too. (``examples/broker_urls.py`` does the same.)"""
    parts = urlsplit(url)
    if parts.path == "//":
        return parts._replace(path="/%2F").geturl()
    return url


def normalize_kind(kind: str) -> str:
    """``"amqp"``/``"rabbitmq"`` -> ``"amqp"``; ``"redis"``; ``"kafka"``."""
    k = _ALIASES.get(kind.lower(), kind.lower())
    if k not in DEFAULTS:
        raise ValueError(f"unknown broker kind {kind!r} (expected one of {sorted(DEFAULTS)})")
    return k


def host_port(kind: str, url: str) -> tuple[str, int]:
    """First ``(host, port)`` of a broker URL or of a Kafka bootstrap list."""
    k = normalize_kind(kind)
    first = url.split(",")[0].strip()
    if "://" not in first:
        first = "tcp://" + first
    parts = urlsplit(first)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[k]


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def _skip_or_fail(reason: str) -> NoReturn:
    if is_ci():
        pytest.fail(f"{reason} [CI is set, so this fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def _tcp_ok(host: str, port: int, timeout: float = _CONNECT_TIMEOUT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -------------------------------------------------------------- docker ---


def _testcontainers_enabled() -> bool:
    return os.environ.get(TESTCONTAINERS_ENV, "").strip().lower() not in {"0", "false", "no"}


def docker_available() -> bool:
    """Does a Docker engine answer? (cached; False if the SDK is missing)."""
    global _docker_ok
    if _docker_ok is None:
        try:
            docker = importlib.import_module("docker")
            client = docker.from_env(timeout=3)
            try:
                _docker_ok = bool(client.ping())
            finally:
                client.close()
        except Exception:
            _docker_ok = False
    return _docker_ok


def _import_container_class(kind: str) -> Any:
    """testcontainers >= 4.14 has ``testcontainers.community.*``; older, ``testcontainers.*``."""
    module, cls = {
        "amqp": ("rabbitmq", "RabbitMqContainer"),
        "redis": ("redis", "RedisContainer"),
        "kafka": ("kafka", "KafkaContainer"),
    }[kind]
    last: Exception | None = None
    for prefix in ("testcontainers.community", "testcontainers"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), cls)
        except (ImportError, AttributeError) as exc:
            last = exc
    raise ImportError(f"testcontainers has no {cls}") from last


def _start_container(kind: str) -> tuple[Any, BrokerLocation]:
    cls = _import_container_class(kind)
    if kind == "amqp":
        container = cls(image=os.environ.get("HOPTRACE_TEST_RABBITMQ_IMAGE", "rabbitmq:4"))
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        url = f"amqp://{container.username}:{container.password}@{host}:{port}/%2F"
    elif kind == "redis":
        container = cls(image=os.environ.get("HOPTRACE_TEST_REDIS_IMAGE", "redis:7"))
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        url = f"redis://{host}:{port}/0"
    else:
        image = os.environ.get("HOPTRACE_TEST_KAFKA_IMAGE")
        container = cls(image=image) if image else cls()
        container = container.with_kraft()
        container.start()
        url = container.get_bootstrap_server()
    return container, BrokerLocation(kind=kind, url=url, source="testcontainers")


def _stop_containers() -> None:
    with _lock:
        items = list(_containers.values())
        _containers.clear()
    for container, _ in items:
        with contextlib.suppress(Exception):
            container.stop()


def _from_testcontainers(kind: str) -> BrokerLocation | None:
    global _atexit_registered
    if not _testcontainers_enabled() or not docker_available():
        return None
    with _lock:
        if kind in _containers:
            return _containers[kind][1]
        try:
            container, location = _start_container(kind)
        except Exception:
            return None
        _containers[kind] = (container, location)
        if not _atexit_registered:
            atexit.register(_stop_containers)
            _atexit_registered = True
        return location


# ------------------------------------------------------------- public ---


def locate(kind: str) -> BrokerLocation | None:
    """Find a broker of ``kind``: env var, then testcontainers, then a local one."""
    k = normalize_kind(kind)
    env_url = os.environ.get(ENV_VARS[k], "").strip()
    if env_url:
        return BrokerLocation(kind=k, url=pika_url(env_url) if k == "amqp" else env_url,
                              source="env")
    location = _from_testcontainers(k)
    if location is not None:
        return location
    host, port = host_port(k, DEFAULTS[k])
    url = DEFAULTS[k]
    kafka_port = os.environ.get("HOPTRACE_KAFKA_PORT", "").strip()
    if k == "kafka" and kafka_port.isdigit():  # the port scripts/brokers runs Kafka on
        port = int(kafka_port)
        url = f"{host}:{port}"
    if _tcp_ok(host, port):
        return BrokerLocation(kind=k, url=url, source="local")
    return None


def require(kind: str) -> BrokerLocation:
    """Like :func:`locate`, but skips the test (fails it under CI) when nothing is found."""
    k = normalize_kind(kind)
    location = locate(k)
    if location is None:
        host, port = host_port(k, DEFAULTS[k])
        _skip_or_fail(
            f"{_NAMES[k]} not reachable at {host}:{port} "
            f"(set {ENV_VARS[k]} or run scripts/brokers up)"
        )
    return location


def _run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BROKERS_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _local_only(location: BrokerLocation, action: str) -> None:
    if location.source != "local":
        _skip_or_fail(
            f"cannot {action} {_NAMES[location.kind]} from {location.source} "
            f"({location.url}): only brokers run by scripts/brokers can be {action}ed"
        )


def _control(kind: str, command: str) -> BrokerLocation:
    k = normalize_kind(kind)
    location = require(k)
    # HOPTRACE_KAFKA_BOOTSTRAP naming 127.0.0.1:$HOPTRACE_KAFKA_PORT is scripts/brokers'
    # own Kafka on that port (the script agrees), not an external one.
    own_kafka = (
        k == "kafka"
        and location.source == "env"
        and location.host in {"127.0.0.1", "localhost"}
        and os.environ.get("HOPTRACE_KAFKA_PORT", "").strip() == str(location.port)
    )
    if not own_kafka:
        _local_only(location, command)
    proc = _run_script(command, _SCRIPT_NAMES[k])
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 3:
        # scripts/brokers: "not started by this script" / "external": nothing was touched
        _skip_or_fail(f"scripts/brokers {command} {_SCRIPT_NAMES[k]} refused: {output}")
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/brokers {command} {_SCRIPT_NAMES[k]} exited {proc.returncode}:\n{output}",
            pytrace=False,
        )
    return location


def restart(kind: str) -> BrokerLocation:
    """Restart a local broker (stop, start, wait until ready) via ``scripts/brokers``.

    Only brokers that ``scripts/brokers`` started can be restarted; for an
    env/testcontainers/foreign broker the test is skipped (failed under CI).
    """
    return _control(kind, "restart")


def stop(kind: str) -> BrokerLocation:
    """Stop a local broker run by ``scripts/brokers`` (pair with :func:`start`)."""
    return _control(kind, "down")


def start(kind: str) -> BrokerLocation:
    """Start a local broker again after :func:`stop` and wait until it is ready."""
    k = normalize_kind(kind)
    proc = _run_script("up", _SCRIPT_NAMES[k])
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        pytest.fail(f"scripts/brokers up {_SCRIPT_NAMES[k]} exited {proc.returncode}:\n{output}")
    return require(k)


def delete_kafka_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete ``topics`` (best effort) and empty the list; tests call it at teardown."""
    if not topics:
        return
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(topics))
        except Exception:
            pass
        finally:
            await admin.close()

    asyncio.run(delete())
    topics.clear()
