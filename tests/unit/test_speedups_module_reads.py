"""The C entries' reads of module globals, kept while the module's dict is unchanged.

Every message the C entries read again what a user or a test may rebind: hoptrace's settings
in force, the global tracer and meter providers, the global propagator, hoptrace's own entry
points, ``random.getrandbits``. Each read keeps what it found with the dict's PEP 509 version
tag, and looks again only once the dict has changed. These tests check that a change of any
kind takes effect at the very next read: first through ``_speedups.module_attr`` (a slot of
its own, read as the entries read), then at the entries themselves, each primed by a message
before the change so that its slot holds the old value.
"""

from __future__ import annotations

import gc
import random
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_kafka_sampled_dropped_send import SAMPLERS, Provider, install

import hoptrace
from hoptrace.core import _sdk_spans, hop, metrics, propagation, spans
from hoptrace.core.context import BAGGAGE_KEY, SPAN_KEY, TRANSACTION_KEY, sdk_installed

speedups = propagation._speedups
pytestmark = pytest.mark.skipif(
    speedups is None or not hasattr(speedups, "module_attr"), reason="the C module is not built")
#: The tests that count which way ``hop._send_c`` answered: where the C dropped send stands
#: down (an OTel API whose ContextVar hoptrace cannot reach), the others still check that the
#: Python steps see each change.
needs_send_c = pytest.mark.skipif(hop._send_c is None, reason="the C dropped send is not used")

UNSAMPLED = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
TX = "d" * 32


class Value:
    """A value only the module holds (a weak reference sees it go)."""


class WithGetattr(types.ModuleType):
    """Not an exact module: read by getattr, never kept."""


def fresh() -> types.ModuleType:
    module = types.ModuleType("hoptrace_probe")
    module.name = "first"  # type: ignore[attr-defined]
    module.other = "other"  # type: ignore[attr-defined]
    return module


def read(module: Any, name: str = "name") -> Any:
    return speedups.module_attr(module, name)


# Each change rebinds, removes or adds ``name`` in the module's dict the way some code does;
# it returns what getattr(module, "name") then gives (or the AttributeError's type).
def _setattr(module: Any) -> Any:
    module.name = Value()
    return module.name


def _equal_but_another(module: Any) -> Any:
    module.name = "".join(["fir", "st"])  # equal to the kept value, another object
    return module.name


def _dict_item(module: Any) -> Any:
    vars(module)["name"] = Value()
    return module.name


def _update(module: Any) -> Any:
    vars(module).update(name=Value())
    return module.name


def _exec_store_name(module: Any) -> Any:
    exec("name = ('exec', 1)", vars(module))  # (STORE_NAME into the module)
    return module.name


def _store_global(module: Any) -> Any:
    exec("def rebind():\n    global name\n    name = ('global', 2)\n", vars(module))
    module.rebind()
    return module.name


def _delattr(module: Any) -> Any:
    del module.name
    return AttributeError


def _pop(module: Any) -> Any:
    vars(module).pop("name")
    return AttributeError


def _clear(module: Any) -> Any:
    vars(module).clear()
    return AttributeError


def _popitem(module: Any) -> Any:
    while "name" in vars(module):
        vars(module).popitem()
    return AttributeError


def _setdefault_after_delete(module: Any) -> Any:
    del module.name
    vars(module).setdefault("name", ("setdefault", 3))
    return module.name


def _other_key(module: Any) -> Any:
    module.other = Value()  # another name changed: the kept value is still right
    return module.name


def _module_getattr(module: Any) -> Any:
    del module.name
    module.__getattr__ = lambda attr: ("__getattr__", attr)
    return module.name


CHANGES: dict[str, Callable[[Any], Any]] = {
    fn.__name__.lstrip("_"): fn for fn in (
        _setattr, _equal_but_another, _dict_item, _update, _exec_store_name, _store_global,
        _delattr, _pop, _clear, _popitem, _setdefault_after_delete, _other_key, _module_getattr,
    )
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_to_the_dict_is_read_at_once(change: str) -> None:
    module = fresh()
    assert read(module) == "first"
    assert read(module) is module.name  # kept, the same object
    expected = CHANGES[change](module)
    if expected is AttributeError:
        with pytest.raises(AttributeError):
            read(module)
    elif change == "module_getattr":  # (a new tuple each call: nothing kept)
        assert read(module) == expected
    else:
        assert read(module) is expected
        assert read(module) is expected  # (and kept)


def test_another_name_or_another_module_is_read_for_itself() -> None:
    one, two = fresh(), fresh()
    two.name = "second"  # type: ignore[attr-defined]
    assert read(one) == "first"
    assert read(one, "other") == "other"  # the same dict, unchanged, another name
    assert read(two) == "second"  # another dict
    assert read(one) == "first"


def test_what_is_not_an_exact_module_is_read_by_getattr() -> None:
    module = WithGetattr("probe")
    module.name = "first"  # type: ignore[attr-defined]
    assert read(module) == "first"
    module.name = "second"  # type: ignore[attr-defined]
    assert read(module) == "second"
    namespace = types.SimpleNamespace(name="plain")
    assert read(namespace) == "plain"
    namespace.name = "again"
    assert read(namespace) == "again"


def test_a_missing_name_goes_to_getattr_every_time() -> None:
    module = fresh()
    calls = []
    module.__getattr__ = lambda attr: calls.append(attr) or len(calls)  # type: ignore[attr-defined]
    assert read(module, "absent") == 1
    assert read(module, "absent") == 2  # nothing kept for a name the dict lacks
    with pytest.raises(TypeError):
        speedups.module_attr(module, 1)


def test_a_replaced_value_is_released_once_read_again() -> None:
    module = fresh()
    module.name = Value()  # type: ignore[attr-defined]
    gone = weakref.ref(module.name)  # type: ignore[attr-defined]
    assert read(module) is gone()
    module.name = "replaced"  # type: ignore[attr-defined]
    assert read(module) == "replaced"
    gc.collect()
    assert gone() is None  # the slot let go of it


def test_a_finalizer_that_rebinds_the_name_is_seen() -> None:
    """The old value's finalizer runs as the slot lets go of it; what it changes is read."""
    module = fresh()

    class Rebinds:
        def __del__(self) -> None:
            module.name = "from the finalizer"

    module.name = Rebinds()  # type: ignore[attr-defined]
    assert isinstance(read(module), Rebinds)
    module.name = "replaced"  # type: ignore[attr-defined]  (Rebinds is held by the slot only)
    assert read(module) == "replaced"  # the finalizer runs as the slot takes this one
    assert module.name == "from the finalizer"
    assert read(module) == "from the finalizer"


# ---- the entries, primed before the change ------------------------------------------------


@pytest.fixture
def one_pct() -> Iterator[Provider]:
    assert not metrics.enabled()
    hoptrace.inject({})  # (the W3C propagator seen, as after a first send)
    for one in install(SAMPLERS["1%"]()):
        assert sdk_installed()
        yield one


def send(carrier: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dropped send, as the clients make it, under an unsampled span and a transaction;
    the headers written."""
    carrier = {} if carrier is None else carrier
    token = attach(Context({SPAN_KEY: NonRecordingSpan(UNSAMPLED), TRANSACTION_KEY: TX,
                            BAGGAGE_KEY: {"transaction.id": TX}}))
    try:
        result = hop.dropped_send(carrier, True, False, True)
        if result is not None and result[1] is not None:
            result[1].close()
    finally:
        detach(token)
    return carrier


def ways(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count which way hop._send_c's calls go."""
    counts = {"done": 0, "declined": 0, "none": 0}
    real = hop._send_c

    def counted(*args: Any) -> Any:
        result = real(*args)
        counts["declined" if result is NotImplemented else "none" if result is None
               else "done"] += 1
        return result

    monkeypatch.setattr(hop, "_send_c", counted)
    return counts


@needs_send_c
def test_the_primed_send_takes_the_c_way(one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = ways(monkeypatch)
    headers = send()
    assert headers["traceparent"].startswith("00-" + format(UNSAMPLED.trace_id, "032x"))
    assert counts == {"done": 1, "declined": 0, "none": 0}


@needs_send_c
def test_a_propagator_set_after_a_send_writes_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.propagators.b3 import B3MultiFormat

    counts = ways(monkeypatch)
    assert "traceparent" in send()
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([B3MultiFormat()]))
    headers = send()
    assert "traceparent" not in headers
    assert headers["x-b3-traceid"] == format(UNSAMPLED.trace_id, "032x")
    assert counts == {"done": 1, "declined": 1, "none": 0}  # B3: the Python steps write it


@needs_send_c
def test_settings_configured_after_a_send_rule_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "x-probe-transaction" not in send()
    before = hoptrace.get_settings().transaction_header
    counts = ways(monkeypatch)
    hoptrace.configure(transaction_header="x-probe-transaction")
    try:
        metrics.enabled()  # (metrics known off again and the new settings' names seen,
        hoptrace.inject({})  # as after a first send)
        headers = send()
    finally:
        hoptrace.configure(transaction_header=before)
    assert headers["x-probe-transaction"] == TX
    metrics.enabled()
    hoptrace.inject({})
    assert "x-probe-transaction" not in send()
    assert counts == {"done": 2, "declined": 0, "none": 0}


def counting(real: Callable[..., Any], calls: list[Any]) -> Callable[..., Any]:
    """``real``, each call's arguments appended to ``calls``."""

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    return counted


def test_a_dropped_child_entry_patched_after_a_send_is_called(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    send()
    calls: list[Any] = []
    real = hop._dropped_child
    monkeypatch.setattr(hop, "_dropped_child", counting(real, calls))
    send()
    assert len(calls) == 1
    monkeypatch.setattr(hop, "_dropped_child", real)
    send()
    assert len(calls) == 1  # (restored: the C module's own entry again)
    monkeypatch.setattr(_sdk_spans, "dropped_child_of",
                        counting(_sdk_spans.dropped_child_of, calls))
    send()
    assert len(calls) == 2  # _sdk_spans.dropped_child_of, through spans.dropped_child
    monkeypatch.setattr(spans, "dropped_child", lambda *args: calls.append(args) or None)
    send()
    assert len(calls) == 3  # spans.dropped_child, through hop's own entry


def test_random_patched_after_a_send_draws_the_next_ids(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    send()
    monkeypatch.setattr(random, "getrandbits", lambda bits: 0xABC if bits == 64 else 0xDEF)
    headers = send()
    assert headers["traceparent"].split("-")[2] == format(0xABC, "016x")
    with hoptrace.transaction():
        root = trace.get_current_span().get_span_context()
    assert (root.trace_id, root.span_id) == (0xDEF, 0xABC)


@needs_send_c
def test_metrics_on_after_a_send_take_the_next_the_steps_way(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    counts = ways(monkeypatch)
    send()
    assert counts == {"done": 1, "declined": 0, "none": 0}
    monkeypatch.setattr(metrics.provider_source, "_METER_PROVIDER",
                        MeterProvider(metric_readers=[InMemoryMetricReader()]))
    send()
    assert counts == {"done": 1, "declined": 1, "none": 0}


@needs_send_c
def test_a_tracer_provider_set_after_a_send_is_asked_for_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = ways(monkeypatch)
    send()
    assert counts == {"done": 1, "declined": 0, "none": 0}  # 1%: the send's child known dropped
    for _ in install(SAMPLERS["keeps unsampled children"]()):
        # This provider's sampler keeps a child of an unsampled local parent: the steps
        # decline the send, which then goes through its scope.
        token = attach(Context({SPAN_KEY: NonRecordingSpan(UNSAMPLED), TRANSACTION_KEY: TX}))
        try:
            assert hop.dropped_send({}, True, False, True) is None
        finally:
            detach(token)
        assert counts == {"done": 1, "declined": 1, "none": 0}


def test_a_non_recording_span_class_set_after_a_root_makes_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    class Own(NonRecordingSpan):
        pass

    with hoptrace.transaction():
        assert type(trace.get_current_span()) is NonRecordingSpan  # (1%: almost surely)
    monkeypatch.setattr(trace, "NonRecordingSpan", Own)
    random.seed(7)
    with hoptrace.transaction():
        assert type(trace.get_current_span()) is Own


class Colliding(str):
    """A key with the hash of ``name``: every lookup of ``name`` that probes it calls this
    ``__eq__`` (``on_compare``, if set, runs there: a change in the middle of a lookup)."""

    compared = 0
    on_compare: Callable[[], None] | None = None

    def __hash__(self) -> int:
        return hash("name")

    def __eq__(self, other: object) -> bool:
        type(self).compared += 1
        if type(self).on_compare is not None:
            change, type(self).on_compare = type(self).on_compare, None
            change()
        return False

    def __ne__(self, other: object) -> bool:
        return True


@pytest.fixture
def colliding() -> Iterator[tuple[types.ModuleType, type[Colliding]]]:
    class Key(Colliding):
        compared = 0

    module = types.ModuleType("hoptrace_probe")
    vars(module)[Key("colliding")] = 0  # (first: a lookup of "name" meets it first)
    module.name = "first"  # type: ignore[attr-defined]
    yield module, Key


@pytest.mark.skipif(sys.version_info >= (3, 14) or not getattr(sys, "_is_gil_enabled",
                    lambda: True)(), reason="the version tag is read on 3.10 to 3.13 with the GIL")
def test_an_unchanged_dict_is_not_asked_again(
        colliding: tuple[types.ModuleType, type[Colliding]]) -> None:
    module, key = colliding
    assert read(module) == "first"
    asked = key.compared
    assert asked >= 1  # the lookup met the colliding key
    assert [read(module) for _ in range(5)] == ["first"] * 5
    assert key.compared == asked  # kept: no lookup
    module.other = 1  # type: ignore[attr-defined]
    assert read(module) == "first"
    assert key.compared > asked  # the dict changed: looked up again


def test_a_change_in_the_middle_of_a_lookup_is_read_next(
        colliding: tuple[types.ModuleType, type[Colliding]]) -> None:
    module, key = colliding
    module.name = "second"  # type: ignore[attr-defined]  (the slot is behind: looks up)
    key.on_compare = lambda: setattr(module, "name", "changed during the lookup")
    first = read(module)
    assert first in ("second", "changed during the lookup")
    assert module.name == "changed during the lookup"
    assert read(module) == "changed during the lookup"


def test_the_id_generators_random_replaced_after_a_send_draws_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's RandomIdGenerator draws from the ``random`` its module's globals name; the
    C module reads that global as the function would, at every draw."""
    from opentelemetry.sdk.trace import id_generator

    send()
    own = types.ModuleType("own_random")
    own.getrandbits = lambda bits: 0x5A5A if bits == 64 else 0xA5A5  # type: ignore[attr-defined]
    monkeypatch.setattr(id_generator, "random", own)
    assert send()["traceparent"].split("-")[2] == format(0x5A5A, "016x")
    with hoptrace.transaction():
        root = trace.get_current_span().get_span_context()
    assert (root.trace_id, root.span_id) == (0xA5A5, 0x5A5A)


def test_a_non_recording_span_init_patched_after_a_root_makes_the_next(
        one_pct: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unsampled root's span is made without its ``__init__`` call only while that is the
    class's own: a patch after the first root is called for the next."""
    random.seed(7)
    with hoptrace.transaction():
        assert not trace.get_current_span().is_recording()
    made: list[Any] = []
    real = NonRecordingSpan.__init__

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(NonRecordingSpan, "__init__", patched)
    random.seed(7)
    with hoptrace.transaction():
        assert trace.get_current_span() in made
