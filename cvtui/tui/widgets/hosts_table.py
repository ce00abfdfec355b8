"""A table of hosts and their GPUs with compact utilisation and memory bars."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from cvtui.report import bar, human_bytes

STATE_STYLES = {
    "healthy": "green",
    "stale": "yellow",
    "connecting": "cyan",
    "disconnected": "red",
    "error": "bold red",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


class HostsTable(DataTable[Any]):
    """One row per host, one per GPU below it; rows keep their keys across refreshes."""

    DEFAULT_CSS = """
    HostsTable { height: 1fr; }
    """

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for label, key in (
            ("host / gpu", "name"),
            ("state", "state"),
            ("util", "util"),
            ("memory", "mem"),
            ("temp", "temp"),
            ("power", "power"),
            ("procs", "procs"),
            ("info", "info"),
        ):
            self.add_column(label, key=key)

    def show(self, report: list[dict[str, Any]]) -> None:
        wanted: list[tuple[str, list[Any]]] = []
        for host in report:
            wanted.append((f"host:{host['name']}", self.host_cells(host)))
            if host["state"] in ("healthy", "stale"):
                for gpu in host["gpus"]:
                    wanted.append((f"gpu:{host['name']}:{gpu['index']}", self.gpu_cells(gpu)))
        keys = [k for k, _ in wanted]
        current = [str(row.value) for row in self.rows]
        if current != keys:
            cursor = self.cursor_row
            self.clear()
            for key, cells in wanted:
                self.add_row(*cells, key=key)
            if self.row_count:
                self.move_cursor(row=min(cursor, self.row_count - 1))
            return
        columns = [str(c.value) for c in self.columns]
        for key, cells in wanted:
            for column, cell in zip(columns, cells, strict=True):
                self.update_cell(key, column, cell)

    @staticmethod
    def host_cells(host: dict[str, Any]) -> list[Any]:
        state = host["state"]
        gpus = host["gpus"]
        free = sum(1 for g in gpus if not g["processes"])
        mem_used, mem_total = host.get("mem_used"), host.get("mem_total")
        info = host.get("reason") or ""
        if not info and state == "healthy":
            info = f"disk free {human_bytes(host.get('disk_free'))}"
        return [
            Text.assemble(
                (host["name"], "bold"),
                (" simulated", "italic yellow") if host.get("backend") == "simulated" else "",
            ),
            Text(state, style=STATE_STYLES.get(state, "")),
            Text(f"cpu {_pct(host.get('cpu_percent'))}"),
            Text(f"{human_bytes(mem_used)}/{human_bytes(mem_total)}"),
            "",
            "",
            Text(f"{free}/{len(gpus)} free"),
            Text(info, style="red" if state in ("error", "disconnected") else "dim"),
        ]

    @staticmethod
    def gpu_cells(gpu: dict[str, Any]) -> list[Any]:
        util = gpu.get("util")
        used, total = gpu.get("mem_used"), gpu.get("mem_total")
        fraction = used / total if used is not None and total else None
        procs = gpu["processes"]
        owners = ",".join(sorted({p["user"] or "?" for p in procs}))
        runs = [p["run_id"] for p in procs if p.get("run_id")]
        temp, power = gpu.get("temperature"), gpu.get("power")
        return [
            Text(f"  [{gpu['index']}] {gpu['name']}"),
            "",
            Text(f"{bar((util or 0) / 100, 6)} {_pct(util):>4}", style="green"),
            Text(f"{bar(fraction, 6)} {human_bytes(used)}/{human_bytes(total)}", style="magenta"),
            "-" if temp is None else f"{temp:.0f}°C",
            "-" if power is None else f"{power:.0f} W",
            str(len(procs)),
            Text(owners + (f" run {runs[0]}" if runs else ""), style="dim"),
        ]
