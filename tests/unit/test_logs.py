"""Log records and structlog events carry the transaction ID, trace ID and hop details."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import hoptrace
from hoptrace import logs


@pytest.fixture
def installed() -> Iterator[None]:
    logs.install()
    try:
        yield
    finally:
        logs.uninstall()


def capture(fmt: logging.Formatter, flt: logging.Filter | None = None) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    if flt is not None:
        handler.addFilter(flt)
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_factory_adds_ids_to_every_record(installed: None, spans: Any) -> None:
    logger, stream = capture(logging.Formatter("%(transaction_id)s %(trace_id)s %(message)s"))
    with hoptrace.transaction() as tx:
        logger.info("at the edge")
        trace_id = hoptrace.current_trace_id()
    logger.info("outside")
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"{tx.transaction_id} {trace_id} at the edge"
    assert lines[1] == "None None outside"


def test_consume_scope_adds_hop_fields(installed: None, spans: Any) -> None:
    logger, stream = capture(logging.Formatter(
        "%(transaction_id)s %(messaging_system)s %(messaging_destination)s "
        "%(messaging_message_id)s %(message)s"
    ))
    with hoptrace.transaction() as tx:
        headers = hoptrace.inject({})
    with hoptrace.consume_scope(headers, "orders", "rabbitmq", message_id="m-9"):
        logger.info("handled")
    assert stream.getvalue().strip() == f"{tx.transaction_id} rabbitmq orders m-9 handled"


def test_install_is_idempotent_and_uninstall_restores() -> None:
    original = logging.getLogRecordFactory()
    logs.install()
    installed = logging.getLogRecordFactory()
    logs.install()
    assert logging.getLogRecordFactory() is installed
    logs.uninstall()
    assert logging.getLogRecordFactory() is original


def test_filter_works_without_the_factory(spans: Any) -> None:
    logger, stream = capture(logging.Formatter("%(transaction_id)s|%(span_id)s"), logs.TransactionFilter())
    with hoptrace.transaction() as tx:
        logger.info("x")
        span_id = hoptrace.current_span_id()
    assert stream.getvalue().strip() == f"{tx.transaction_id}|{span_id}"


def test_json_formatter(installed: None, spans: Any) -> None:
    logger, stream = capture(logs.JsonFormatter())
    with hoptrace.transaction() as tx:
        logger.info("paid %s", "42")
    record = json.loads(stream.getvalue())
    assert record["message"] == "paid 42"
    assert record["transaction_id"] == tx.transaction_id
    assert len(record["trace_id"]) == 32


def test_structlog_processor(spans: Any) -> None:
    structlog = pytest.importorskip("structlog")
    output: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: dict[str, Any]) -> str:
        output.append(dict(event))
        return ""

    log = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()), processors=[logs.structlog_processor, keep]
    )
    with hoptrace.transaction() as tx:
        log.info("inside")
    log.info("outside")
    assert output[0]["transaction_id"] == tx.transaction_id
    assert "trace_id" in output[0] and "transaction_id" not in output[1]


def test_forged_transaction_id_never_reaches_a_log_line(installed: None, spans: Any) -> None:
    logger, stream = capture(logging.Formatter("%(transaction_id)s %(message)s"))
    forged = {"x-transaction-id": "abc\n2026-01-01 INFO admin logged in"}
    with hoptrace.consume_scope(forged, "q", "rabbitmq"):
        logger.info("handled")
    assert len(stream.getvalue().splitlines()) == 1
    assert "admin" not in stream.getvalue()
