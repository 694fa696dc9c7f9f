"""The HTML report in real headless Chromium: it loads offline, draws one bar per span, and
shows a span's details on click. A screenshot is saved with the test's files.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/chromium`` installs them).
With CI=true a missing browser fails the test; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import hoptrace
from hoptrace.cli import main
from hoptrace.cli.spanfile import read_spans
from hoptrace.export import JsonLinesSpanExporter

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture
def browser(tmp_path) -> Iterator[object]:
    chromium = _binary("chromium", "chromium-browser")
    driver_path = _binary("chromedriver", "/usr/lib/chromium/chromedriver")
    if chromium is None or driver_path is None:
        message = "chromium / chromedriver not installed (run scripts/chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def as_service(path: Path, name: str) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield provider
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


def record_checkout(path: Path) -> str:
    """HTTP edge → celery task → orders consumer that fails; returns the transaction ID."""
    with as_service(path, "web"), hoptrace.transaction("POST /checkout") as tx:
        with hoptrace.produce_scope({}, "celery", "celery") as send:
            task_headers = send.carrier
    with as_service(path, "worker"), hoptrace.consume_scope(task_headers, "celery", "celery"):
        with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
            order_headers = send.carrier
    with as_service(path, "billing"), contextlib.suppress(RuntimeError):
        with hoptrace.consume_scope(order_headers, "orders", "rabbitmq"):
            raise RuntimeError("card declined")
    return tx.transaction_id


def test_html_report_renders_one_bar_per_span_and_shows_details(browser, tmp_path, record_property):
    from selenium.webdriver.common.by import By

    spans_path = tmp_path / "spans.jsonl"
    tx = record_checkout(spans_path)
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["view", str(spans_path), "--html", str(html)])
    assert result.exit_code == 0, result.output
    spans = read_spans(spans_path)

    browser.get(html.as_uri())
    assert browser.title.startswith("hoptrace")
    bars = browser.find_elements(By.CSS_SELECTOR, "rect.span-bar")
    assert sorted(b.get_attribute("data-span-id") for b in bars) == sorted(s.span_id for s in spans)
    assert all(b.rect["width"] > 0 and b.rect["height"] > 0 for b in bars)
    assert len(browser.find_elements(By.CSS_SELECTOR, "rect.wait-bar")) == 2  # two consumer hops
    failed = [s for s in spans if s.is_error]
    error_bars = browser.find_elements(By.CSS_SELECTOR, "rect.span-bar.error")
    assert [b.get_attribute("data-span-id") for b in error_bars] == [s.span_id for s in failed]
    # Nothing was fetched: the page is self-contained.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    waterfall = tmp_path / "report.png"
    assert browser.save_screenshot(str(waterfall))
    assert waterfall.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    process = next(s for s in spans if s.name == "process orders")
    browser.find_element(By.CSS_SELECTOR, f'rect.span-bar[data-span-id="{process.span_id}"]').click()
    panel = browser.find_element(By.ID, "details")
    assert panel.is_displayed()
    assert "process orders" in panel.text and tx in panel.text and "card declined" in panel.text

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    details = tmp_path / "report-details.png"
    assert browser.save_screenshot(str(details))
    record_property("screenshots", f"{waterfall} {details}")
    artifacts = os.environ.get("HOPTRACE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(waterfall, Path(artifacts) / "html_report.png")
        shutil.copy(details, Path(artifacts) / "html_report_details.png")
