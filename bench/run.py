"""Run the benchmarks: ``python -m bench.run [--quick] [--only NAME] [--out DIR]``.

Every ``bench/bench_<name>.py`` module is discovered and its ``run(quick)``
called. Each figure is printed beside the baseline measured in the same run;
``<out>/<name>.json`` and ``<out>/<name>.png`` are written per benchmark.

The exit code is 0 even when a target is missed (benchmarks report, they do
not gate); it is 1 when a benchmark crashed and 2 for a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes  # after choosing the backend
from matplotlib.figure import Figure as MplFigure

from bench.common import BenchResult, Figure

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
PREFIX = "bench_"
Runner = Callable[[bool], BenchResult]


def discover() -> dict[str, str]:
    """Benchmark name -> module name, for every bench/bench_*.py."""
    found = {}
    for info in pkgutil.iter_modules([str(BENCH_DIR)]):
        if info.name.startswith(PREFIX) and not info.ispkg:
            found[info.name.removeprefix(PREFIX)] = f"bench.{info.name}"
    return dict(sorted(found.items()))


def load_runner(module: ModuleType) -> Runner:
    run = getattr(module, "run", None)
    if not callable(run):
        raise TypeError(f"{module.__name__} has no run(quick: bool) -> BenchResult function")
    runner: Runner = run
    return runner


# ---------------------------------------------------------------------------- printing


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def render_table(result: BenchResult) -> str:
    header = ("figure", "value", "baseline (same run)", "baseline value", "ratio")
    rows: list[tuple[str, ...]] = [header]
    for figure in result.figures:
        base = figure.baseline
        ratio = figure.ratio
        rows.append(
            (
                figure.label,
                format_value(figure.value, figure.unit),
                base.label if base else "-",
                format_value(base.value, base.unit) if base else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 3, 4}
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_report(result: BenchResult, seconds: float) -> str:
    params = ", ".join(f"{key}={value}" for key, value in result.parameters.items())
    parts = [
        f"== {result.name}: {result.title}",
        f"   ({params}; took {seconds:.1f} s)",
        "",
        render_table(result),
    ]
    if result.targets:
        parts.append("")
        for target in result.targets:
            sign = "≤" if target.direction == "at_most" else "≥"
            verdict = "MET" if target.met else "NOT MET"
            parts.append(
                f"target: {target.description}: {target.figure} {sign} {format_value(target.limit, target.unit)}"
                f" — measured {format_value(target.measured, target.unit)} → {verdict}"
            )
    if result.notes:
        parts.append("")
        parts.extend(f"note: {note}" for note in result.notes)
    return "\n".join(parts)


# ---------------------------------------------------------------------------- plotting


def _wrap(label: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _plot_unit(axes: Axes, unit: str, figures: Sequence[Figure], result: BenchResult) -> None:
    positions = list(range(len(figures)))
    height = 0.38
    values = [figure.value for figure in figures]
    baselines = [figure.baseline.value if figure.baseline else 0.0 for figure in figures]
    product = axes.barh(
        [p - height / 2 for p in positions], values, height, label="measured", color="#2f6db5"
    )
    base = axes.barh(
        [p + height / 2 for p in positions], baselines, height, label="baseline (same run)", color="#b0b0b0"
    )
    axes.bar_label(product, labels=[format_value(v, unit) for v in values], padding=3, fontsize=7)
    axes.bar_label(
        base,
        labels=[
            f"{format_value(f.baseline.value, f.baseline.unit)} ({_wrap(f.baseline.label, 60)})"
            if f.baseline
            else ""
            for f in figures
        ],
        padding=3,
        fontsize=7,
        color="#555555",
    )
    axes.set_yticks(positions, [_wrap(figure.label) for figure in figures], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    axes.margins(x=0.45)
    labels = {figure.label for figure in figures}
    for target in result.targets:
        if target.unit == unit and target.figure in labels:
            verdict = "met" if target.met else "not met"
            axes.axvline(target.limit, color="#c0392b", linestyle="--", linewidth=1)
            axes.annotate(
                f"target {format_value(target.limit, unit)} ({verdict})",
                (target.limit, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="#c0392b",
                xytext=(3, -10),
                textcoords="offset points",
            )


def _plot_distributions(axes: Axes, result: BenchResult) -> None:
    pooled = [value for d in result.distributions for value in d.samples if value > 0]
    if not pooled:
        axes.set_axis_off()
        return
    low, high = min(pooled), max(pooled)
    bins = [low * (high / low) ** (i / 80) for i in range(81)] if high > low else 20
    for distribution in result.distributions:
        axes.hist(
            [v for v in distribution.samples if v > 0], bins=bins, histtype="step", linewidth=1.2,
            label=distribution.label,
        )  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel(f"per-operation latency ({result.distributions[0].unit}, log scale)")
    axes.set_ylabel("operations")
    axes.legend(fontsize=7)


def plot(result: BenchResult, path: Path) -> None:
    by_unit: dict[str, list[Figure]] = {}
    for figure in result.figures:
        by_unit.setdefault(figure.unit, []).append(figure)
    panels = len(by_unit) + (1 if result.distributions else 0)
    heights = [max(1.6, 0.75 * len(figures) + 0.8) for figures in by_unit.values()]
    if result.distributions:
        heights.append(3.2)
    canvas = MplFigure(figsize=(12, sum(heights) + 1.0), layout="constrained")
    grid = canvas.add_gridspec(panels, 1, height_ratios=heights)
    for index, (unit, figures) in enumerate(by_unit.items()):
        _plot_unit(canvas.add_subplot(grid[index]), unit, figures, result)
    if result.distributions:
        _plot_distributions(canvas.add_subplot(grid[panels - 1]), result)
    if by_unit:
        handles, labels = canvas.axes[0].get_legend_handles_labels()
        canvas.legend(handles, labels, loc="outside upper right", fontsize=8, ncols=2)
    met = ", ".join(f"target {'met' if t.met else 'NOT met'}" for t in result.targets)
    canvas.suptitle(f"{result.name}: {result.title}" + (f" — {met}" if met else ""), fontsize=10)
    canvas.savefig(path, dpi=110)


# ---------------------------------------------------------------------------- running


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("cryptography", "joserfc", "sqlalchemy", "sqlmodel", "psycopg"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }


def reference_workload_ms(rounds: int = 3) -> float:
    """CPU milliseconds of a fixed pure-Python workload (JSON, hashing, dicts), best of ``rounds``.

    The same code's figures on a shared virtual machine drift with the machine's speed (up to 2x
    within an hour here); measured before and after a benchmark, this says how fast the machine
    was meanwhile, so that runs of different days can be compared.
    """
    document = {"items": [{"id": f"urn:uuid:{i:032d}", "n": i, "tags": ["a", "b", "c"]} for i in range(200)]}
    best = math.inf
    for _ in range(rounds):
        began = time.thread_time()
        for _ in range(40):
            text = json.dumps(document, sort_keys=True)
            decoded = json.loads(text)
            index = {item["id"]: item for item in decoded["items"]}
            hashlib.sha256("".join(sorted(index)).encode()).hexdigest()
        best = min(best, (time.thread_time() - began) * 1000)
    return best


def run_one(name: str, module_name: str, quick: bool, out: Path) -> bool:
    """Run one benchmark, print and write its results; False when it crashed."""
    print(f"-- running {name} ({'quick' if quick else 'full'}) ...", flush=True)
    started = datetime.now(UTC)
    speed_before = reference_workload_ms()
    clock = time.perf_counter()
    try:
        result = load_runner(importlib.import_module(module_name))(quick)
        if not isinstance(result, BenchResult):
            raise TypeError(f"{module_name}.run returned {type(result).__name__}, not BenchResult")
    except Exception:
        print(f"!! benchmark {name} crashed:", file=sys.stderr)
        traceback.print_exc()
        return False
    seconds = time.perf_counter() - clock
    speed_after = reference_workload_ms()
    result.notes.append(
        f"machine speed: a fixed Python workload (bench.run.reference_workload_ms) took {speed_before:.1f} ms "
        f"CPU before this benchmark and {speed_after:.1f} ms after; the same code's figures scale with it"
    )
    print(render_report(result, seconds), flush=True)
    document = {
        **result.to_json(),
        "quick": quick,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 3),
        "environment": {
            **environment(),
            "reference_workload_ms": [round(speed_before, 2), round(speed_after, 2)],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    json_path.write_text(
        json.dumps(document, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
    )
    try:
        plot(result, png_path)
    except Exception:
        print(f"!! plotting {name} failed:", file=sys.stderr)
        traceback.print_exc()
        return False
    print(f"\nwrote {json_path} and {png_path}\n", flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations (smoke run, figures less stable)"
    )
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)

    available = discover()
    selected = available
    if args.only:
        wanted = [name.removeprefix(PREFIX).removesuffix(".py") for name in args.only]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            print(
                f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available) or 'none'}",
                file=sys.stderr,
            )
            return 2
        selected = {name: available[name] for name in wanted}
    if not selected:
        print("no benchmarks found (bench/bench_*.py)", file=sys.stderr)
        return 2

    crashed = [name for name, module in selected.items() if not run_one(name, module, args.quick, args.out)]
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
