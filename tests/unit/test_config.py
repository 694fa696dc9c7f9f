"""configure() validation and HOPTRACE_* environment variables."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

import hoptrace
from hoptrace.core import settings as _config


@pytest.fixture(autouse=True)
def _forget_env_warnings() -> Iterator[None]:
    # A bad variable is warned about once per process; each test starts with a clean slate.
    _config._warned.clear()
    yield
    _config._warned.clear()


def env_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hoptrace" and r.levelno == logging.WARNING and "HOPTRACE_" in r.getMessage()
    ]


def test_defaults() -> None:
    s = hoptrace.get_settings()
    # No transaction header is written; the conventional one is still read.
    assert s.transaction_header is None and s.written_transaction_header is None
    assert s.read_transaction_header == "x-transaction-id"
    assert s.baggage_mirror is True and s.baggage_key == "transaction.id"
    assert s.link_mode == "parent" and s.trust_incoming is True
    assert s.max_baggage_bytes == 8192 and s.max_baggage_members == 180
    assert s.enabled is True and s.propagation_only is False


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPTRACE_TRANSACTION_HEADER", "x-correlation-id")
    monkeypatch.setenv("HOPTRACE_LINK_MODE", "link")
    monkeypatch.setenv("HOPTRACE_TRUST_INCOMING", "false")
    monkeypatch.setenv("HOPTRACE_BAGGAGE_ALLOWLIST", "tenant, region")
    monkeypatch.setenv("HOPTRACE_PROPAGATION_ONLY", "1")
    s = _config.reset()
    assert s.transaction_header == "x-correlation-id"
    assert s.link_mode == "link" and s.trust_incoming is False and s.propagation_only
    assert s.baggage_allowlist == frozenset({"tenant", "region"})
    assert hoptrace.inject({})["x-correlation-id"]


def test_keyword_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPTRACE_LINK_MODE", "link")
    assert hoptrace.configure(link_mode="parent").link_mode == "parent"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"link_mode": "sideways"}, "link_mode"),
        ({"link_mode": "links"}, "link_mode"),
        ({"transaction_header": "bad header"}, "transaction_header"),
        ({"transaction_header": "traceparent"}, "W3C"),
        ({"max_baggage_bytes": 10**6}, "max_baggage_bytes"),
        ({"max_baggage_members": 0}, "max_baggage_members"),
        ({"enabled": "yes"}, "enabled"),
        ({"nonsense": 1}, "unknown setting"),
        ({"baggage_allowlist": "tenant"}, "baggage_allowlist"),
        ({"transaction_id_generator": lambda: "has space"}, "transaction_id_generator"),
    ],
)
def test_invalid_settings_are_clear_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(hoptrace.ConfigurationError, match=message):
        hoptrace.configure(**options)


def test_invalid_keyword_argument_still_raises_with_a_valid_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOPTRACE_LINK_MODE", "link")
    with pytest.raises(hoptrace.ConfigurationError, match="link_mode"):
        hoptrace.configure(link_mode="links")


@pytest.mark.parametrize(
    ("var", "raw", "field", "reason"),
    [
        ("HOPTRACE_ENABLED", "maybe", "enabled", "expected one of true/false"),
        ("HOPTRACE_LINK_MODE", "links", "link_mode", "must be 'parent' or 'link'"),
        ("HOPTRACE_MAX_BAGGAGE_BYTES", "lots", "max_baggage_bytes", "expected an integer"),
        ("HOPTRACE_MAX_BAGGAGE_BYTES", "0", "max_baggage_bytes", r"int in \[1, 8192\]"),
        ("HOPTRACE_MAX_BAGGAGE_MEMBERS", "1000", "max_baggage_members", r"int in \[1, 180\]"),
        ("HOPTRACE_TRANSACTION_HEADER", "bad header", "transaction_header", "header name"),
        ("HOPTRACE_SENT_TIME_HEADER", "traceparent", "sent_time_header", "W3C header"),
        ("HOPTRACE_BAGGAGE_KEY", "a key", "baggage_key", "W3C baggage key"),
        ("HOPTRACE_WARNING_INTERVAL", "-1", "warning_interval", ">= 0"),
        ("HOPTRACE_WARNING_INTERVAL", "nan", "warning_interval", ">= 0"),
    ],
)
def test_invalid_environment_variable_warns_and_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    var: str,
    raw: str,
    field: str,
    reason: str,
) -> None:
    monkeypatch.setenv(var, raw)
    monkeypatch.setenv("HOPTRACE_TRUST_INCOMING", "false")  # a valid neighbour still applies
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        s = _config.reset()
    assert getattr(s, field) == getattr(_config.Settings(), field)
    assert s.trust_incoming is False
    (message,) = env_warnings(caplog)
    assert f"{var}={raw!r}" in message
    assert field in message
    assert re.search(reason, message), message


def test_same_bad_value_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_LINK_MODE", "links")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        _config.reset()
        _config.reset()
        hoptrace.configure(trust_incoming=False)
        assert len(env_warnings(caplog)) == 1
        monkeypatch.setenv("HOPTRACE_LINK_MODE", "sideways")
        assert _config.reset().link_mode == "parent"
    messages = env_warnings(caplog)
    assert len(messages) == 2 and "'sideways'" in messages[1]


def test_configure_drops_a_bad_environment_variable_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_MAX_BAGGAGE_BYTES", "lots")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        s = hoptrace.configure(link_mode="link")
    assert s.link_mode == "link" and s.max_baggage_bytes == 8192
    assert "HOPTRACE_MAX_BAGGAGE_BYTES='lots'" in env_warnings(caplog)[0]


def test_a_keyword_argument_hides_a_bad_variable_for_the_same_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_LINK_MODE", "links")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        assert hoptrace.configure(link_mode="link").link_mode == "link"
    assert env_warnings(caplog) == []


def test_conflicting_header_variables_are_both_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_TRANSACTION_HEADER", "x-same")
    monkeypatch.setenv("HOPTRACE_SENT_TIME_HEADER", "X-Same")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        s = _config.reset()
    assert (s.transaction_header, s.sent_time_header) == (None, "x-hoptrace-sent-ns")
    messages = env_warnings(caplog)
    assert len(messages) == 2 and all("must differ" in m for m in messages)
    assert "HOPTRACE_TRANSACTION_HEADER" in messages[0]
    assert "HOPTRACE_SENT_TIME_HEADER" in messages[1]


def test_variable_clashing_with_a_default_is_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_TRANSACTION_HEADER", "x-hoptrace-sent-ns")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        assert _config.reset().transaction_header is None
    (message,) = env_warnings(caplog)
    assert "HOPTRACE_TRANSACTION_HEADER='x-hoptrace-sent-ns'" in message


def test_sent_time_header_may_not_take_the_header_read_for_the_id(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Unset, transaction_header still means "read x-transaction-id": the send time can't use it.
    with pytest.raises(hoptrace.ConfigurationError, match="read on every consume"):
        hoptrace.configure(sent_time_header="X-Transaction-ID")
    s = hoptrace.configure(transaction_header="x-mine", sent_time_header="x-transaction-id")
    assert (s.read_transaction_header, s.sent_time_header) == ("x-mine", "x-transaction-id")
    monkeypatch.setenv("HOPTRACE_SENT_TIME_HEADER", "x-transaction-id")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        assert _config.reset().sent_time_header == "x-hoptrace-sent-ns"
    (message,) = env_warnings(caplog)
    assert "HOPTRACE_SENT_TIME_HEADER='x-transaction-id'" in message
    assert "read on every consume" in message


def test_an_empty_transaction_header_variable_means_unset(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_TRANSACTION_HEADER", " ")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        assert _config.reset().transaction_header is None
    assert env_warnings(caplog) == []


def test_the_header_is_written_when_set_or_when_the_baggage_cannot_carry_the_id() -> None:
    s = hoptrace.configure(transaction_header="x-transaction-id")
    assert s.written_transaction_header == s.read_transaction_header == "x-transaction-id"
    s = hoptrace.configure(baggage_mirror=False)
    assert s.written_transaction_header == "x-transaction-id"
    s = hoptrace.configure(baggage_mirror=False, transaction_header="x-mine")
    assert s.written_transaction_header == s.read_transaction_header == "x-mine"


def test_variable_clashing_with_a_keyword_argument_is_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOPTRACE_SENT_TIME_HEADER", "x-mine")
    with caplog.at_level(logging.WARNING, logger="hoptrace"):
        s = hoptrace.configure(transaction_header="x-mine")
    assert (s.transaction_header, s.sent_time_header) == ("x-mine", "x-hoptrace-sent-ns")
    (message,) = env_warnings(caplog)
    assert "HOPTRACE_SENT_TIME_HEADER='x-mine'" in message


def test_a_clashing_keyword_argument_still_raises() -> None:
    with pytest.raises(hoptrace.ConfigurationError, match="must differ"):
        hoptrace.configure(transaction_header="x-hoptrace-sent-ns")


@pytest.mark.parametrize(
    ("var", "raw"), [("HOPTRACE_LINK_MODE", "links"), ("HOPTRACE_MAX_BAGGAGE_BYTES", "lots")]
)
def test_bad_variable_does_not_break_import(var: str, raw: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOPTRACE_")}
    env[var] = raw
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hoptrace; s = hoptrace.get_settings(); print(s.link_mode, s.max_baggage_bytes)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["parent", "8192"]
    assert f"{var}={raw!r}" in done.stderr
    assert done.stderr.count("HOPTRACE_") == 1  # one warning, one line


def test_renamed_header_is_used_on_both_sides() -> None:
    hoptrace.configure(transaction_header="x-request-id")
    with hoptrace.transaction(transaction_id="r-1"):
        headers = hoptrace.inject({})
    assert headers["x-request-id"] == "r-1" and "x-transaction-id" not in headers
    assert hoptrace.current_transaction_id(hoptrace.extract({"x-request-id": "r-2"})) == "r-2"


def test_the_old_import_path_is_the_settings_module_itself() -> None:
    # Settings live in the core; ``hoptrace._config`` stays importable as the same module,
    # so a setting made through either path is the one the engine reads.
    import importlib

    old = importlib.import_module("hoptrace._config")
    assert old is _config
    from hoptrace._config import configure, get_settings

    configure(link_mode="link")
    assert _config.get_settings().link_mode == "link"
    assert get_settings() is _config.get_settings() is hoptrace.get_settings()
    _config.reset()
