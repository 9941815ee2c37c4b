"""Small inline SVG charts for the report: lines over epochs, grouped bars, a reliability diagram.

Inline SVG keeps `report.html` one self-contained file that any browser draws without a
plotting library, a script or a network fetch. The SVG carries no namespace URL (an HTML
parser does not need one), so the page holds no http(s) URL at all. Every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 420, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 12, 26, 54
# Okabe-Ito: distinguishable by colour-blind readers.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")


@dataclass
class Series:
    name: str
    values: Sequence[float | None]  # one per x position; None leaves a gap


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _scale(lo: float, hi: float, size: float, flip: bool) -> Callable[[float], float]:
    span = hi - lo or 1.0
    return lambda v: (size - (v - lo) / span * size) if flip else ((v - lo) / span * size)


def _frame(title: str, y_lo: float, y_hi: float, x_labels: Sequence[str], x_title: str) -> list[str]:
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    y = _scale(y_lo, y_hi, plot_h, flip=True)
    parts = [f'<text x="{WIDTH / 2:.0f}" y="16" text-anchor="middle" class="title">{escape(title)}</text>']
    for i in range(5):
        value = y_lo + (y_hi - y_lo) * i / 4
        top = MARGIN_TOP + y(value)
        parts.append(f'<line x1="{MARGIN_LEFT}" y1="{top:.1f}" x2="{MARGIN_LEFT + plot_w}" y2="{top:.1f}" '
                     'class="gridline"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 4}" y="{top + 3:.1f}" text-anchor="end">{escape(_fmt(value))}</text>')
    step = max(1, math.ceil(len(x_labels) / 10))
    slot = plot_w / max(1, len(x_labels))
    for i, label in enumerate(x_labels):
        if i % step == 0 or i == len(x_labels) - 1:
            left = MARGIN_LEFT + slot * (i + 0.5)
            parts.append(f'<text x="{left:.1f}" y="{MARGIN_TOP + plot_h + 13}" text-anchor="middle">'
                         f'{escape(label)}</text>')
    parts.append(f'<text x="{MARGIN_LEFT + plot_w / 2:.0f}" y="{MARGIN_TOP + plot_h + 26}" text-anchor="middle">'
                 f'{escape(x_title)}</text>')
    parts.append(f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" class="axes"/>')
    return parts


def _legend(names: Sequence[str], colours: Sequence[str] = PALETTE) -> list[str]:
    parts, left = [], MARGIN_LEFT
    top = HEIGHT - 12
    for i, name in enumerate(names):
        colour = colours[i % len(colours)]
        parts.append(f'<rect x="{left}" y="{top - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + 14}" y="{top + 1}">{escape(name)}</text>')
        left += 22 + 6.5 * len(name)
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>")


def _bounds(series: Sequence[Series], floor: float | None) -> tuple[float, float]:
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if floor is not None:
        lo = min(lo, floor)
    if hi == lo:
        hi = lo + 1.0
    return lo, hi + (hi - lo) * 0.05


def line_chart(title: str, x_labels: Sequence[str], series: Sequence[Series], x_title: str = "epoch",
               y_range: tuple[float, float] | None = None) -> str:
    """One polyline (with dots) per series over shared x positions."""
    lo, hi = y_range or _bounds(series, floor=0.0)
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    y = _scale(lo, hi, plot_h, flip=True)
    slot = plot_w / max(1, len(x_labels))
    parts = _frame(title, lo, hi, x_labels, x_title)
    for i, line in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = [(MARGIN_LEFT + slot * (j + 0.5), MARGIN_TOP + y(v)) for j, v in enumerate(line.values)
                  if v is not None and math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in points]
    parts += _legend([line.name for line in series])
    return _svg(parts, title)


def bar_chart(title: str, x_labels: Sequence[str], series: Sequence[Series], x_title: str = "",
              y_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Grouped bars: one group per x label, one bar per series."""
    lo, hi = y_range
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    y = _scale(lo, hi, plot_h, flip=True)
    slot = plot_w / max(1, len(x_labels))
    bar = slot * 0.8 / max(1, len(series))
    parts = _frame(title, lo, hi, x_labels, x_title)
    for i, group in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for j, value in enumerate(group.values):
            if value is None:
                continue
            top = MARGIN_TOP + y(min(max(value, lo), hi))
            left = MARGIN_LEFT + slot * j + slot * 0.1 + bar * i
            parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                         f'height="{MARGIN_TOP + plot_h - top:.1f}" fill="{colour}">'
                         f'<title>{escape(group.name)} {escape(x_labels[j])}: {value:.3f}</title></rect>')
    parts += _legend([group.name for group in series])
    return _svg(parts, title)


def reliability_chart(title: str, bins: Sequence[dict]) -> str:
    """Accuracy per confidence bin as bars, the diagonal of perfect calibration, and bin counts."""
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    labels = [f"{b['hi']:.2f}" for b in bins]
    parts = _frame(title, 0.0, 1.0, labels, "confidence (bin upper edge)")
    slot = plot_w / max(1, len(bins))
    for j, b in enumerate(bins):
        if not b["count"]:
            continue
        top = MARGIN_TOP + plot_h * (1.0 - b["accuracy"])
        parts.append(f'<rect x="{MARGIN_LEFT + slot * j + 1:.1f}" y="{top:.1f}" width="{slot - 2:.1f}" '
                     f'height="{MARGIN_TOP + plot_h - top:.1f}" fill="{PALETTE[0]}">'
                     f'<title>({b["lo"]:.2f}, {b["hi"]:.2f}]: {b["count"]} images, accuracy {b["accuracy"]:.3f}, '
                     f'confidence {b["confidence"]:.3f}</title></rect>')
        gap_top = MARGIN_TOP + plot_h * (1.0 - b["confidence"])
        parts.append(f'<line x1="{MARGIN_LEFT + slot * j + 1:.1f}" y1="{gap_top:.1f}" '
                     f'x2="{MARGIN_LEFT + slot * (j + 1) - 1:.1f}" y2="{gap_top:.1f}" stroke="{PALETTE[4]}" '
                     'stroke-width="2"/>')
    parts.append(f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP + plot_h}" x2="{MARGIN_LEFT + plot_w}" y2="{MARGIN_TOP}" '
                 'stroke="#888" stroke-dasharray="4 3"/>')
    parts += _legend(["accuracy", "mean confidence", "perfect calibration"], (PALETTE[0], PALETTE[4], "#888"))
    return _svg(parts, title)
