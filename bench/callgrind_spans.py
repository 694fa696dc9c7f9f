"""Instruction counts of ``transaction()`` and of spans that record nothing, with no broker.

The same method as bench/callgrind_cases.py: each case runs one function N times through
``starmap``, and callgrind counts only inside ``starmap_next``.

    python bench/callgrind_spans.py                  # every case under callgrind, a table
    python bench/callgrind_spans.py tx_prop          # some cases
    python bench/callgrind_spans.py --run CASE 2000  # one case, N calls (what valgrind runs)

Cases:

- ``tx_prop``: ``with transaction("job"): pass``, propagation-only.
- ``tx_sfast`` / ``tx_sexact``: the same under ``ParentBased(TraceIdRatioBased(0.01))``,
  ``fast_spans`` on / off (99% of the roots are dropped).
- ``tx_fast``: the same, every span sampled (the root records).
- ``sendunder_sfast``: confluent-kafka's ``produce`` stand-in under an open transaction the
  sampler dropped (the send span is dropped too), the transaction opened once outside.
- ``piece_mint``: ``mint_span_context()``; ``piece_gen_tx``: ``generate_transaction_id()``;
  ``piece_mint_span``: ``NonRecordingSpan(mint_span_context())``, what propagation-only gives
  a transaction; ``piece_mint_inline``: the same span as ``transaction.open`` builds it
  inline in propagation-only (its two draws, the ``SpanContext`` and the
  ``NonRecordingSpan`` without a call), what propagation-only pays for it.
- ``piece_dropped_root``: what a transaction's root costs under
  ``ParentBased(TraceIdRatioBased(0.01))`` (``spans.lazy_span``: the IDs, the ratio's
  decision, the ``NonRecordingSpan`` for the 99% dropped, ``tracer.start_span`` for the 1%);
  ``piece_dropped_child``: a send's span under such a dropped root (``hop._dropped_child``).
  Compare them with ``floor_root`` and ``floor_child``.
- ``floor_child`` / ``floor_root``: the least a span the sampler drops can cost, whatever the
  code around it: the SDK's ID generator asked for its IDs, the ``SpanContext`` and the
  ``NonRecordingSpan`` built the cheapest way Python allows, and for a root the
  ``TraceIdRatioBased`` decision (a child's decision, a table lookup, is left out). What the
  sampled setup (``ParentBased(TraceIdRatioBased(0.01))``) cannot avoid per message is
  ``floor_root + 2 * floor_child`` (the transaction's root, the send, the process span) less
  ``piece_mint_inline``, which propagation-only pays instead of the root.
- ``cfloor_child`` / ``cfloor_root``: the same steps built in C (``bench/cfloor.c``, compiled
  on first use): ``random.getrandbits`` (what the SDK's ``RandomIdGenerator`` draws from),
  the ``SpanContext`` tuple, the ``NonRecordingSpan`` made as ``object.__new__`` makes it,
  for a root the ratio's decision; called with no Python frame around them (a
  ``functools.partial``), where the Python floor's own frame is counted. hoptrace's C
  entries build their dropped spans in C too, so this, not the Python floor, is the least
  they can cost.
- ``floor_sampled``: a message the 1% ratio keeps, as ``tx_fast`` records it with a send span
  under it (root and send recorded and exported): one in 100 messages pays it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_cases  # the shared stand-ins and SDK set-up

CASES = ("tx_prop", "tx_sfast", "tx_sexact", "tx_fast", "sendunder_sfast", "piece_mint",
         "piece_gen_tx", "piece_mint_span", "piece_mint_inline", "piece_dropped_root",
         "piece_dropped_child", "floor_child", "floor_root", "cfloor_child", "cfloor_root",
         "floor_sampled")


def _floor(case: str) -> Callable[[], object]:
    """The least a dropped child (or root) costs: see the module's docstring."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import (
        DEFAULT_TRACE_STATE,
        NonRecordingSpan,
        SpanContext,
        TraceFlags,
    )

    from hoptrace.core.otel_shims import tracer

    callgrind_cases._install("sfast")
    ids = tracer().id_generator  # type: ignore[attr-defined]
    new_tuple, new_object = tuple.__new__, object.__new__
    unsampled = TraceFlags(0)
    ratio = TraceIdRatioBased(0.01)
    limit, bound = ratio.TRACE_ID_LIMIT, ratio.bound
    parent_trace = 0xABC

    def child() -> object:
        span_id = ids.generate_span_id()
        span = new_object(NonRecordingSpan)
        span._context = new_tuple(SpanContext, (parent_trace, span_id, False, unsampled,
                                                DEFAULT_TRACE_STATE, 0 < span_id < 1 << 64))
        return span

    def root() -> object:
        trace_id = ids.generate_trace_id()
        if trace_id & limit < bound:
            return None
        ids.is_trace_id_random()
        span_id = ids.generate_span_id()
        span = new_object(NonRecordingSpan)
        span._context = new_tuple(SpanContext, (
            trace_id, span_id, False, unsampled, DEFAULT_TRACE_STATE,
            0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64))
        return span

    return child if case == "floor_child" else root


def cfloor_module() -> Any:
    """``bench/cfloor.c`` built for this interpreter (once, into ``build/cfloor``) and imported.

    Compiled with the interpreter's own compiler and flags (``sysconfig``), as setuptools
    builds hoptrace's C module."""
    import importlib.util
    import shlex
    import subprocess
    import sysconfig

    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.join(here, "cfloor.c")
    out_dir = os.path.join(os.path.dirname(here), "build", "cfloor")
    target = os.path.join(out_dir, "_cfloor" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(source):
        os.makedirs(out_dir, exist_ok=True)
        config = sysconfig.get_config_var
        command = [*shlex.split(config("CC") or "cc"), *shlex.split(config("CFLAGS") or ""),
                   *shlex.split(config("CCSHARED") or ""), "-shared",
                   "-I", sysconfig.get_paths()["include"], source, "-o", f"{target}.{os.getpid()}"]
        subprocess.run(command, check=True)
        os.replace(f"{target}.{os.getpid()}", target)
    spec = importlib.util.spec_from_file_location("_cfloor", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cfloor(case: str) -> Callable[[], object]:
    """``cfloor_child`` / ``cfloor_root``: see the module's docstring."""
    import functools
    import random

    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import (
        DEFAULT_TRACE_STATE,
        NonRecordingSpan,
        SpanContext,
        TraceFlags,
    )

    floor = cfloor_module()  # (no SDK installed: the pieces draw from random themselves)
    unsampled = TraceFlags(0)
    if case == "cfloor_child":
        return functools.partial(floor.child, random.getrandbits, 64, 0xABC, unsampled,
                                 DEFAULT_TRACE_STATE, SpanContext, NonRecordingSpan, "_context")
    ratio = TraceIdRatioBased(0.01)
    return functools.partial(floor.root, random.getrandbits, 64, 128, ratio.TRACE_ID_LIMIT,
                             ratio.bound, unsampled, DEFAULT_TRACE_STATE, SpanContext,
                             NonRecordingSpan, "_context")


def _inline_mint() -> Callable[[], object]:
    """``piece_mint_inline``: propagation-only's span as ``transaction.open`` builds it."""
    from opentelemetry.trace import DEFAULT_TRACE_STATE, NonRecordingSpan, SpanContext

    from hoptrace.core import transaction

    new_object, new_tuple = object.__new__, tuple.__new__
    draw, sampled_off = transaction._getrandbits, transaction._SAMPLED_OFF

    def mint() -> object:
        span = new_object(NonRecordingSpan)
        span._context = new_tuple(SpanContext, (draw(128) or 1, draw(64) or 1, False,
                                                sampled_off, DEFAULT_TRACE_STATE, True))
        return span
    return mint


def _dropped_root() -> object:
    """A transaction's scope, open, whose root the sampler dropped (the caller closes it)."""
    import hoptrace

    while True:
        scope = hoptrace.transaction("job").open()
        if scope.span is not None and not scope.span.get_span_context().trace_flags.sampled:
            return scope
        scope.close()


def _dropped_piece(case: str) -> Callable[[], object]:
    """``piece_dropped_root`` / ``piece_dropped_child``: see the module's docstring."""
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    import hoptrace
    from hoptrace.core import hop, spans

    callgrind_cases._install("sfast")
    hoptrace.configure(fast_spans=True)
    if case == "piece_dropped_root":
        internal, empty = SpanKind.INTERNAL, Context()
        spans.fast_starter()
        return lambda: spans.lazy_span("job", empty, internal, dict)
    root: Any = _dropped_root().span  # type: ignore[attr-defined]
    dropped_child = hop._dropped_child
    return lambda: dropped_child(root, None, "bench")


def build(case: str) -> Callable[[], object]:
    """The function one call of ``case`` runs."""
    import hoptrace

    mode = case.partition("_")[2]
    if case in ("floor_child", "floor_root"):
        return _floor(case)
    if case in ("cfloor_child", "cfloor_root"):
        return _cfloor(case)
    if case in ("piece_dropped_root", "piece_dropped_child"):
        return _dropped_piece(case)
    if case.startswith("piece_"):
        from opentelemetry.trace import NonRecordingSpan

        from hoptrace.core import ids

        hoptrace.configure(propagation_only=True)
        pieces: dict[str, Callable[[], object]] = {
            "piece_mint": ids.mint_span_context, "piece_gen_tx": ids.generate_transaction_id,
            "piece_mint_span": lambda: NonRecordingSpan(ids.mint_span_context()),
            "piece_mint_inline": _inline_mint()}
        return pieces[case]
    if case == "floor_sampled":  # every root kept: a recorded root and a recorded send
        import hoptrace.confluent_kafka as ck

        callgrind_cases._install("fast")
        hoptrace.configure(fast_spans=True)

        def sampled() -> None:
            with hoptrace.transaction("job"):
                ck._produce(callgrind_cases._noop, None, "orders", (b"x",), {})
        return sampled
    callgrind_cases._install(mode)
    hoptrace.configure(fast_spans=not mode.endswith("exact"), propagation_only=mode == "prop")
    transaction = hoptrace.transaction
    if case.startswith("tx_"):
        def one() -> None:
            with transaction("job"):
                pass
        return one
    import hoptrace.confluent_kafka as ck

    noop = callgrind_cases._noop
    _dropped_root()  # an open transaction the sampler dropped, kept open for every call
    return lambda: ck._produce(noop, None, "orders", (b"x",), {})


if __name__ == "__main__":
    raise SystemExit(callgrind_cases.cli(sys.argv[1:], __file__, CASES, build))
