"""The brokerless examples run and print what the README says they print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quickstart_logs_one_transaction_id_on_both_sides() -> None:
    stdout = run("quickstart.py")
    ids = re.findall(r"tx=([0-9a-f]{32}) trace=([0-9a-f]{32})", stdout)
    assert len(ids) == 3  # one producer line, two consumer lines
    assert len(set(ids)) == 1
    assert f"one transaction ID across the hop: {ids[0][0]} (ok)" in stdout


def test_json_logging_example_emits_ids_on_every_line() -> None:
    records = [json.loads(line) for line in run("json_logging.py").splitlines()]
    assert len(records) == 3
    assert {r["transaction_id"] for r in records} == {"order-1001"}
    assert len({r["trace_id"] for r in records}) == 1
    assert records[1]["messaging_destination"] == "payments"
    assert records[2]["messaging_message_id"] == "msg-7"


def test_existing_otel_setup_example_keeps_the_transaction_everywhere() -> None:
    stdout = run("existing_otel_setup.py")
    assert "the handler's transaction ID: " in stdout and "(ok)" in stdout
    assert "LOST" not in stdout
    assert "x-b3-traceid" in stdout and "the consumer's trace and transaction: ok" in stdout
    assert "x-transaction-id: True" in stdout
