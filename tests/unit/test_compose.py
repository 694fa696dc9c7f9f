"""docker-compose.yml publishes the brokers on the ports the integration tests expect."""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
BROKERS_FILE = ROOT / "tests" / "integration" / "brokers.py"
KAFKA_POM = ROOT / "scripts" / "kafka" / "pom.xml"
BROKERS_SCRIPT = ROOT / "scripts" / "brokers"

# compose service -> key in brokers.DEFAULTS
SERVICE_FOR_KIND = {"amqp": "rabbitmq", "redis": "redis", "kafka": "kafka"}


def _load_brokers_module() -> ModuleType:
    """Import tests/integration/brokers.py by path (tests/ is not a package)."""
    name = "_hoptrace_test_brokers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BROKERS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def brokers() -> ModuleType:
    return _load_brokers_module()


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    services: dict[str, Any] = data["services"]
    return services


def _port_of(url: str) -> int:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.port is not None, f"no port in {url!r}"
    return parts.port


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Map published host port -> container port, for short and long port syntax."""
    result: dict[int, int] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published, target = entry.get("published"), entry["target"]
            if published is None:
                continue
            result[int(str(published))] = int(target)
            continue
        spec = str(entry).split("/", 1)[0]  # drop "/tcp"
        pieces = spec.rsplit(":", 2)  # [host_ip:]published:target, or target alone
        if len(pieces) == 1:
            continue  # container port only: published on a random host port
        result[int(pieces[-2])] = int(pieces[-1])
    return result


def test_defaults_cover_every_broker(brokers: ModuleType) -> None:
    assert set(brokers.DEFAULTS) == set(SERVICE_FOR_KIND)
    assert brokers.ENV_VARS == {
        "amqp": "HOPTRACE_AMQP_URL",
        "redis": "HOPTRACE_REDIS_URL",
        "kafka": "HOPTRACE_KAFKA_BOOTSTRAP",
    }


@pytest.mark.parametrize("kind", sorted(SERVICE_FOR_KIND))
def test_broker_port_matches_test_default(
    kind: str, brokers: ModuleType, services: dict[str, Any]
) -> None:
    port = _port_of(brokers.DEFAULTS[kind])
    service = services[SERVICE_FOR_KIND[kind]]
    ports = published_ports(service)
    assert port in ports, f"{SERVICE_FOR_KIND[kind]} does not publish {port}: {ports}"
    assert ports[port] == port, f"{SERVICE_FOR_KIND[kind]} maps {port} to {ports[port]}"


def test_rabbitmq_has_management_ui(services: dict[str, Any]) -> None:
    assert "management" in services["rabbitmq"]["image"]
    assert 15672 in published_ports(services["rabbitmq"])


def test_kafka_is_single_node_kraft_advertised_on_default_port(
    brokers: ModuleType, services: dict[str, Any]
) -> None:
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    port = _port_of(brokers.DEFAULTS["kafka"])
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://localhost:{port}"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_kafka_image_matches_scripts_brokers_version(services: dict[str, Any]) -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(KAFKA_POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    assert version, "kafka.version missing from scripts/kafka/pom.xml"
    image = services["kafka"]["image"]
    assert image.startswith("apache/kafka:")
    assert image.split(":", 1)[1] == version


def test_jaeger_exposes_otlp_and_ui(services: dict[str, Any]) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:")  # v2: OTLP on by default
    ports = published_ports(jaeger)
    for port in (4317, 4318, 16686):
        assert ports.get(port) == port, f"jaeger does not publish {port}: {ports}"


def _script_setting(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", BROKERS_SCRIPT.read_text(encoding="utf-8"), re.M)
    assert match, f"{name} missing from scripts/brokers"
    return match.group(1)


def test_jaeger_image_is_the_release_scripts_brokers_builds(services: dict[str, Any]) -> None:
    # Jaeger tags each release twice (v1.76.0 / v2.13.0): the script builds the Go module
    # version and names its v2 twin, which is the image tag.
    v1, v2 = _script_setting("JAEGER_VERSION"), _script_setting("JAEGER_V2_VERSION")
    assert re.fullmatch(r"v1\.\d+\.\d+", v1) and re.fullmatch(r"v2\.\d+\.\d+", v2)
    # the twins move together: v1.(63 + n) is v2.n, from v1.63.0 / v2.0.0 on
    assert int(v1.split(".")[1]) - 63 == int(v2.split(".")[1])
    assert services["jaeger"]["image"] == f"jaegertracing/jaeger:{v2.removeprefix('v')}"
