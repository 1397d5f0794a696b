"""The results figure, drawn with Pillow (already a dev dependency) rather than matplotlib.

Panels are bar charts (one group per case, one bar per contender, a whisker from the fastest
to the slowest repeat) and a log-log line chart for the concurrency sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: A value with its spread: (median, min, max).
Point = tuple[float, float, float]

PANEL_W, PANEL_H = 620, 400
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 20, 62, 50
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)
COLORS = {
    "ours-edit": (31, 119, 180),
    "ours-batch": (44, 160, 44),
    "fal-client": (255, 127, 14),
    "floor": (127, 127, 127),
    "ours-download": (24, 110, 24),
    "ours-download-sha256": (152, 223, 138),
    "bare-download": (80, 80, 80),
}
_FALLBACK_COLORS = ((148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def color(name: str) -> tuple[int, int, int]:
    return COLORS.get(name, _FALLBACK_COLORS[hash(name) % len(_FALLBACK_COLORS)])


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2 or 5 times a power of ten) up to at least ``top``."""
    if top <= 0 or math.isnan(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _label(value: float) -> str:
    """At most three significant digits: 0.91, 12.3, 287, 1.23k."""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


@dataclass
class Panel:
    """One chart's frame: its box on the canvas and how values map to pixels."""

    draw: ImageDraw.ImageDraw
    left: int
    top: int
    title: str
    unit: str

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        return (
            self.left + MARGIN_L,
            self.top + MARGIN_T,
            self.left + PANEL_W - MARGIN_R,
            self.top + PANEL_H - MARGIN_B,
        )

    def frame(self, names: Sequence[str]) -> None:
        """The title with its unit, a one-line legend under it, and the y axis line."""
        x0, y0, _, y1 = self.plot_box
        title = f"{self.title} ({self.unit})"
        self.draw.text((self.left + 10, self.top + 8), title, fill=INK, font=_font(15))
        font, x, y = _font(11), self.left + 10, self.top + 32
        for name in names:
            self.draw.rectangle([x, y + 2, x + 10, y + 12], fill=color(name))
            self.draw.text((x + 14, y), name, fill=INK, font=font)
            x += 26 + int(self.draw.textlength(name, font=font))
        self.draw.line([(x0, y0), (x0, y1)], fill=INK)

    def y_axis(self, ticks: Sequence[float], to_y: Callable[[float], float]) -> None:
        x0, _, x1, _ = self.plot_box
        for tick in ticks:
            y = to_y(tick)
            self.draw.line([(x0, y), (x1, y)], fill=GRID)
            self.draw.text((x0 - 8, y), _label(tick), fill=INK, font=_font(11), anchor="rm")

    def whisker(self, x: float, low: float, high: float, ink: tuple[int, int, int]) -> None:
        self.draw.line([(x, low), (x, high)], fill=ink)
        for y in (low, high):
            self.draw.line([(x - 4, y), (x + 4, y)], fill=ink)


def bar_panel(
    panel: Panel,
    groups: Sequence[str],
    series: Sequence[str],
    values: Mapping[tuple[str, str], Point],
) -> None:
    """Grouped bars with min-max whiskers; each group shows the series it has, centred."""
    panel.frame(series)
    x0, y0, x1, y1 = panel.plot_box
    top = max((v[2] for v in values.values() if not math.isnan(v[2])), default=1.0)
    ticks = nice_ticks(top * 1.08)  # headroom for the value labels

    def to_y(v: float) -> float:
        return y1 - (y1 - y0) * v / ticks[-1]

    panel.y_axis(ticks, to_y)
    present = {
        g: [n for n in series if (g, n) in values and not math.isnan(values[g, n][0])]
        for g in groups
    }
    group_w = (x1 - x0) / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, *(len(names) for names in present.values()))
    for index, group in enumerate(groups):
        centre = x0 + (index + 0.5) * group_w
        panel.draw.text((centre, y1 + 6), group, fill=INK, font=_font(12), anchor="mt")
        names = present[group]
        for position, name in enumerate(names):
            median, low, high = values[group, name]
            left = centre + (position - len(names) / 2) * bar_w
            mid = left + bar_w / 2
            panel.draw.rectangle([left + 2, to_y(median), left + bar_w - 2, y1], fill=color(name))
            panel.whisker(mid, to_y(low), to_y(high), INK)
            label = _label(median)
            panel.draw.text((mid, to_y(high) - 2), label, fill=INK, font=_font(10), anchor="mb")
    panel.draw.line([(x0, y1), (x1, y1)], fill=INK)


def line_panel(panel: Panel, xs: Sequence[int], series: Mapping[str, Sequence[Point]]) -> None:
    """Log-log lines, one per series, with min-max whiskers at each x."""
    panel.frame(list(series))
    x0, y0, x1, y1 = panel.plot_box
    finite = [v for points in series.values() for p in points for v in p if v > 0]
    low = 10 ** math.floor(math.log10(min(finite, default=1.0)))
    high = 10 ** math.ceil(math.log10(max(finite, default=10.0)))
    span = math.log10(high) - math.log10(low) or 1.0
    lx0, lx1 = math.log2(min(xs)), math.log2(max(xs))

    def to_x(x: float) -> float:
        return x0 + 20 + (x1 - x0 - 40) * (math.log2(x) - lx0) / ((lx1 - lx0) or 1)

    def to_y(v: float) -> float:
        return y1 - (y1 - y0) * (math.log10(v) - math.log10(low)) / span

    panel.y_axis([low * 10**i for i in range(round(span) + 1)], to_y)
    for x in xs:
        panel.draw.text((to_x(x), y1 + 6), str(x), fill=INK, font=_font(12), anchor="mt")
    middle = ((x0 + x1) / 2, y1 + 26)
    panel.draw.text(middle, "jobs in flight", fill=INK, font=_font(12), anchor="mt")
    panel.draw.line([(x0, y1), (x1, y1)], fill=INK)
    for name, points in series.items():
        shown = [(x, p) for x, p in zip(xs, points, strict=True) if p[0] > 0]
        ink = color(name)
        panel.draw.line([(to_x(x), to_y(p[0])) for x, p in shown], fill=ink, width=3)
        for x, (median, low_v, high_v) in shown:
            cx, cy = to_x(x), to_y(median)
            panel.draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=ink)
            panel.whisker(cx, to_y(low_v), to_y(high_v), ink)


@dataclass(frozen=True)
class BarSpec:
    """A bar panel to draw: title, y label, groups, series and their values."""

    title: str
    unit: str
    groups: Sequence[str]
    series: Sequence[str]
    values: Mapping[tuple[str, str], Point]


@dataclass(frozen=True)
class LineSpec:
    """A line panel to draw: title, y label, x values and one series per contender."""

    title: str
    unit: str
    xs: Sequence[int]
    series: Mapping[str, Sequence[Point]]


def draw_figure(panels: Sequence[BarSpec | LineSpec], path: Path, caption: str) -> None:
    """Lay the panels out two per row and save a PNG."""
    if not panels:
        return
    rows = math.ceil(len(panels) / 2)
    image = Image.new("RGB", (PANEL_W * 2, PANEL_H * rows + 30), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for index, spec in enumerate(panels):
        left, top = (index % 2) * PANEL_W, (index // 2) * PANEL_H
        panel = Panel(draw, left, top, spec.title, spec.unit)
        if isinstance(spec, BarSpec):
            bar_panel(panel, spec.groups, spec.series, spec.values)
        else:
            line_panel(panel, spec.xs, spec.series)
    draw.text((10, PANEL_H * rows + 8), caption, fill=INK, font=_font(12))
    image.save(path)
