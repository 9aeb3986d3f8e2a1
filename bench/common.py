"""Types shared by the benchmark runner and the benchmarks.

A benchmark module ``bench/bench_<name>.py`` exposes ``run(quick: bool) ->
BenchResult``. A result carries figures, each printed and plotted beside the
baseline measured in the same run, the targets judged on those figures, and
optionally raw sample distributions for the plot. Benchmarks report; they do
not gate: a missed target is a result, only a crash is a failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Direction = Literal["at_most", "at_least"]
T = TypeVar("T")


@dataclass(frozen=True)
class Measure:
    """One measured number: what it is, its value, its unit."""

    label: str
    value: float
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "unit": self.unit}


@dataclass(frozen=True)
class Figure:
    """A figure of the product, beside the baseline measured in the same run (if any)."""

    label: str
    value: float
    unit: str
    baseline: Measure | None = None

    @property
    def ratio(self) -> float | None:
        """value / baseline value, when both are comparable (same unit, non-zero baseline)."""
        if self.baseline is None or self.baseline.unit != self.unit or self.baseline.value == 0:
            return None
        return self.value / self.baseline.value

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "ratio_to_baseline": self.ratio,
        }


@dataclass(frozen=True)
class Target:
    """What a figure should reach, and whether it did."""

    description: str
    figure: str  # label of the figure the target is judged on
    limit: float
    unit: str
    direction: Direction
    measured: float

    @property
    def met(self) -> bool:
        if self.direction == "at_most":
            return self.measured <= self.limit
        return self.measured >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "figure": self.figure,
            "limit": self.limit,
            "unit": self.unit,
            "direction": self.direction,
            "measured": self.measured,
            "met": self.met,
        }


@dataclass(frozen=True)
class Distribution:
    """Raw per-operation samples (for the plot) and their summary (for the JSON)."""

    label: str
    unit: str
    samples: Sequence[float]

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, **summarise(self.samples)}


@dataclass
class BenchResult:
    name: str
    title: str
    figures: list[Figure]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    distributions: list[Distribution] = field(default_factory=list)

    def figure(self, label: str) -> Figure:
        for figure in self.figures:
            if figure.label == label:
                return figure
        raise KeyError(label)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "parameters": self.parameters,
            "figures": [figure.to_json() for figure in self.figures],
            "targets": [target.to_json() for target in self.targets],
            "all_targets_met": all(target.met for target in self.targets),
            "notes": self.notes,
            "distributions": [distribution.summary() for distribution in self.distributions],
        }


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not sorted_samples:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return float(sorted_samples[rank - 1])


def summarise(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    count = len(ordered)
    return {
        "count": count,
        "mean": sum(ordered) / count if count else math.nan,
        "min": ordered[0] if count else math.nan,
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if count else math.nan,
    }


def mean(samples: Sequence[float]) -> float:
    return sum(samples) / len(samples) if samples else math.nan


@dataclass
class TwoStepSamples:
    """Per-operation wall and CPU times (µs) of an operation made of two steps, plus loop totals."""

    first_wall_us: list[float] = field(default_factory=list)
    second_wall_us: list[float] = field(default_factory=list)
    first_cpu_us: list[float] = field(default_factory=list)
    second_cpu_us: list[float] = field(default_factory=list)
    loop_wall_s: float = 0.0
    loop_cpu_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.first_wall_us)

    @property
    def total_wall_us(self) -> list[float]:
        return [a + b for a, b in zip(self.first_wall_us, self.second_wall_us, strict=True)]

    @property
    def per_second(self) -> float:
        """Operations per second over the whole loop (wall clock, timing overhead included)."""
        return self.count / self.loop_wall_s

    @property
    def cpu_us_per_op(self) -> float:
        """CPU time (time.process_time) of the whole loop per operation, µs."""
        return self.loop_cpu_s * 1e6 / self.count


def time_two_steps(first: Callable[[], T], second: Callable[[T], object], count: int) -> TwoStepSamples:
    """Run ``second(first())`` ``count`` times, timing each step's wall and CPU time.

    CPU time is ``time.process_time``: the whole process, so this is only
    meaningful single-threaded (as the benchmarks are).
    """
    samples = TwoStepSamples()
    wall, cpu = time.perf_counter_ns, time.process_time_ns
    loop_wall, loop_cpu = wall(), cpu()
    for _ in range(count):
        w0, c0 = wall(), cpu()
        intermediate = first()
        w1, c1 = wall(), cpu()
        second(intermediate)
        w2, c2 = wall(), cpu()
        samples.first_wall_us.append((w1 - w0) / 1e3)
        samples.second_wall_us.append((w2 - w1) / 1e3)
        samples.first_cpu_us.append((c1 - c0) / 1e3)
        samples.second_cpu_us.append((c2 - c1) / 1e3)
    samples.loop_wall_s = (wall() - loop_wall) / 1e9
    samples.loop_cpu_s = (cpu() - loop_cpu) / 1e9
    return samples
