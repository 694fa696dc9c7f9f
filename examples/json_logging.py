"""JSON log lines that carry the transaction ID, trace ID and hop details, with stdlib logging
and with structlog. Needs no broker: ``python examples/json_logging.py``.
"""

from __future__ import annotations

import logging
import sys

import structlog

import hoptrace
from hoptrace import logs


def setup_stdlib() -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.TransactionFilter())  # or logs.install() for every record
    logger = logging.getLogger("payments")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def setup_structlog() -> structlog.stdlib.BoundLogger:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            logs.structlog_processor,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    return structlog.get_logger("payments")  # type: ignore[no-any-return]


def main() -> None:
    log = setup_stdlib()
    slog = setup_structlog()
    with hoptrace.transaction("checkout", transaction_id="order-1001"):
        log.info("publishing payment request")
        headers = hoptrace.inject({})
    # ... the headers cross a queue ...
    with hoptrace.consume_scope(headers, "payments", "rabbitmq", message_id="msg-7"):
        log.info("payment captured")
        slog.info("payment captured", amount=42)


if __name__ == "__main__":
    main()
