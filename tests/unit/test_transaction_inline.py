"""``transaction``'s one-frame open and close give exactly what the general steps give.

``transaction.open`` does ``_Scope.open``'s and the former ``_open``'s steps in one frame (the
settings read without a call, the default transaction ID drawn as ``random.randbytes`` draws
it, a propagation-only span minted as ``mint_span_context`` mints it), and ``__exit__`` does
``_Scope._close(exc, nested=True)`` and its ``restore`` inline. :class:`Reference` is the
transaction as it was before, through ``_Scope``'s own methods. Each case runs once through
each, from the same random seed, the same seeded ID generator on a fresh provider, the same
settings and ambient context, and everything observable must be equal: the transaction ID,
the context the block sees (every key, each span by class and span context), the IDs a log
line would carry, what stays current afterwards, the exception raised, hoptrace's
diagnostics, the exported spans (names, parents, attributes, status), the ID generator's
calls, and the random draws made (the next draw after the case).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags

import hoptrace
from hoptrace.core import diagnostics, spans
from hoptrace.core import transaction as tx_module
from hoptrace.core.context import TRANSACTION_KEY, bind_transaction
from hoptrace.core.hop import _Scope
from hoptrace.core.ids import generate_transaction_id, mint_span_context, validate_transaction_id
from hoptrace.core.otel_shims import (
    BAGGAGE_KEY,
    SPAN_KEY,
    attach,
    get_current,
    restore,
    sdk_installed,
)
from hoptrace.core.settings import ConfigurationError, get_settings, new_transaction_id
from hoptrace.core.spans import start_span_lazy
from hoptrace.core.transaction import transaction


class Reference(transaction):
    """The transaction before its one-frame open and close: ``_Scope``'s own steps."""

    __slots__ = ()

    def __init__(self, name: str | None = None, transaction_id: str | None = None, *,
                 attributes: dict[str, Any] | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise ConfigurationError(f"name must be a str or None, got {type(name).__name__}")
        if transaction_id is not None:
            validate_transaction_id(transaction_id)
        _Scope.__init__(self)
        self._name = name
        self._fixed_id = transaction_id
        self._attributes = attributes
        self.transaction_id = transaction_id

    def open(self) -> Reference:
        if self._token is not None:
            raise RuntimeError("already open")
        self._closed = False
        settings = get_settings()
        if settings.enabled:
            try:
                self._open(settings)
            except Exception as exc:
                diagnostics.internal_error(self._opening, exc)
        return self

    __enter__ = open
    __exit__ = _Scope.__exit__
    __aexit__ = _Scope.__aexit__

    def _open(self, settings: Any) -> None:
        tx = self._fixed_id
        if not tx:
            tx = (new_transaction_id() if settings.transaction_id_generator is new_transaction_id
                  else generate_transaction_id())
        self.transaction_id = tx
        parent = get_current()
        span = self.span = self._reference_span(parent, settings)
        entries = parent.get(BAGGAGE_KEY)
        if settings.baggage_mirror and not entries:
            values: dict[str, object] = {
                **parent, SPAN_KEY: span, TRANSACTION_KEY: tx,
                BAGGAGE_KEY: {settings.baggage_key: tx},
            }
        else:
            values = {**parent, SPAN_KEY: span}
            bind_transaction(values, tx, entries, settings)
        self._attach(Context(values))

    def _reference_span(self, parent: Context, settings: Any) -> Any:
        if not settings.propagation_only:
            span = spans.lazy_span(self._name or "transaction", parent, tx_module._INTERNAL,
                                   self._span_attributes)
            if span is not None:
                return span
            if sdk_installed():
                return start_span_lazy(self._name or "transaction", parent,
                                       tx_module._INTERNAL, self._span_attributes)
        active = parent.get(SPAN_KEY)
        if active is not None and active.get_span_context().is_valid:  # type: ignore[attr-defined]
            return NonRecordingSpan(mint_span_context(
                active.get_span_context().trace_id))  # type: ignore[attr-defined]
        return NonRecordingSpan(mint_span_context())


# Its diagnostics are counted under the transaction's own names.
Reference._where, Reference._opening = transaction._where, transaction._opening


#: The bad generator's first answer (configure() checks one) is valid, every later one not.
_BAD: list[str] = []


class SeededIds(IdGenerator):
    """Seeded IDs; records each question it is asked."""

    def __init__(self) -> None:
        self.rng = random.Random(7)
        self.asked: list[str] = []

    def generate_span_id(self) -> int:
        self.asked.append("span")
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        self.asked.append("trace")
        return self.rng.getrandbits(128) or 1


class MyRatio(TraceIdRatioBased):
    """A user's sampler subclass."""


PROVIDERS: dict[str, Callable[[], Any] | None] = {
    "no SDK": None,
    "ratio 1%": lambda: ParentBased(TraceIdRatioBased(0.01)),
    "ratio 50%": lambda: ParentBased(TraceIdRatioBased(0.5)),
    "always on": lambda: ParentBased(ALWAYS_ON),
    "always off": lambda: ALWAYS_OFF,
    "user's sampler": lambda: ParentBased(MyRatio(0.5)),
}

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "propagation only": {"propagation_only": True},
    "exact spans": {"fast_spans": False},
    "no mirror": {"baggage_mirror": False},
    "own generator": {"transaction_id_generator": lambda: f"gen-{random.getrandbits(20)}"},
    "bad generator": {"transaction_id_generator": lambda: _BAD.pop() if _BAD else "not valid!"},
    "disabled": {"enabled": False},
    "metrics on": {"enabled_metrics": frozenset({"hoptrace.pathway.duration"})},
}

SAMPLED = SpanContext(0x11112222333344445555666677778888, 0x1234, True, TraceFlags(1))
UNSAMPLED = SpanContext(0x9999AAAABBBBCCCCDDDDEEEEFFFF0000, 0x5678, True, TraceFlags(0))

AMBIENT: dict[str, Callable[[], Context]] = {
    "empty": Context,
    "sampled parent": lambda: Context({SPAN_KEY: NonRecordingSpan(SAMPLED)}),
    "unsampled parent": lambda: Context({SPAN_KEY: NonRecordingSpan(UNSAMPLED)}),
    "invalid span": lambda: Context({SPAN_KEY: INVALID_SPAN}),
    "baggage": lambda: otel_baggage.set_baggage("user", "ann"),
    "baggage with the key": lambda: otel_baggage.set_baggage("transaction.id", "older-1"),
    "a transaction already": lambda: Context({TRANSACTION_KEY: "outer-1", "k": 2}),
}


def _body_plain(scope_cls: type[transaction]) -> None:
    return None


def _body_raises(scope_cls: type[transaction]) -> None:
    raise ValueError("handler failed")


def _body_generator_exit(scope_cls: type[transaction]) -> None:
    raise GeneratorExit


def _body_nested(scope_cls: type[transaction]) -> None:
    with scope_cls("inner"):
        _SEEN.append(_observe())


def _body_leaks(scope_cls: type[transaction]) -> None:
    attach(Context({"leaked": True}))


BODIES: dict[str, Callable[[type[transaction]], None]] = {
    "plain": _body_plain, "raises": _body_raises, "generator exit": _body_generator_exit,
    "nested": _body_nested, "leaks": _body_leaks,
}

_SEEN: list[Any] = []


def _value(value: Any) -> Any:
    if isinstance(value, NonRecordingSpan) or hasattr(value, "get_span_context"):
        sc = value.get_span_context()
        return (type(value).__name__, tuple(sc), value.is_recording())
    return value


def _observe() -> Any:
    ctx = get_current()
    return (
        sorted(((str(key), repr(_value(val))) for key, val in ctx.items())),
        hoptrace.current_transaction_id(), hoptrace.current_trace_id(),
        hoptrace.current_span_id(),
    )


async def _async_block(scope: transaction, scope_cls: type[transaction], body: str) -> None:
    async with scope:
        _SEEN.append(_observe())
        BODIES[body](scope_cls)


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never suspends, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("suspended")


def _run(scope_cls: type[transaction], provider: str, setting: str, ambient: str, body: str,
         fixed: str | None, patched: str | None, monkeypatch: pytest.MonkeyPatch,
         asynchronous: bool = False) -> Any:
    _BAD[:] = ["checked-1"]
    hoptrace.configure(**SETTINGS[setting])
    hoptrace.reset_diagnostics()
    ids = SeededIds()
    exporter = InMemorySpanExporter()
    sampler = PROVIDERS[provider]
    made: Any = trace.NoOpTracerProvider()
    if sampler is not None:
        made = TracerProvider(sampler=sampler(), id_generator=ids)
        made.add_span_processor(SimpleSpanProcessor(exporter))
    _SEEN.clear()
    random.seed(3)
    with monkeypatch.context() as patch:
        patch.setattr(trace, "_TRACER_PROVIDER", made)
        if patched == "init":  # a patched NonRecordingSpan: made through the class call
            real_init = NonRecordingSpan.__init__

            def init(self: Any, context: Any) -> None:
                real_init(self, context)

            patch.setattr(NonRecordingSpan, "__init__", init)
        elif patched == "end":
            patch.setattr(NonRecordingSpan, "end", lambda self, end_time=None: _SEEN.append(
                "ended"))
        token = attach(AMBIENT[ambient]())
        before = get_current()
        raised = None
        scope = scope_cls("job", fixed, attributes={"a": 1})
        try:
            if asynchronous:
                _drive(_async_block(scope, scope_cls, body))
            else:
                with scope:
                    _SEEN.append(_observe())
                    BODIES[body](scope_cls)
        except BaseException as exc:
            raised = repr(exc)
        restored = get_current() is before
        after = _observe()
        assert restore(token)  # (leave nothing for the next case, a leak included)
    return {
        "transaction id": scope.transaction_id, "seen": list(_SEEN), "raised": raised,
        "restored": restored, "after": after, "diagnostics": hoptrace.diagnostics(),
        "exported": [
            (s.name, s.context.trace_id, s.context.span_id,
             s.parent.span_id if s.parent else None, dict(s.attributes or {}),
             s.status.status_code.name, len(s.events))
            for s in exporter.get_finished_spans()
        ],
        "ids asked": ids.asked, "next draw": random.getrandbits(64),
        "span left": scope.span, "closed": scope._closed, "token": scope._token,
    }


Case = tuple[str, str, str, str, 'str | None', 'str | None']


def _cases() -> Iterator[Case]:
    bodies = itertools.cycle(BODIES)
    for provider, setting, ambient in itertools.product(PROVIDERS, SETTINGS, AMBIENT):
        yield provider, setting, ambient, next(bodies), None, None
    for provider, body, patched, fixed in itertools.product(
            ("no SDK", "ratio 1%", "always on"), BODIES, (None, "init", "end"),
            (None, "given-1")):
        for setting in ("default", "propagation only"):
            yield provider, setting, "empty", body, fixed, patched


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_the_one_frame_transaction_matches_the_general_steps(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [case for case in _cases() if case[0] == provider]
    assert cases
    for case in cases:
        fast = _run(transaction, *case, monkeypatch)
        general = _run(Reference, *case, monkeypatch)
        assert fast == general, case
        # (disabled, a transaction attaches nothing, so a handler's leak is left as it is)
        assert fast["restored"] or case[1:4:2] == ("disabled", "leaks"), case
        assert fast["token"] is None and fast["closed"], case


@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize("setting", ["default", "propagation only"])
def test_async_with_matches_the_general_steps(
    body: str, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for provider in ("no SDK", "ratio 50%", "always on"):
        case = (provider, setting, "baggage", body, None, None)
        fast = _run(transaction, *case, monkeypatch, asynchronous=True)
        general = _run(Reference, *case, monkeypatch, asynchronous=True)
        assert fast == general, case
        assert fast["restored"] and fast["token"] is None and fast["closed"], case


def test_the_draws_are_the_sdk_order_and_the_ids_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outcomes, not only sameness: under 1% the 99% dropped roots are NonRecordingSpans in a
    trace of the generator's, the transaction ID is the seeded randbytes' hex."""
    out = _run(transaction, "ratio 1%", "default", "empty", "plain", None, None, monkeypatch)
    random.seed(3)
    assert out["transaction id"] == random.randbytes(16).hex()
    rng = random.Random(7)
    trace_id = rng.getrandbits(128)
    assert out["ids asked"][:2] == ["trace", "span"]
    assert out["seen"][0][2] == f"{trace_id:032x}"
    assert out["seen"][0][1] == out["transaction id"]
    prop = _run(transaction, "no SDK", "propagation only", "empty", "plain", None, None,
                monkeypatch)
    random.seed(3)
    assert prop["transaction id"] == random.randbytes(16).hex()
    assert prop["seen"][0][2] == f"{random.getrandbits(128) or 1:032x}"
    assert prop["seen"][0][3] == f"{random.getrandbits(64) or 1:016x}"


def test_the_inline_fields_are_the_scopes() -> None:
    """``transaction.__init__`` sets ``_Scope.__init__``'s fields itself: the same ones."""

    class Plain(_Scope):
        __slots__ = ()

    plain = Plain()
    mine = transaction("job")
    for name in _Scope.__slots__:
        assert getattr(mine, name) == getattr(plain, name), name
    assert set(_Scope.__slots__) == {"_attached", "_closed", "_token", "metrics_record", "span"}
