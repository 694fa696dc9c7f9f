"""bench/metrics_bench.py's floor exports what hoptrace exports, and the target row says
whether target 6 can be reached at all (bench/run.py's ``_metrics_figure``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.trace import TracerProvider

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import metrics_bench  # noqa: E402  (bench/ is not a package)
import run  # noqa: E402

#: The floor makes the explicit-bucket aggregation's and the exemplar reservoir's own steps:
#: an SDK without exemplars (before 1.22) has neither.
needs_exemplars = pytest.mark.skipif(
    "exemplars" not in getattr(HistogramDataPoint, "__dataclass_fields__", {}),
    reason="this opentelemetry-sdk records no exemplars",
)


@needs_exemplars
def test_the_floors_export_what_hoptrace_exports() -> None:
    metrics_bench.check_floor(TracerProvider(), messages=5)


@needs_exemplars
def test_a_floor_feeding_a_wrong_aggregation_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A floor whose queue wait lands in the process histogram: check_floor refuses it.
    bind = metrics_bench.AggregationFloor.bind

    def swapped(self: Any) -> None:
        bind(self)
        operation, process, _ = self.aggregations
        self.aggregations = (operation, process, process)

    monkeypatch.setattr(metrics_bench.AggregationFloor, "bind", swapped)
    with pytest.raises(AssertionError, match="floor exports other metrics"):
        metrics_bench.check_floor(TracerProvider(), messages=5)


def figure(floor_pct: float, hop_pct: float) -> tuple[bool | None, str]:
    spans = 400_000
    counts = {"spans": spans, "floor": int(spans * (1 + floor_pct / 100)),
              "spans_metrics": int(spans * (1 + hop_pct / 100))}
    data = {"targets": {"x": False}, "overheads": {"metrics_over_spans_pct": 30.0},
            "instructions_over_spans_pct": {"spans_metrics": hop_pct, "sdk_api": 85.0,
                                            "spans_metrics_pathway": hop_pct + 6.1},
            "floor": metrics_bench._floor_verdict(counts)}
    found = run._metrics_figure(data)
    assert found is not None
    return found


def test_the_row_says_how_far_above_a_reachable_floor() -> None:
    met, text = figure(5.5, 16.8)
    assert met is False
    assert "+5.5%, so +10% is within reach" in text and "11.3 points above the floor" in text
    assert "(the default metrics; with the opt-in pathway on too: +22.9%)" in text
    assert figure(5.5, 9.0)[0] is True  # (the verdict: instructions, when counted)


def test_the_row_says_out_of_reach_when_the_floor_alone_is_over() -> None:
    met, text = figure(12.0, 20.0)
    assert met is False
    assert "OUT OF REACH: the floor alone" in text and "+12.0%" in text
