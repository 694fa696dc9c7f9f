"""Log records and structlog events carry the transaction ID, trace ID and hop details."""

from __future__ import annotations

import io
import json
import logging
import warnings
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


def capture(
    fmt: logging.Formatter, flt: logging.Filter | None = None
) -> tuple[logging.Logger, io.StringIO]:
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
    logger, stream = capture(
        logging.Formatter(
            "%(transaction_id)s %(messaging_system)s %(messaging_destination)s "
            "%(messaging_message_id)s %(message)s"
        )
    )
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
    logger, stream = capture(
        logging.Formatter("%(transaction_id)s|%(span_id)s"), logs.TransactionFilter()
    )
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


# -- extra= with hoptrace's own field names ----------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Whatever a test does to the factory chain, the next test starts from the stdlib's own.
    factory = logging.getLogRecordFactory()
    make_record = logging.Logger.__dict__["makeRecord"]
    yield
    logs.uninstall()
    logging.setLogRecordFactory(factory)
    logging.Logger.makeRecord = make_record  # type: ignore[method-assign]
    logs._factory_chain.hook = None
    logs._make_record_chain.hook = None


ALL_FIELDS = " ".join(f"%({name})s" for name in logs.FIELDS)


@pytest.mark.parametrize("field", logs.FIELDS)
def test_extra_with_a_field_name_wins_over_ours(installed: None, spans: Any, field: str) -> None:
    logger, stream = capture(logging.Formatter(ALL_FIELDS + " %(custom)s %(message)s"))
    with hoptrace.transaction() as tx:
        logger.warning("mine", extra={field: "user-value", "custom": 7})
        trace_id = hoptrace.current_trace_id()
    values = dict(zip(logs.FIELDS, stream.getvalue().split()[:6], strict=True))
    assert values[field] == "user-value"
    expected_ours = {"transaction_id": tx.transaction_id, "trace_id": trace_id}
    for name, value in expected_ours.items():
        if name != field:
            assert values[name] == value
    assert stream.getvalue().split()[6:] == ["7", "mine"]


def test_extra_with_every_field_name_at_once(installed: None, spans: Any) -> None:
    logger, stream = capture(logging.Formatter(ALL_FIELDS))
    mine = {name: f"my-{name}" for name in logs.FIELDS}
    with hoptrace.transaction():
        logger.info("x", extra=mine)
    assert stream.getvalue().split() == list(mine.values())


def test_other_extra_keys_behave_as_in_the_stdlib(installed: None) -> None:
    logger, _ = capture(logging.Formatter("%(message)s"))
    for key in ("message", "asctime", "lineno"):
        with pytest.raises(KeyError, match=f"Attempt to overwrite '{key}'"):
            logger.info("x", extra={key: 1, "trace_id": "t"})


def test_extra_through_a_logger_adapter(installed: None, spans: Any) -> None:
    logger, stream = capture(logging.Formatter("%(transaction_id)s %(trace_id)s"))
    adapter = logging.LoggerAdapter(logger, {"trace_id": "from-adapter"})
    with hoptrace.transaction() as tx:
        adapter.info("x")
    assert stream.getvalue().split() == [tx.transaction_id, "from-adapter"]


def test_logger_class_that_overrides_make_record(installed: None, spans: Any) -> None:
    class TaggingLogger(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = super().makeRecord(*args, **kwargs)
            record.tag = "tagged"
            return record

    logger = TaggingLogger("test.tagging")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(tag)s %(transaction_id)s %(span_id)s"))
    logger.addHandler(handler)
    with hoptrace.transaction() as tx:
        logger.warning("x", extra={"span_id": "mine"})
    assert stream.getvalue().split() == ["tagged", tx.transaction_id, "mine"]


def test_filter_keeps_the_callers_extra(spans: Any) -> None:
    logger, stream = capture(
        logging.Formatter("%(transaction_id)s %(trace_id)s"), logs.TransactionFilter()
    )
    with hoptrace.transaction() as tx:
        logger.info("x", extra={"trace_id": "mine"})
    assert stream.getvalue().split() == [tx.transaction_id, "mine"]


# -- chaining with other record factories and makeRecord wrappers ------------------------------


def user_factory(previous: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.user_field = "u"
        return record

    return factory


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {k: record.__dict__.get(k, "<absent>") for k in ("user_field", "transaction_id")}


def test_factory_installed_before_ours_is_called_and_restored(spans: Any) -> None:
    original = logging.getLogRecordFactory()
    theirs = user_factory(original)
    logging.setLogRecordFactory(theirs)
    logs.install()
    with hoptrace.transaction() as tx:
        record = logging.getLogger("test.chain").makeRecord("n", 20, "f", 1, "m", (), None)
    assert fields_of(record) == {"user_field": "u", "transaction_id": tx.transaction_id}
    logs.uninstall()
    assert logging.getLogRecordFactory() is theirs
    logging.setLogRecordFactory(original)


def test_factory_installed_after_ours_survives_uninstall_and_reinstall(spans: Any) -> None:
    original = logging.getLogRecordFactory()
    logs.install()
    ours = logging.getLogRecordFactory()
    theirs = user_factory(ours)
    logging.setLogRecordFactory(theirs)
    logger, stream = capture(logging.Formatter("%(user_field)s %(message)s"))

    with hoptrace.transaction() as tx:
        record = logging.makeLogRecord({})
        assert fields_of(record) == {"user_field": "u", "transaction_id": tx.transaction_id}

        logs.uninstall()  # ours is not on top: it stays in the chain, inert
        assert logging.getLogRecordFactory() is theirs
        record = logging.makeLogRecord({})
        assert fields_of(record) == {"user_field": "u", "transaction_id": "<absent>"}
        logger.info("still works", extra={"transaction_id": "x"})

        logs.install()  # re-enables the same factory, stacks no second one
        assert logging.getLogRecordFactory() is theirs
        record = logging.makeLogRecord({})
        assert fields_of(record) == {"user_field": "u", "transaction_id": tx.transaction_id}

    assert stream.getvalue() == "u still works\n"
    logging.setLogRecordFactory(ours)  # they uninstall, restoring what they found
    logs.uninstall()  # now ours is on top: taken out
    assert logging.getLogRecordFactory() is original


def test_reinstall_after_ours_was_dropped_from_the_chain(spans: Any) -> None:
    original = logging.getLogRecordFactory()
    logs.install()
    ours = logging.getLogRecordFactory()
    logging.setLogRecordFactory(user_factory(ours))
    logs.uninstall()
    logging.setLogRecordFactory(original)  # someone resets the factory outright
    logs.install()
    assert logging.getLogRecordFactory() is ours
    with hoptrace.transaction() as tx:
        assert logging.makeLogRecord({}).__dict__["transaction_id"] == tx.transaction_id


def test_make_record_wrapped_after_ours(spans: Any) -> None:
    original = logging.Logger.__dict__["makeRecord"]
    logs.install()
    ours = logging.Logger.__dict__["makeRecord"]

    def theirs(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = ours(self, *args, **kwargs)
        record.wrapped = True
        return record

    logging.Logger.makeRecord = theirs  # type: ignore[method-assign]
    logger, stream = capture(logging.Formatter("%(wrapped)s %(transaction_id)s %(trace_id)s"))
    with hoptrace.transaction() as tx:
        logger.info("x", extra={"trace_id": "mine"})
        logs.uninstall()  # inert: no fields from us, and extra= is the stdlib's again
        assert logging.Logger.__dict__["makeRecord"] is theirs
        logger.info("x", extra={"transaction_id": "t", "trace_id": "mine"})
        logs.install()
        assert logging.Logger.__dict__["makeRecord"] is theirs
        logger.info("x", extra={"trace_id": "again"})
    assert stream.getvalue().splitlines() == [
        f"True {tx.transaction_id} mine",
        "True t mine",
        f"True {tx.transaction_id} again",
    ]
    logging.Logger.makeRecord = ours  # type: ignore[method-assign]
    logs.uninstall()
    assert logging.Logger.__dict__["makeRecord"] is original


def test_uninstall_restores_make_record() -> None:
    original = logging.Logger.__dict__["makeRecord"]
    logs.install()
    assert logging.Logger.__dict__["makeRecord"] is not original
    logs.uninstall()
    assert logging.Logger.__dict__["makeRecord"] is original


# -- loguru ------------------------------------------------------------------------------------


def test_loguru_patcher(spans: Any) -> None:
    loguru = pytest.importorskip("loguru")
    lines: list[str] = []
    extras: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        lines.append(str(message))
        extras.append(dict(message.record["extra"]))

    log = loguru.logger.patch(logs.loguru_patcher)
    sink_id = loguru.logger.add(
        sink,
        format="{extra[transaction_id]} {extra[trace_id]} {message}",
        filter=lambda r: "transaction_id" in r["extra"],
        colorize=False,
    )
    all_id = loguru.logger.add(lambda m: extras.append(dict(m.record["extra"])), format="{message}")
    try:
        with hoptrace.transaction() as tx:
            log.info("inside")
            trace_id = hoptrace.current_trace_id()
            log.bind(transaction_id="bound").info("bound wins")
        log.info("outside")
    finally:
        loguru.logger.remove(sink_id)
        loguru.logger.remove(all_id)
    assert lines == [f"{tx.transaction_id} {trace_id} inside\n", f"bound {trace_id} bound wins\n"]
    assert "transaction_id" not in extras[-1] and "messaging_system" not in extras[-1]


def test_loguru_patcher_never_raises() -> None:
    logs.loguru_patcher({})  # type: ignore[typeddict-item]
    logs.loguru_patcher(None)  # type: ignore[arg-type]


# -- the OpenTelemetry SDK's LoggingHandler ----------------------------------------------------


@pytest.fixture
def otel_logs() -> Iterator[tuple[logging.Logger, Any]]:
    sdk_logs = pytest.importorskip("opentelemetry.sdk._logs")
    export = pytest.importorskip("opentelemetry.sdk._logs.export")
    # Newer SDKs name it InMemoryLogRecordExporter and deprecate InMemoryLogExporter.
    exporter_class = (
        getattr(export, "InMemoryLogRecordExporter", None) or export.InMemoryLogExporter
    )
    exporter = exporter_class()
    provider = sdk_logs.LoggerProvider()
    provider.add_log_record_processor(export.SimpleLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in favour of contrib's
        handler = sdk_logs.LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("test.otel")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, exporter
    finally:
        provider.shutdown()


def test_otel_logging_handler_exports_the_ids(
    installed: None, spans: Any, otel_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger, exporter = otel_logs
    with caplog.at_level(logging.WARNING):
        with hoptrace.transaction() as tx:
            logger.info("inside")
            trace_id = hoptrace.current_trace_id()
        logger.info("outside")
    inside, outside = (getattr(r, "log_record", r) for r in exporter.get_finished_logs())
    assert inside.attributes["transaction_id"] == tx.transaction_id
    assert inside.attributes["trace_id"] == trace_id
    assert f"{inside.trace_id:032x}" == trace_id
    assert outside.attributes.get("transaction_id") is None
    assert [r.getMessage() for r in caplog.records if "Invalid type" in r.getMessage()] == []


def test_otel_sdk_none_attribute_warning_is_dropped_for_our_fields_only() -> None:
    # What OpenTelemetry SDKs before 1.33 log for a None log attribute (then drop it).
    logs.install()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    otel = logging.getLogger("opentelemetry.attributes")
    keep = Keep()
    otel.addHandler(keep)
    try:
        template = "Invalid type %s for attribute '%s' value. Expected one of %s or a sequence of those types"
        for key in (*logs.FIELDS, "user_key"):
            otel.warning(template, "NoneType", key, ["bool", "str"])
        otel.warning(template, "dict", "transaction_id", ["bool", "str"])
    finally:
        otel.removeHandler(keep)
    assert seen == [
        template % ("NoneType", "user_key", ["bool", "str"]),
        template % ("dict", "transaction_id", ["bool", "str"]),
    ]
