"""A scope that closes over a dropped span skips ``end_span`` and gives what it gives.

With a sampler that drops most spans (``ParentBased(TraceIdRatioBased(r))``), most scopes
close over the API's own ``NonRecordingSpan``, whose ``end`` does nothing. ``_Scope.close``
and ``_Scope._close`` then skip the ``end_span`` call when no error is to be recorded, the
span is of exactly that class, and the class's ``end`` is still the API's (``spans.NRS_END``).
Each case here closes the same kind of scope over the same kind of span twice, once with the
shortcut and once without it (``spans.NRS_END = None``), and compares everything the close
leaves behind: the calls the span saw, the spans exported, the diagnostics counts, the
context after close, what was raised.

The consume scope's ``open`` reads ``sdk_installed()``'s cached answer inline; the second part
compares its choice of path with ``sdk_installed()`` itself while the global provider changes
between opens, and checks that a carrier whose C read cannot get its spec goes to ``read()``
as the general path's does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanContext,
    TraceFlags,
)

import hoptrace
from hoptrace.core import hop, otel_shims, spans
from hoptrace.core.context import get_current

# ------------------------------------------------------------------ close ---


class Calls:
    """What the spans of one close saw, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []


class Sub(NonRecordingSpan):
    """A NonRecordingSpan subclass whose end and status calls are seen."""

    calls: Calls

    def end(self, end_time: int | None = None) -> None:
        self.calls.seen.append("sub.end")

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        self.calls.seen.append("sub.set_status")

    def is_recording(self) -> bool:
        self.calls.seen.append("sub.is_recording")
        return True


class RaisingEnd(NonRecordingSpan):
    def end(self, end_time: int | None = None) -> None:
        raise RuntimeError("end failed")


class RaisingRecording(NonRecordingSpan):
    def is_recording(self) -> bool:
        raise RuntimeError("is_recording failed")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


_SC = SpanContext(0xABC, 0xDEF, False, TraceFlags(0))


def _sdk_tracer(exporter: InMemorySpanExporter, sampler: Any = None) -> Any:
    provider = TracerProvider(**({"sampler": sampler} if sampler is not None else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


#: Span makers: (calls, exporter, monkeypatch) -> the span the scope closes over.
SPANS: dict[str, Callable[[Calls, InMemorySpanExporter, pytest.MonkeyPatch], Any]] = {
    "api dropped": lambda c, e, m: NonRecordingSpan(_SC),
    "api invalid": lambda c, e, m: NonRecordingSpan(INVALID_SPAN_CONTEXT),
    "sdk dropped": lambda c, e, m: _sdk_tracer(e, ALWAYS_OFF).start_span("dropped"),
    "sdk recording": lambda c, e, m: _sdk_tracer(e).start_span("recorded"),
    "subclass": lambda c, e, m: _sub(c),
    "end raises": lambda c, e, m: RaisingEnd(_SC),
    "is_recording raises": lambda c, e, m: RaisingRecording(_SC),
    "class end patched": lambda c, e, m: _patched_class_end(c, m),
    "class is_recording patched": lambda c, e, m: _patched_class_recording(c, m),
    "no span": lambda c, e, m: None,
}


def _sub(calls: Calls) -> Sub:
    span = Sub(_SC)
    span.calls = calls
    return span


def _patched_class_end(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> NonRecordingSpan:
    def end(self: Any, end_time: int | None = None) -> None:
        calls.seen.append("patched.end")

    monkeypatch.setattr(NonRecordingSpan, "end", end)
    return NonRecordingSpan(_SC)


def _patched_class_recording(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> NonRecordingSpan:
    def is_recording(self: Any) -> bool:
        calls.seen.append("patched.is_recording")
        return False

    monkeypatch.setattr(NonRecordingSpan, "is_recording", is_recording)
    return NonRecordingSpan(_SC)


ERRORS: dict[str, Callable[[], BaseException | None]] = {
    "none": lambda: None,
    "value error": lambda: ValueError("boom"),
    "bad str": lambda: BadStr(),
}


def _consume_close(span: Any, exc: BaseException | None) -> None:
    scope = hop.consume_scope({}, "orders", "kafka").open()
    scope.span = span
    scope.close(exc)


def _consume_close_elsewhere(span: Any, exc: BaseException | None) -> None:
    """close() of a scope whose context is no longer current (its _release path)."""
    scope = hop.consume_scope({}, "orders", "kafka").open()
    scope.span = span
    inner = hoptrace.transaction("inner").open()
    scope.close(exc)
    inner.close()


def _transaction_exit(span: Any, exc: BaseException | None) -> None:
    scope = hoptrace.transaction("job")
    scope.__enter__()
    scope.span = span
    scope.__exit__(type(exc) if exc is not None else None, exc, None)


def _produce_exit(span: Any, exc: BaseException | None) -> None:
    scope = hop.produce_scope({}, "orders", "kafka").open()
    scope.span = span
    scope.__exit__(type(exc) if exc is not None else None, exc, None)


CLOSES: dict[str, Callable[[Any, BaseException | None], None]] = {
    "consume close": _consume_close,
    "consume close elsewhere": _consume_close_elsewhere,
    "transaction exit": _transaction_exit,
    "produce exit": _produce_exit,
}


def _outcome(
    close: str, span_kind: str, error: str, shortcut: bool, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    hoptrace.configure(propagation_only=True)
    hoptrace.reset_diagnostics()
    calls, exporter = Calls(), InMemorySpanExporter()
    ended: list[str] = []
    real_end_span = hop.end_span  # type: ignore[attr-defined]
    target: list[Any] = []

    def end_span(span: Any, exc: BaseException | None, where: str) -> None:
        if target and span is target[0]:  # (not another scope's span)
            ended.append(where)
        real_end_span(span, exc, where)

    with monkeypatch.context() as patch:
        patch.setattr(hop, "end_span", end_span)
        if not shortcut:
            patch.setattr(spans, "NRS_END", None)
        span = SPANS[span_kind](calls, exporter, patch)
        target.append(span)
        before = get_current()
        raised = None
        try:
            CLOSES[close](span, ERRORS[error]())
        except BaseException as exc:  # never expected: compared all the same
            raised = repr(exc)
        after = get_current()
    return {
        "calls": calls.seen,
        "exported": [(s.name, s.status.status_code, len(s.events)) for s in
                     exporter.get_finished_spans()],
        "diagnostics": hoptrace.diagnostics(),
        "context restored": after is before,
        "raised": raised,
        "end_span called": ended,
    }


@pytest.mark.parametrize("close", list(CLOSES))
@pytest.mark.parametrize("span_kind", list(SPANS))
@pytest.mark.parametrize("error", list(ERRORS))
def test_the_shortcut_closes_as_end_span_does(
    close: str, span_kind: str, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _outcome(close, span_kind, error, True, monkeypatch)
    general = _outcome(close, span_kind, error, False, monkeypatch)
    skipped = fast.pop("end_span called")
    called = general.pop("end_span called")
    assert fast == general
    assert fast["raised"] is None and fast["context restored"]
    if span_kind == "no span":
        assert skipped == called == []
        return
    assert len(called) == 1  # without the shortcut, end_span ends every span
    # What ending these spans does, whichever way (not only the same both ways):
    ends = {"subclass": "sub.end", "class end patched": "patched.end"}
    if span_kind in ends:
        assert fast["calls"][-1:] == [ends[span_kind]]
    if span_kind == "sdk recording":
        assert [name for name, _, _ in fast["exported"]] == ["recorded"]
    if span_kind == "end raises":
        assert sum(n for event, n in fast["diagnostics"].items()
                   if event.startswith("internal_error.")) == 1
    # The shortcut skips exactly the API's own NonRecordingSpan closed without an error.
    exact = span_kind in ("api dropped", "api invalid", "sdk dropped",
                          "class is_recording patched")
    assert skipped == ([] if exact and error == "none" else called)


def test_the_shortcut_is_what_the_sampled_bench_closes() -> None:
    """The spans a dropped root, send or process scope holds are the API's NonRecordingSpan."""
    assert spans.NRS_END is NonRecordingSpan.__dict__["end"]


def _end_like(body: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(f"def end(self, end_time=None):\n{body}\n", namespace)
    return namespace["end"]


@pytest.mark.parametrize("method, empty", [
    (_end_like("    pass"), True),
    (_end_like("    return None"), True),
    (_end_like("    return 1"), False),
    (_end_like("    self.ended = True"), False),
    (_end_like("    print('ended')"), False),
    (_end_like("    '''A docstring first.'''"), False),  # (conservative: not recognised)
    (_end_like("    raise RuntimeError"), False),
    (print, False),
    (None, False),
    (lambda self, end_time=None: None, True),
])
def test_only_a_method_that_does_nothing_counts_as_empty(method: Any, empty: bool) -> None:
    assert spans._does_nothing(method) is empty


# ------------------------------------------------------------------- open ---

PROVIDERS: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "proxy": ProxyTracerProvider,
    "noop": NoOpTracerProvider,
    "sdk": TracerProvider,
}


@pytest.fixture
def restore_provider() -> Iterator[None]:
    previous = trace._TRACER_PROVIDER
    seen = list(otel_shims._provider_seen)
    yield
    trace._TRACER_PROVIDER = previous
    otel_shims._provider_seen[:] = seen


def _installed(provider: Any) -> bool:
    """sdk_installed()'s answer, from its definition (not its cache)."""
    return provider is not None and not isinstance(
        provider, (ProxyTracerProvider, NoOpTracerProvider))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("provider_global", [True, False])
def test_open_takes_the_path_sdk_installed_chooses(
    seed: int, provider_global: bool, monkeypatch: pytest.MonkeyPatch, restore_provider: None
) -> None:
    """Providers swapped between opens (and sdk_installed() asked or not in between): each
    open takes the unrecorded path exactly when no SDK provider is installed."""
    rng = random.Random(seed)
    taken: list[str] = []
    monkeypatch.setattr(hop, "PROVIDER_GLOBAL", provider_global)
    monkeypatch.setattr(hop.consume_scope, "_open_unrecorded",
                        lambda self, settings: taken.append("unrecorded"))
    monkeypatch.setattr(hop.consume_scope, "_open_dropped",
                        lambda self, settings: taken.append("dropped"))
    made = {name: make() for name, make in PROVIDERS.items()}
    made["sdk 2"] = TracerProvider()
    names = list(made)
    expected: list[str] = []
    for _ in range(40):
        provider = made[rng.choice(names)]
        trace._TRACER_PROVIDER = provider
        if rng.random() < 0.3:
            otel_shims.sdk_installed()  # the cache filled by someone else first
        if rng.random() < 0.2:
            hoptrace.configure(propagation_only=rng.random() < 0.5)
        settings = hoptrace.get_settings()
        expected.append("unrecorded" if settings.propagation_only or not _installed(provider)
                        else "dropped")
        hop.consume_scope({}, "orders", "kafka").open()
    assert taken == expected
    assert hoptrace.diagnostics() == {}


def test_a_swap_to_a_provider_never_seen_asks_sdk_installed(
    monkeypatch: pytest.MonkeyPatch, restore_provider: None
) -> None:
    asked: list[bool] = []
    real = hop.sdk_installed  # type: ignore[attr-defined]

    def sdk_installed() -> bool:
        asked.append(real())
        return asked[-1]

    monkeypatch.setattr(hop, "sdk_installed", sdk_installed)
    for provider in (TracerProvider(), NoOpTracerProvider()):
        trace._TRACER_PROVIDER = provider
        hop.consume_scope({}, "orders", "kafka").open().close()
        hop.consume_scope({}, "orders", "kafka").open().close()  # (the cached answer now)
    assert asked == [True, False]


# ------------------------------------------------------- open, failed read ---

_CARRIER = [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-00"),
            ("baggage", b"transaction.id=" + b"c" * 32)]


def test_a_spec_that_fails_falls_back_to_read_as_the_general_path_does(
    monkeypatch: pytest.MonkeyPatch, restore_provider: None
) -> None:
    """consume_scope._open_dropped reads the carrier in C with the settings' spec; when making
    the spec fails, it leaves the carrier to read() (which counts the failure), as the general
    path does, and never asks the C open with no spec."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from hoptrace.core import metrics, propagation

    if hop._open_dropped_c is None or propagation._read_incoming is None:
        pytest.skip("the C module is not in use")  # (no C read to fail: read() alone)
    trace._TRACER_PROVIDER = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(0.01)))

    def failing(names: Any, settings: Any) -> Any:
        raise RuntimeError("no spec")

    outcomes = []
    for fast in (True, False):
        hoptrace.reset_diagnostics()
        with monkeypatch.context() as patch:
            patch.setattr(propagation, "_incoming_spec", failing)
            patch.setattr(propagation._names, "settings", object())  # (the spec is made anew)
            patch.setattr(hop.consume_scope, "_dropped_fast", fast)
            metrics._instruments()  # (metrics known off, as the C open requires)
            propagation._through()  # (the W3C propagators known in force, as C reads require)
            assert metrics.provider_source._METER_PROVIDER is metrics.off_provider
            assert propagation._propagate_now._HTTP_TEXT_FORMAT is propagation._w3c_now
            before = get_current()
            scope = hop.consume_scope(list(_CARRIER), "orders", "kafka").open()
            inside = trace.get_current_span().get_span_context()
            outcomes.append((
                hoptrace.diagnostics(), scope.span is not None,
                inside.trace_id == int("a" * 32, 16), scope.transaction_id is not None,
            ))
            scope.close()
            assert get_current() is before
    assert outcomes[0] == outcomes[1]
    assert "internal_error.extract" in outcomes[0][0]
