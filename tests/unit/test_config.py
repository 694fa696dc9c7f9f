"""configure() validation and HOPTRACE_* environment variables."""

from __future__ import annotations

import pytest

import hoptrace
from hoptrace import _config


def test_defaults() -> None:
    s = hoptrace.get_settings()
    assert s.transaction_header == "x-transaction-id"
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


def test_invalid_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPTRACE_ENABLED", "maybe")
    with pytest.raises(hoptrace.ConfigurationError, match="HOPTRACE_ENABLED"):
        _config.reset()
    monkeypatch.delenv("HOPTRACE_ENABLED")


def test_renamed_header_is_used_on_both_sides() -> None:
    hoptrace.configure(transaction_header="x-request-id")
    with hoptrace.transaction(transaction_id="r-1"):
        headers = hoptrace.inject({})
    assert headers["x-request-id"] == "r-1" and "x-transaction-id" not in headers
    assert hoptrace.current_transaction_id(hoptrace.extract({"x-request-id": "r-2"})) == "r-2"
