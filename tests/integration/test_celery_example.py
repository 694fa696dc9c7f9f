"""``examples/celery_app.py`` runs against the local brokers and reports one trace and one
transaction per workflow (chain, chord, retry), with the span trees it printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "celery_app.py"


def test_celery_example_runs(amqp_url: str, redis_url: str) -> None:
    pytest.importorskip("celery")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True, text=True, timeout=120,
        env={"HOPTRACE_AMQP_URL": amqp_url, "HOPTRACE_REDIS_URL": redis_url,
             "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^chain: 3 task runs, trace [0-9a-f]{32}, one transaction: OK$", out, re.M)
    assert re.search(r"^chord: 4 task runs, trace [0-9a-f]{32}, one transaction: OK$", out, re.M)
    assert re.search(r"^retry: 3 task runs, trace [0-9a-f]{32}, one transaction: OK$", out, re.M)
    # The third attempt links to the second, and hangs off the original send span.
    second = re.search(r"process example\.flaky \[worker ([0-9a-f]{16})\] retry=1 links->", out)
    assert second is not None
    assert f"retry=2 links->{second.group(1)}" in out
    transactions = re.findall(r"transaction ([0-9a-f]{32})$", out, re.M)
    assert len(set(transactions)) == 3
