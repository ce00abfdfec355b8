"""Benchmark results and the one table that prints them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADERS = ("benchmark", "cvtui", "baseline", "ratio", "target", "result", "notes")


@dataclass(frozen=True)
class Target:
    """A limit on the cvtui figure, or on cvtui / baseline when on_ratio."""

    limit: float
    on_ratio: bool = False
    strict: bool = False  # `<` instead of `<=`

    def describe(self, unit: str) -> str:
        sign = "<" if self.strict else "<="
        return f"ratio {sign} {self.limit:g}" if self.on_ratio else f"{sign} {self.limit:g} {unit}"

    def met_by(self, value: float) -> bool:
        return value < self.limit if self.strict else value <= self.limit


@dataclass(frozen=True)
class Row:
    """One measured figure: cvtui's, the baseline's from the same run, and the target."""

    benchmark: str
    value: float | None  # None when the benchmark could not measure it
    unit: str  # "ms", "MB", "% core", "s"
    baseline: float | None = None  # same unit as value
    baseline_name: str = ""  # what the baseline ran, e.g. "ssh true"
    target: Target | None = None  # None: reported for information only
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None when there is no target."""
        if self.target is None:
            return None if self.value is not None else False
        figure = self.ratio if self.target.on_ratio else self.value
        return figure is not None and self.target.met_by(figure)


def failed_row(benchmark: str, error: BaseException) -> Row:
    """The row of a benchmark that raised instead of measuring."""
    message = str(error).strip().splitlines()
    return Row(benchmark, None, "", note=f"error: {type(error).__name__}: {' '.join(message[:1])}")


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = 3 if abs(value) < 1 else 1
    return f"{value:.{digits}f} {unit}".rstrip()


def _cells(row: Row) -> tuple[str, ...]:
    baseline = _figure(row.baseline, row.unit)
    if row.baseline is not None and row.baseline_name:
        baseline = f"{baseline} ({row.baseline_name})"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    target = "-" if row.target is None else row.target.describe(row.unit)
    result = {True: "pass", False: "FAIL", None: "info"}[row.passed]
    return (row.benchmark, _figure(row.value, row.unit), baseline, ratio, target, result, row.note)


def render(rows: Sequence[Row]) -> str:
    """A plain-text table, one line per row, columns padded to their widest cell."""
    lines = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)
