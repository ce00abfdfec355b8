"""A braille line plot of one metric for one or more runs, overlaid in distinct colours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

SERIES_STYLES = ("cyan", "magenta", "green", "yellow", "bright_red", "bright_blue", "white")
# Braille dot bits by (column in cell, row in cell): U+2800 + the OR of a cell's dots.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
Y_LABEL_WIDTH = 9


@dataclass(frozen=True)
class Series:
    """One run's values of the plotted key: (step, value) by step."""

    label: str
    points: Sequence[tuple[float, float]]


def axis_label(value: float) -> str:
    """A value in at most 8 characters."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


def plot_lines(series: Sequence[Series], width: int, height: int) -> list[Text]:
    """The plot as height lines of width cells: y labels, braille area, x axis, legend."""
    legend = Text()
    for i, s in enumerate(series):
        legend.append("● ", style=SERIES_STYLES[i % len(SERIES_STYLES)])
        legend.append(f"{s.label}  ")
    points = [p for s in series for p in s.points if math.isfinite(p[1])]
    plot_h = max(1, height - 2)  # rows left after the x axis and the legend
    plot_w = max(1, width - Y_LABEL_WIDTH)
    if not points:
        rows = [Text("") for _ in range(plot_h)]
        rows[plot_h // 2] = Text("  no values for this key yet", style="dim")
        return [*rows, Text(""), legend][:height]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    dots_w, dots_h = plot_w * 2, plot_h * 4
    grid = [[0] * plot_w for _ in range(plot_h)]
    owner = [[-1] * plot_w for _ in range(plot_h)]

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - x0) / (x1 - x0) * (dots_w - 1), (y1 - y) / (y1 - y0) * (dots_h - 1)

    for index, s in enumerate(series):
        previous: tuple[float, float] | None = None
        for x, y in s.points:
            if not math.isfinite(y):
                previous = None
                continue
            current = to_px(x, y)
            start = previous or current
            steps = max(1, int(max(abs(current[0] - start[0]), abs(current[1] - start[1]))))
            for k in range(steps + 1):
                px = round(start[0] + (current[0] - start[0]) * k / steps)
                py = round(start[1] + (current[1] - start[1]) * k / steps)
                cell_x, cell_y = px // 2, py // 4
                grid[cell_y][cell_x] |= _DOTS[px % 2][py % 4]
                owner[cell_y][cell_x] = index
            previous = current
    lines = []
    for row in range(plot_h):
        if row == 0:
            label = axis_label(y1)
        elif row == plot_h - 1:
            label = axis_label(y0)
        elif row == plot_h // 2 and plot_h > 4:
            label = axis_label((y0 + y1) / 2)
        else:
            label = ""
        line = Text(f"{label:>{Y_LABEL_WIDTH - 2}} ┤", style="dim")
        for col in range(plot_w):
            bits = grid[row][col]
            if bits:
                style = SERIES_STYLES[owner[row][col] % len(SERIES_STYLES)]
                line.append(chr(0x2800 + bits), style=style)
            else:
                line.append(" ")
        lines.append(line)
    left, right = axis_label(x0), f"step {axis_label(x1)}"
    ticks = Text(" " * (Y_LABEL_WIDTH - 1) + "└" + left, style="dim")
    ticks.append(" " * max(1, plot_w - len(left) - len(right)) + right, style="dim")
    return [*lines, ticks, legend][:height]


class MetricPlot(Widget):
    """Draws the series given to ``show``; redrawn on resize."""

    DEFAULT_CSS = """
    MetricPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.series: list[Series] = []

    def show(self, series: Sequence[Series]) -> None:
        self.series = list(series)
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if width < Y_LABEL_WIDTH + 4 or height < 3:
            return Text("")
        return Text("\n").join(plot_lines(self.series, width, height))
