"""Broker fixtures: environment URLs, then testcontainers, then the local brokers.

With CI=true a broker that cannot be found fails the test; elsewhere it skips, and the run's
summary says how many tests were skipped and why.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import brokers


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A RabbitMQ URL (amqp://…)."""
    return brokers.require("amqp").url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL (redis://…)."""
    return brokers.require("redis").url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """A Kafka bootstrap address (host:port)."""
    return brokers.require("kafka").url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: Counter[str] = Counter()
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    terminalreporter.section("hoptrace: skipped tests")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d} skipped: {reason}")
