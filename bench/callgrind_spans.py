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
- ``piece_mint``: ``mint_span_context()``; ``piece_gen_tx``: ``generate_transaction_id()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_cases  # the shared stand-ins and SDK set-up

CASES = ("tx_prop", "tx_sfast", "tx_sexact", "tx_fast", "sendunder_sfast", "piece_mint",
         "piece_gen_tx")


def build(case: str) -> Callable[[], object]:
    """The function one call of ``case`` runs."""
    import hoptrace

    mode = case.partition("_")[2]
    if case.startswith("piece_"):
        from hoptrace.core import ids

        hoptrace.configure(propagation_only=True)
        pieces: dict[str, Callable[[], object]] = {
            "piece_mint": ids.mint_span_context, "piece_gen_tx": ids.generate_transaction_id}
        return pieces[case]
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
    while True:  # an open transaction the sampler dropped, kept open for every call
        scope = transaction("job").open()
        if scope.span is not None and not scope.span.get_span_context().trace_flags.sampled:
            break
        scope.close()
    return lambda: ck._produce(noop, None, "orders", (b"x",), {})


if __name__ == "__main__":
    raise SystemExit(callgrind_cases.cli(sys.argv[1:], __file__, CASES, build))
