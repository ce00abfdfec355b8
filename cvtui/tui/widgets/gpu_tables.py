"""One host's GPUs with utilisation and memory history, and the processes on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from cvtui import units
from cvtui.tui import cells
from cvtui.tui.widgets.table import Column, LiveTable, Row

History = Sequence[tuple[float, float | None, int | None]]  # (time, util %, mem_used bytes)


def spark_width(table_width: int) -> int:
    """Cells per sparkline: two of them share what the fixed columns leave."""
    return max(8, min(60, (table_width - 53) // 2))


def gpu_columns(spark: int) -> list[Column]:
    return [
        ("gpu", "GPU", 12),
        ("util_hist", "UTIL (history)", spark),
        ("util", "UTIL", 4),
        ("mem_hist", "MEMORY (history)", spark),
        ("mem", "MEMORY", 9),
        ("temp", "TEMP", 4),
        ("power", "POWER", 6),
    ]


class GpuTable(LiveTable):
    """Rows `gpu:INDEX`; the history columns are sparklines over the screen's time window."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark = spark_width(80)
        self._last: tuple[Sequence[dict[str, Any]], Mapping[int, History]] = ([], {})

    def columns_for(self, width: int) -> list[Column]:
        self.spark = spark_width(width)
        return gpu_columns(self.spark)

    def redraw(self) -> None:
        self.show(*self._last)

    def cells(self, key: str, data: Any) -> list[Any]:
        return list(data)  # a handful of rows: their cells are the data

    def show(self, gpus: Sequence[dict[str, Any]], history: Mapping[int, History]) -> None:
        self._last = (gpus, history)
        rows: list[Row] = []
        for gpu in gpus:
            samples = history.get(gpu["index"], ())
            total = gpu["mem_total"] or 0
            util, used = gpu["util"], gpu["mem_used"]
            power = gpu.get("power")
            temp = gpu.get("temperature")
            mem_label = f"{units.short_size(used)}/{units.short_size(total)}"
            rows.append(
                (
                    f"gpu:{gpu['index']}",
                    [
                        Text(cells.fit(f"{gpu['index']} {gpu['name']}", 12)),
                        cells.sparkline([s[1] for s in samples], self.spark, 100.0),
                        Text(
                            f"{cells.percent(util):>4}",
                            style=cells.level_style(None if util is None else util / 100),
                        ),
                        cells.sparkline(
                            [None if s[2] is None else float(s[2]) for s in samples],
                            self.spark,
                            float(total),
                        ),
                        mem_label,
                        "-" if temp is None else f"{temp:.0f}°C",
                        "-" if power is None else f"{power:.0f} W",
                    ],
                )
            )
        self.show_rows(rows)


class ProcessTable(LiveTable):
    """Every process on the host's GPUs: who, what, in which container, for which cvtui run."""

    def cells(self, key: str, data: Any) -> list[Any]:
        return list(data)

    def columns_for(self, width: int) -> list[Column]:
        return [
            ("gpu", "GPU", 3),
            ("pid", "PID", 7),
            ("user", "USER", 10),
            ("mem", "GPU MEM", 7),
            ("container", "CONTAINER", 12),
            ("run", "RUN", 10),
            ("command", "COMMAND", None),
        ]

    def show(self, gpus: Sequence[dict[str, Any]], run_names: Mapping[str, str]) -> None:
        rows: list[Row] = []
        for gpu in gpus:
            for proc in gpu["processes"]:
                run_id = proc.get("run_id")
                run = Text("foreign", style="yellow")
                if run_id:
                    run = Text(cells.fit(run_names.get(run_id, run_id[:10]), 10), style="cyan")
                rows.append(
                    (
                        f"{gpu['index']}:{proc['pid']}",
                        [
                            str(gpu["index"]),
                            str(proc["pid"]),
                            Text(cells.fit(proc["user"] or "?", 10), style="bold"),
                            units.short_size(proc.get("mem")),
                            cells.fit(proc.get("container") or "-", 12),
                            run,
                            proc.get("command") or "",
                        ],
                    )
                )
        self.show_rows(rows)
