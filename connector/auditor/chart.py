"""Bar charts of transfers and bytes per day, laid out on the server as SVG geometry.

The template draws the bars; every chart also has a text summary (its accessible
description) and the page prints the same figures as a data table.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.auditor.timeline import DailyTotals

WIDTH = 720
HEIGHT = 180
LEFT = 70  # room for the scale's labels
BOTTOM = 24  # room for the date labels
TOP = 12


def human_bytes(count: int) -> str:
    """``1.5 MB`` (decimal units, as storage is sold)."""
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} bytes"  # pragma: no cover


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # "2026-11-20: 3 transfers"


@dataclass(frozen=True)
class Tick:
    x: float
    text: str
    anchor: str  # the first label starts at its bar, the last ends at its bar: neither is cut off


@dataclass(frozen=True)
class BarChart:
    id: str
    title: str
    summary: str
    bars: list[Bar]
    ticks: list[Tick]
    scale_label: str  # the largest value, at the top of the scale
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM


def _chart(
    chart_id: str, title: str, summary: str, values: list[tuple[str, int, str]], top_label: str
) -> BarChart:
    plot_width = WIDTH - LEFT - 8
    plot_height = HEIGHT - BOTTOM - TOP
    peak = max((v for _, v, _ in values), default=0)
    step = plot_width / max(len(values), 1)
    bars = []
    for position, (day, value, words) in enumerate(values):
        height = 0.0 if peak == 0 else plot_height * value / peak
        bars.append(
            Bar(
                x=round(LEFT + position * step + step * 0.1, 2),
                y=round(HEIGHT - BOTTOM - height, 2),
                width=round(max(step * 0.8, 1.0), 2),
                height=round(height, 2),
                label=f"{day}: {words}",
            )
        )
    last = len(values) - 1
    marks = sorted({0, last // 2, last}) if values else []
    ticks = [
        Tick(
            round(LEFT + p * step + (0 if p == 0 else step if p == last else step / 2), 2),
            values[p][0],
            "start" if p == 0 else "end" if p == last else "middle",
        )
        for p in marks
    ]
    return BarChart(chart_id, title, summary, bars, ticks, top_label if peak else "0")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def transfer_charts(totals: DailyTotals) -> tuple[BarChart, BarChart]:
    days = totals.days
    span = f"from {days[0].day} to {days[-1].day}" if days else "in no day"
    busiest = max(days, key=lambda d: d.transfers, default=None)
    busiest_text = (
        f" The busiest day was {busiest.day} with {_plural(busiest.transfers, 'transfer')}."
        if busiest and busiest.transfers
        else ""
    )
    counts = _chart(
        "chart-transfers",
        "Completed transfers per day",
        f"{_plural(totals.transfers, 'completed transfer')} {span}.{busiest_text}",
        [(d.day.isoformat(), d.transfers, _plural(d.transfers, "transfer")) for d in days],
        str(max((d.transfers for d in days), default=0)),
    )
    heaviest = max(days, key=lambda d: d.bytes, default=None)
    heaviest_text = (
        f" The most was {human_bytes(heaviest.bytes)} on {heaviest.day}."
        if heaviest and heaviest.bytes
        else ""
    )
    sizes = _chart(
        "chart-bytes",
        "Bytes transferred per day",
        f"{human_bytes(totals.bytes)} transferred {span}.{heaviest_text}",
        [(d.day.isoformat(), d.bytes, human_bytes(d.bytes)) for d in days],
        human_bytes(max((d.bytes for d in days), default=0)),
    )
    return counts, sizes
