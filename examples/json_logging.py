"""JSON log lines that carry the transaction ID, trace ID and hop details, with stdlib logging
and with structlog. Needs no broker: ``python examples/json_logging.py``.

structlog is your logging library, not a hoptrace dependency: without it installed, the example
prints the two stdlib lines and says so on stderr (``pip install structlog`` for the third).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

try:
    import structlog
except ModuleNotFoundError:  # optional: see the docstring
    structlog = None  # type: ignore[assignment]

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


def setup_structlog() -> Any:
    if structlog is None:
        print("json_logging.py: structlog is not installed; skipping its line", file=sys.stderr)
        return None
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
        if slog is not None:
            slog.info("payment captured", amount=42)


if __name__ == "__main__":
    main()
