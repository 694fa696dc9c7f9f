"""libFuzzer (atheris) harness for ``hoptrace.extract`` over every carrier shape.

Run::

    python tests/fuzz/fuzz_extract.py -runs=20000 -seed=1

Each input is decoded into a carrier (dict, list of pairs, tuple of pairs, immutable
mapping, confluent-style list with None values, or a junk object) holding header values as
str, bytes, bytearray, int, None, nested containers or hostile objects. ``extract`` must never
raise, and what it returns must be valid: trace ID 32 lowercase hex and not zero, transaction
ID matching ``TRANSACTION_ID_PATTERN``, no CR/LF, and re-injected headers printable ASCII.
Any violation raises, which libFuzzer reports as a crash (non-zero exit).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import ExplodingMapping, Junk

with atheris.instrument_imports(include=["hoptrace"]):
    from opentelemetry import baggage, trace

    import hoptrace
    from hoptrace._config import TRANSACTION_ID_PATTERN

TRACE_ID = re.compile(r"[0-9a-f]{32}")
PRINTABLE = re.compile(r"[\x20-\x7e]*")
NAMES = ("traceparent", "tracestate", "baggage", "x-transaction-id", "x-hoptrace-sent-ns",
         "TraceParent", "other")
#: Well-formed values the fuzzer mutates around, so it starts near the interesting paths.
TEMPLATES = (
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra",
    "vendor=x1,other@t=y",
    "transaction.id=abc-123,tenant=acme%20co;p=1",
    "abc-123",
    "1732400000000000000",
    "",
)


def text(fdp: atheris.FuzzedDataProvider) -> str:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80)))
    base = TEMPLATES[fdp.ConsumeIntInRange(0, len(TEMPLATES) - 1)]
    if mode == 1:
        return base
    cut = fdp.ConsumeIntInRange(0, len(base))
    insert = str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 4)))
    if mode == 2:
        return base[:cut] + insert + base[cut:]
    return base[:cut] + insert + base[cut + 1:]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 11)
    if kind <= 3:
        return text(fdp)
    if kind <= 5:
        raw = text(fdp).encode("utf-8")
        return raw if kind == 4 else raw + fdp.ConsumeBytes(2)
    if kind == 6:
        return bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
    if kind == 7:
        return None
    if kind == 8:
        return fdp.ConsumeInt(8)
    if kind == 9 and depth < 2:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 10 and depth < 2:
        return {text(fdp): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return Junk()


def name(fdp: atheris.FuzzedDataProvider) -> Any:
    choice = fdp.ConsumeIntInRange(0, len(NAMES) + 2)
    if choice < len(NAMES):
        return NAMES[choice]
    if choice == len(NAMES):
        return NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)].encode("ascii")
    if choice == len(NAMES) + 1:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
    return text(fdp)


def carrier(fdp: atheris.FuzzedDataProvider) -> Any:
    shape = fdp.ConsumeIntInRange(0, 7)
    count = fdp.ConsumeIntInRange(0, 8)
    if shape in (0, 3):
        mapping = {str(name(fdp)): value(fdp) for _ in range(count)}
        return mapping if shape == 0 else MappingProxyType(mapping)
    if shape in (1, 2):
        items: list[Any] = []
        for _ in range(count):
            item_kind = fdp.ConsumeIntInRange(0, 5)
            if item_kind <= 3:
                items.append((name(fdp), value(fdp)))
            elif item_kind == 4:
                items.append(value(fdp))
            else:
                items.append((name(fdp), value(fdp), value(fdp)))
        return items if shape == 1 else tuple(items)
    if shape == 4:  # confluent-kafka list headers, None values allowed
        return [(NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)],
                 None if fdp.ConsumeBool() else text(fdp).encode("utf-8")) for _ in range(count)]
    if shape == 5:
        return ExplodingMapping()
    if shape == 6:
        return Junk()
    return value(fdp)


def check(ctx: Any) -> None:
    trace_id = hoptrace.current_trace_id(ctx)
    if trace_id is not None:
        if not TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
            raise AssertionError(f"invalid trace id {trace_id!r}")
        state = trace.get_current_span(ctx).get_span_context().trace_state.to_header()
        if "\r" in state or "\n" in state:
            raise AssertionError(f"CR/LF in tracestate {state!r}")
    tx = hoptrace.current_transaction_id(ctx)
    if tx is not None and not TRANSACTION_ID_PATTERN.fullmatch(tx):
        raise AssertionError(f"invalid transaction id {tx!r}")
    for key in baggage.get_all(ctx):
        if "\r" in key or "\n" in key:
            raise AssertionError(f"CR/LF in baggage key {key!r}")
    for header, text_value in hoptrace.inject({}, context=ctx).items():
        if not PRINTABLE.fullmatch(text_value):
            raise AssertionError(f"unprintable re-injected {header}: {text_value!r}")
    if hoptrace.current_transaction_id() is not None:
        raise AssertionError("extract attached a context")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    check(hoptrace.extract(carrier(fdp)))


def main() -> None:
    import logging

    logging.getLogger("hoptrace").setLevel(logging.CRITICAL)  # rejections warn by design
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
