"""What every benchmark reports: samples, their summary, the one-line result and its record.

A result is a figure of ours next to a baseline measured in the same run on the same machine,
and their ratio. The machine is shared and noisy, so the ratio is the number to read; the
absolute figures say how loaded the run was. Every figure comes with min/median/max over the
repetitions that produced it.

Scripts print one line per result and, given ``--results FILE``, append the same result as a
JSON line, which ``bench/run-all`` turns into ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["at_most", "at_least"]
#: How the repetitions of one figure make the figure: their median, or (for latencies whose
#: every repetition is a single sample, like one sync) their p50 or p99.
Statistic = Literal["median", "p50", "p99"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): with few samples p99 is the maximum, never an
    interpolation that no run actually showed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """min/median/max of one figure over repetitions (or over the samples of one run)."""

    count: int
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        found = [v for v in values if not math.isnan(v)]
        if not found:
            return cls(count=0, min=math.nan, median=math.nan, max=math.nan)
        return cls(
            count=len(found), min=min(found), median=statistics.median(found), max=max(found)
        )


@dataclass(frozen=True)
class Target:
    """``figure <= limit`` (or ``>=``), in the figure's unit; ``what`` is how the issue says it."""

    what: str
    limit: float
    direction: Direction = "at_most"
    #: What the limit applies to: the figure, the ratio figure/baseline, or the overhead
    #: figure - baseline.
    on: Literal["figure", "ratio", "overhead"] = "figure"

    def met(self, figure: float, baseline: float | None) -> bool | None:
        value: float | None = figure
        if self.on != "figure":
            if baseline is None or math.isnan(baseline) or not baseline:
                return None
            value = figure / baseline if self.on == "ratio" else figure - baseline
        if value is None or math.isnan(value):
            return None
        return value <= self.limit if self.direction == "at_most" else value >= self.limit


@dataclass(frozen=True, kw_only=True)
class Result:
    """One line of the benchmark table.

    ``figure`` is the median over repetitions of the per-repetition figure (a p99 latency, a
    duration, a rate) -- or their p99 where one repetition is one sample; ``spread`` summarises
    those repetitions. The baseline likewise.
    """

    bench: str
    case: str
    figure_name: str
    unit: str
    figure: float
    spread: Summary
    baseline_name: str | None = None
    baseline: float | None = None
    baseline_spread: Summary | None = None
    target: Target | None = None
    #: More figures of the same run worth a column (p50 next to p99, counts, ...).
    extra: dict[str, float | str] = field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.figure / self.baseline

    @property
    def met(self) -> bool | None:
        return self.target.met(self.figure, self.baseline) if self.target else None

    def line(self) -> str:
        parts = [
            f"#{self.bench} {self.case}: {self.figure_name} {fmt(self.figure, self.unit)}"
            f" ({spread_text(self.spread, self.unit)})"
        ]
        if self.baseline is not None and self.baseline_name:
            assert self.baseline_spread is not None
            parts.append(
                f"baseline {self.baseline_name} {fmt(self.baseline, self.unit)}"
                f" ({spread_text(self.baseline_spread, self.unit)})"
            )
        ratio = self.ratio
        parts.append(f"ratio {ratio:.2f}" if ratio is not None else "ratio -")
        if self.extra:
            parts.append(", ".join(f"{k} {v}" for k, v in self.extra.items()))
        if self.target is not None:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[self.met]
            parts.append(f"target {self.target.what}: {verdict}")
        if self.note:
            parts.append(self.note)
        return " | ".join(parts)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Result:
        """The inverse of :meth:`record` (what ``--results`` files hold)."""
        target = data.get("target")
        base_spread = data.get("baseline_spread")
        return cls(
            bench=str(data["bench"]),
            case=str(data["case"]),
            figure_name=str(data["figure_name"]),
            unit=str(data["unit"]),
            figure=float(data["figure"]),
            spread=Summary(**data["spread"]),
            baseline_name=data.get("baseline_name"),
            baseline=data.get("baseline"),
            baseline_spread=Summary(**base_spread) if base_spread else None,
            target=Target(**target) if target else None,
            extra=dict(data.get("extra") or {}),
            note=str(data.get("note") or ""),
        )

    def record(self) -> dict[str, object]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        data["line"] = self.line()
        return data


def fmt(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def spread_text(spread: Summary, unit: str) -> str:
    if spread.count <= 1:
        return f"1 run: {fmt(spread.median, unit)}"
    return (
        f"min/med/max {fmt(spread.min, unit)}/{fmt(spread.median, unit)}/"
        f"{fmt(spread.max, unit)} over {spread.count}"
    )


def result_of(
    *,
    bench: str,
    case: str,
    figure_name: str,
    unit: str,
    per_run: Sequence[float],
    statistic: Statistic = "median",
    baseline_name: str | None = None,
    baseline_per_run: Sequence[float] | None = None,
    target: Target | None = None,
    extra: dict[str, float | str] | None = None,
    note: str = "",
) -> Result:
    """The result of repetitions: one figure per run for us and, if any, for the baseline."""
    spread = Summary.of(per_run)
    base_spread = Summary.of(baseline_per_run) if baseline_per_run is not None else None
    return Result(
        bench=bench,
        case=case,
        figure_name=figure_name,
        unit=unit,
        figure=aggregate(per_run, statistic),
        spread=spread,
        baseline_name=baseline_name,
        baseline=aggregate(baseline_per_run, statistic) if baseline_per_run else None,
        baseline_spread=base_spread,
        target=target,
        extra=dict(extra or {}),
        note=note,
    )


def aggregate(values: Sequence[float], statistic: Statistic) -> float:
    if statistic == "median":
        return Summary.of(values).median
    return percentile(values, 0.5 if statistic == "p50" else 0.99)


class Reporter:
    """Prints each result as it comes and appends its record to ``--results`` if given."""

    def __init__(self, results_file: Path | None) -> None:
        self.results_file = results_file
        self.results: list[Result] = []

    def report(self, result: Result) -> None:
        self.results.append(result)
        print(result.line(), flush=True)
        if self.results_file is not None:
            with self.results_file.open("a") as out:
                out.write(json.dumps(result.record()) + "\n")

    def note(self, bench: str, text: str) -> None:
        """A measurement that could not be made, said as such rather than left out."""
        print(f"#{bench} {text}", flush=True)
        if self.results_file is not None:
            with self.results_file.open("a") as out:
                out.write(json.dumps({"bench": bench, "line": f"#{bench} {text}"}) + "\n")
