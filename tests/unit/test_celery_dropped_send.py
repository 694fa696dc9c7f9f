"""Celery's publish when the sampler drops its send span: no scope, as the scope did.

In the 1%-sampled production setup (``ParentBased(TraceIdRatioBased(0.01))``, a transaction
per message) 99% of publishes run under an unsampled root, so their send span is a dropped
child. With metrics off, ``hoptrace.celery``'s ``send_task_message`` then takes
``hop.dropped_send``: the send's context attached (that dropped span current, the
transaction bound) and the headers rendered into the message, without a ``produce_scope``.
Each case here publishes twice from the same random state, once that way and once through
the scope (``dropped_send`` answering None), and compares what Celery's sender got (the
headers, its other arguments) and saw (the whole current context, the span IDs drawn), what
it returned or raised, the message's headers afterwards, what is current afterwards, the
random state afterwards, hoptrace's diagnostic counts and the spans exported; over
samplers that drop or keep such children, ambient contexts of every kind (no span, no
transaction, a sampled or invalid span, a malformed transaction), headers that carry a
stale or a carried context, retries, senders that raise or leak a context, other settings,
a B3 propagator, a patched ``NonRecordingSpan`` and metrics on.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery")

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import NonRecordingSpan
from test_kafka_sampled_dropped_send import SAMPLERS, Provider, contexts, install
from test_send_attach import BEHAVIOURS, Failure, Hostile, observed, snapshot, untimed

import hoptrace
import hoptrace.celery as hop_celery
from hoptrace.celery import RETRY_OF_HEADER
from hoptrace.core import hop, metrics, propagation

TASK_ID = "8d1c0c59-6a4e-4f7e-9c7a-2b1f0c3d4e5f"
CARRIED = "c" * 32
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def headers_shapes() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(the message's headers, the publish's keyword arguments), new objects per call."""
    base = {"lang": "py", "task": "unit.order", "id": TASK_ID, "root_id": TASK_ID,
            "parent_id": None, "group": None, "retries": 0}
    return [
        (dict(base), {}),
        ({**base, "traceparent": TRACEPARENT, "baggage": "transaction.id=" + "b" * 32,
          "x-hoptrace-sent-ns": "1"}, {}),  # a stale context, copied from an earlier task
        ({**base, "x-transaction-id": CARRIED}, {}),  # carried: no transaction drawn
        ({**base, "baggage": "transaction.id=" + CARRIED + ",tenant=a"}, {}),
        ({**base, "retries": 1}, {}),  # a retry: its own steps (the scope, both ways)
        ({**base, RETRY_OF_HEADER: "0123456789abcdef"}, {}),
        ({**base, "id": 123}, {}),  # not text
        ({**base, "k": Hostile()}, {}),
        (dict(base), {"headers": {"traceparent": TRACEPARENT, "tenant": "b"}}),
    ]


def plain(headers: Any) -> Any:
    """:func:`untimed` ``headers``, a :class:`Hostile` value as a placeholder (each shape
    makes a new one)."""
    headers = untimed(headers)
    if isinstance(headers, dict):
        return {k: "<hostile>" if isinstance(v, Hostile) else v for k, v in headers.items()}
    return headers


def one_publish(which: int, ambient: dict[Any, Any], behaviour: str, state: Any) -> dict[str, Any]:
    """Publish once in ``ambient`` from random ``state``; return everything observable."""
    hoptrace.reset_diagnostics()
    random.setstate(state)
    seen: list[Any] = []

    def send(producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        headers = message[0]
        seen.append((name, plain(dict(headers)), args, plain(kwargs.get("headers")),
                     sorted(kwargs), observed()))
        if behaviour.startswith("leak"):
            attach(Context({**get_current(), "leaked": True}))
        if behaviour.endswith("raise"):
            raise Failure("broker says no")
        return "sent"

    headers, kwargs = headers_shapes()[which]
    message: Any = (headers, {"correlation_id": TASK_ID}, ((1,), {}, {}), None)
    token = attach(Context(ambient))
    try:
        try:
            outcome: Any = ("returned", hop_celery._wrap_sender(send)(
                object(), "unit.order", message, exchange="", routing_key="celery", **kwargs))
        except Failure as exc:
            outcome = ("raised", str(exc))
        after = snapshot(get_current())
    finally:
        detach(token)
    return {"seen": seen, "outcome": outcome, "after": after, "headers": plain(headers),
            "random": random.getstate(), "diagnostics": hoptrace.diagnostics()}


class Shortcut:
    """Counts the publishes ``hop.dropped_send`` took; ``off()`` publishes through the scope."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.taken = 0
        # hop.dropped_send: hop.dropped_send_entry (what the publish calls) without the one
        # C call that covers the dispatch too, so that each way is seen here;
        # test_speedups_dropped_send.py compares the two.
        real = hop.dropped_send

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            self.taken += result is not None
            return result

        #: Of those, the ones whose headers the C writer wrote: through ``hop._dropped_into``,
        #: or the C module's ``dropped_send`` (``hop._send_c``) in one call.
        self.written = 0
        into = hop._dropped_into

        def written(*args: Any) -> Any:
            result = into(*args)
            self.written += result is not None
            return result

        send_c = hop._send_c

        def written_c(*args: Any) -> Any:
            result = send_c(*args)
            self.written += type(result) is tuple and len(result) == 2 and result[1] is not None
            return result

        monkeypatch.setattr(hop_celery, "_active", True)
        monkeypatch.setattr(hop_celery, "dropped_send", counted)
        monkeypatch.setattr(hop, "_dropped_into", written)
        if send_c is not None:
            monkeypatch.setattr(hop, "_send_c", written_c)

    def off(self) -> None:
        self.monkeypatch.setattr(hop_celery, "dropped_send", lambda *args, **kwargs: None)


def compare(provider: Provider, monkeypatch: pytest.MonkeyPatch,
            shapes: range | None = None, written: list[int] | None = None) -> int:
    """Publish every case with the shortcut, then through the scope; assert the same
    outcome. Return how many publishes took the shortcut (and append to ``written`` how
    many of them ``hop._dropped_into`` wrote)."""
    shortcut = Shortcut(monkeypatch)
    cases = list(itertools.product(shapes or range(len(headers_shapes())),
                                   range(len(contexts())), BEHAVIOURS))
    states, fast = [], []
    for which, ambient, behaviour in cases:
        states.append(random.getstate())
        got = one_publish(which, contexts()[ambient], behaviour, states[-1])
        got["spans"] = provider.take()
        fast.append(got)
    taken = shortcut.taken
    if written is not None:
        written.append(shortcut.written)
    shortcut.off()
    for (which, ambient, behaviour), state, got in zip(cases, states, fast, strict=True):
        want = one_publish(which, contexts()[ambient], behaviour, state)
        want["spans"] = provider.take()
        assert got == want, (which, contexts()[ambient], behaviour)
    return taken


@pytest.fixture(params=list(SAMPLERS))
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield from install(SAMPLERS[request.param]())


@pytest.fixture
def one_pct() -> Iterator[Provider]:
    yield from install(SAMPLERS["1%"]())


def test_the_shortcut_publishes_and_attaches_what_the_scope_does(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    taken = compare(provider, monkeypatch, written=written)
    sampler = trace.get_tracer_provider().sampler  # type: ignore[attr-defined]
    # Every ParentBased sampler here drops some unsampled parent's children (local or
    # remote): those publishes took the shortcut. A sampler hoptrace cannot read: none did.
    assert (taken > 0) == isinstance(sampler, ParentBased)
    # Both ways of the shortcut ran: the C writer's, and the general steps (a baggage with
    # other entries, a transaction header in the message, a span context of trace state).
    # Without the C module (HOPTRACE_PURE_PYTHON=1), only the general steps.
    if propagation._write_common is None:
        assert written == [0]
    else:
        assert (0 < written[0] < taken) == isinstance(sampler, ParentBased)


@pytest.mark.parametrize("options", [
    {"transaction_header": "x-transaction-id"},
    {"baggage_mirror": False},
    {"baggage_mirror": False, "transaction_header": "x-request-id"},
    {"fast_spans": False},
    {"enabled": False},
], ids=lambda o: ",".join(map(str, o.items())))
def test_the_same_under_other_settings(
    options: dict[str, Any], one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    hoptrace.configure(**options)
    taken = compare(one_pct, monkeypatch)
    assert (taken == 0) == (options in ({"fast_spans": False}, {"enabled": False}))


def test_the_same_through_another_propagator(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator

    b3 = pytest.importorskip("opentelemetry.propagators.b3")
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator(
        [b3.B3MultiFormat(), W3CBaggagePropagator()]))
    written: list[int] = []
    assert compare(one_pct, monkeypatch, range(4), written) > 0
    assert written == [0]  # (another propagator: never the W3C writer's shortcut)


def test_a_patched_non_recording_span_goes_through_the_scope(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended: list[Any] = []
    monkeypatch.setattr(NonRecordingSpan, "end", lambda self, end_time=None: ended.append(
        self.get_span_context().span_id))
    assert compare(one_pct, monkeypatch, range(4)) == 0
    assert ended  # the scope ended its dropped send spans, as it must while end is patched
    monkeypatch.undo()
    monkeypatch.setattr(NonRecordingSpan, "is_recording", lambda self: False)
    assert compare(one_pct, monkeypatch, range(4)) == 0


def test_metrics_on_go_through_the_scope(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With metrics on the shortcut steps aside, so every publish is counted as sent."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(meters)
    try:
        taken = compare(one_pct, monkeypatch, range(2))
        sent = 0
        data: Any = reader.get_metrics_data()
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "messaging.client.sent.messages":
                        sent += sum(p.value for p in metric.data.data_points)
    finally:
        metrics.use_meter_provider(None)
        meters.shutdown()
    assert taken == 0
    # Both runs of every case sent once (two shapes, every context, every behaviour).
    assert sent == 2 * 2 * len(contexts()) * len(BEHAVIOURS)


def test_a_publish_in_an_unsampled_transaction_takes_the_shortcut(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the shortcut gives on a real app: the message carries a send span of its own in
    the transaction's unsampled trace, current while Celery's publish signals run, and
    nothing is left attached."""
    import uuid

    from celery import Celery, signals  # type: ignore[import-untyped]

    shortcut = Shortcut(monkeypatch)
    app = Celery(f"unit-{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    queue = f"q-{uuid.uuid4().hex[:6]}"
    app.conf.update(task_default_queue=queue)
    hop_celery.instrument(app)
    in_signal: list[Any] = []

    def before_publish(**_: Any) -> None:
        in_signal.append((trace.get_current_span().get_span_context(),
                          hoptrace.current_transaction_id()))

    signals.before_task_publish.connect(before_publish, weak=False)
    assert not metrics.enabled()  # (known off from now on, as after a first publish)
    try:
        for _ in range(50):
            one_pct.take()  # (a root that recorded in the round before: not this test's)
            with hoptrace.transaction("job") as tx:
                root = trace.get_current_span().get_span_context()
                if root.trace_flags.sampled:  # the 1 in 100 that records: not this test's
                    continue
                before = get_current()
                app.send_task("unit.order", (1,))
                assert get_current() is before
                break
        else:
            raise AssertionError("50 sampled roots in a row at 1%")
        with app.connection_for_read() as conn:
            message = conn.SimpleQueue(queue).get(timeout=5)
            headers = message.headers
            message.ack()
    finally:
        signals.before_task_publish.disconnect(before_publish)
        hop_celery.uninstrument()
    assert shortcut.taken == 1
    assert one_pct.take() == []
    ((sc, current_tx),) = in_signal
    assert headers["traceparent"] == f"00-{root.trace_id:032x}-{sc.span_id:016x}-00"
    assert sc.trace_id == root.trace_id and sc.span_id != root.span_id
    assert current_tx == tx.transaction_id
    assert f"transaction.id={tx.transaction_id}" in headers["baggage"]
    assert not hoptrace.diagnostics()


def test_dropped_send_steps_aside_where_the_scope_makes_more(
    one_pct: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """None, with nothing attached nor drawn: no span current, no transaction in force or
    carried, a sampled parent, propagation-only; a carrier the scope refuses raises as the
    scope does."""
    from hoptrace.core.context import SPAN_KEY, TRANSACTION_KEY

    def nothing_done(ambient: dict[Any, Any], carrier: Any = None) -> None:
        token = attach(Context(ambient))
        try:
            state, before = random.getstate(), get_current()
            assert hop.dropped_send(carrier) is None
            assert random.getstate() == state and get_current() is before
        finally:
            detach(token)

    unsampled, sampled = (ctx[SPAN_KEY] for ctx in (contexts()[3], contexts()[8]))
    assert not metrics.enabled()  # (known off from now on, as after a first publish)
    nothing_done({})
    nothing_done({TRANSACTION_KEY: "d" * 32})
    nothing_done({SPAN_KEY: unsampled})
    nothing_done({SPAN_KEY: sampled, TRANSACTION_KEY: "d" * 32})
    hoptrace.configure(propagation_only=True)
    nothing_done({SPAN_KEY: unsampled, TRANSACTION_KEY: "d" * 32})
    hoptrace.configure(propagation_only=False)
    assert not metrics.enabled()
    token = attach(Context({SPAN_KEY: unsampled, TRANSACTION_KEY: "d" * 32}))
    try:
        with pytest.raises(TypeError, match="unsupported carrier type"):
            hop.dropped_send("headers")  # type: ignore[arg-type]
    finally:
        detach(token)
