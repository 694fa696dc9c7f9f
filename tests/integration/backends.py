"""Where the integration tests find a real tracing backend (Jaeger).

A plain helper module, like ``brokers.py``: :func:`jaeger_query_url` returns the query URL
of a Jaeger that answers, skips the test when none does, and fails it when ``CI`` is
``true``/``1``. ``scripts/brokers up`` runs one (``scripts/brokers up jaeger``).

The query URL comes from ``HOPTRACE_JAEGER_URL``, else ``http://127.0.0.1:16686`` (the port
from ``HOPTRACE_JAEGER_QUERY_PORT`` when set, as ``scripts/brokers`` reads it). Its OTLP/HTTP
receiver comes from ``HOPTRACE_JAEGER_OTLP_URL``, else the same host on port 4318 (or
``HOPTRACE_JAEGER_OTLP_HTTP_PORT``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

JAEGER_URL_ENV = "HOPTRACE_JAEGER_URL"
JAEGER_OTLP_ENV = "HOPTRACE_JAEGER_OTLP_URL"


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def _skip_or_fail(reason: str) -> NoReturn:
    if is_ci():
        pytest.fail(f"{reason} [CI is set, so this fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def default_jaeger_url() -> str:
    """The query URL the tests use when ``HOPTRACE_JAEGER_URL`` is not set."""
    port = os.environ.get("HOPTRACE_JAEGER_QUERY_PORT", "").strip() or "16686"
    return f"http://127.0.0.1:{port}"


def _configured_url() -> str:
    url = os.environ.get(JAEGER_URL_ENV, "").strip() or default_jaeger_url()
    return (url if "://" in url else f"http://{url}").rstrip("/")


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def jaeger_answers(url: str) -> bool:
    """Whether ``url`` is a Jaeger query service answering api/v3."""
    try:
        status, body = _get(f"{url}/api/v3/services")
        return status == 200 and isinstance(json.loads(body), dict)
    except (OSError, ValueError):
        return False


def jaeger_query_url() -> str:
    """The query URL of a Jaeger that answers; skip (fail under CI) when none does."""
    url = _configured_url()
    if not jaeger_answers(url):
        _skip_or_fail(
            f"Jaeger not answering at {url}/api/v3/services "
            f"(set {JAEGER_URL_ENV} or run scripts/brokers up jaeger)"
        )
    return url


def jaeger_otlp_url(query_url: str | None = None) -> str:
    """Base URL of the OTLP/HTTP receiver of that Jaeger (append ``/v1/traces``)."""
    explicit = os.environ.get(JAEGER_OTLP_ENV, "").strip()
    if explicit:
        return explicit.rstrip("/")
    host = urlsplit(query_url or _configured_url()).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    port = os.environ.get("HOPTRACE_JAEGER_OTLP_HTTP_PORT", "").strip() or "4318"
    return f"http://{host}:{port}"


def count_spans(document: Any) -> int:
    """Spans in an api/v3 answer ({"result": OTLP JSON}, possibly several chunks)."""
    chunks = document if isinstance(document, list) else [document]
    total = 0
    for chunk in chunks:
        result = chunk.get("result", chunk)
        for resource_spans in result.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                total += len(scope_spans.get("spans", []))
    return total


def wait_for_trace(query_url: str, trace_id: str, spans: int, timeout: float = 30.0) -> Any:
    """Poll ``/api/v3/traces/{trace_id}`` until it holds at least ``spans`` spans.

    Returns the decoded answer; fails the test (with what Jaeger last said) on time-out.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        status, body = _get(f"{query_url}/api/v3/traces/{trace_id}", timeout=5.0)
        if status == 200:
            decoder = json.JSONDecoder()
            text, index, chunks = body.decode(), 0, []
            while index < len(text.rstrip()):
                chunk, index = decoder.raw_decode(text, index)
                chunks.append(chunk)
                while index < len(text) and text[index].isspace():
                    index += 1
            last = chunks
            if count_spans(chunks) >= spans:
                return chunks[0] if len(chunks) == 1 else chunks
        else:
            last = (status, body[:200])
        if time.monotonic() >= deadline:
            pytest.fail(
                f"Jaeger at {query_url} did not hold {spans} spans of trace {trace_id} "
                f"within {timeout:g}s; last answer: {str(last)[:300]}",
                pytrace=False,
            )
        time.sleep(0.2)
