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

import collections
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import callgrind_cases  # the shared stand-ins and SDK set-up

CASES = ("tx_prop", "tx_sfast", "tx_sexact", "tx_fast", "sendunder_sfast", "piece_mint",
         "piece_gen_tx")
CALLS = 2000


def build(case: str) -> Callable[[], object]:
    """The function one call of ``case`` runs."""
    import hoptrace

    mode = case.partition("_")[2]
    if case.startswith("piece_"):
        from hoptrace.core import ids

        hoptrace.configure(propagation_only=True)
        return {"piece_mint": ids.mint_span_context,
                "piece_gen_tx": ids.generate_transaction_id}[case]
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


def run(case: str, calls: int) -> None:
    one = build(case)
    for _ in range(200):  # warm-up: caches, lazy imports, the probes
        one()
    collections.deque(itertools.starmap(one, itertools.repeat((), calls)), maxlen=0)


def count(case: str) -> int:
    """Instructions per call of ``case``, by callgrind."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--collect-atstart=no",
         "--toggle-collect=starmap_next", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", case, str(CALLS)],
        capture_output=True, text=True, check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(found.group(1)) // CALLS


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:
        run(argv[1], int(argv[2]))
        return 0
    for case in argv or CASES:
        print(f"{case:34} {count(case) / 1000:8.1f}k instructions per call", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
