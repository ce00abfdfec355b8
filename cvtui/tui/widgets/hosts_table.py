"""Hosts, one row each with per-GPU mini bars; an expanded host lists its GPUs below it."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from cvtui import units
from cvtui.catalog.rows import gpu_is_free
from cvtui.tui import cells
from cvtui.tui.widgets.cluster_rows import (
    NODE_PREFIX,
    PARTITION_PREFIX,
    cluster_cells,
    cluster_gpus,
    cluster_rows,
    node_cells,
    partition_cells,
)
from cvtui.tui.widgets.table import Column, LiveTable, Row

WIDE_FROM = 110  # terminal columns from which RAM and disk get their own columns


def host_columns(width: int) -> list[Column]:
    wide = width >= WIDE_FROM
    columns: list[Column] = [
        ("name", "HOST", 16 if wide else 12),
        ("state", "STATE", 12 if wide else 10),
        ("free", "FREE", 4),
        ("util", "GPU UTIL", 8),
        ("mem", "GPU MEM", 13),
        ("cpu", "CPU", 4),
    ]
    if wide:
        columns += [("ram", "RAM", 5), ("disk", "DISK", 5)]
    columns += [("runs", "RUNS", 4), ("note", "NOTE", None)]
    return columns


def free_gpus(host: dict[str, Any]) -> int:
    """GPUs with no process and no lease on them: what a new run could get (a cluster's idle)."""
    if host.get("cluster") is not None:
        return cluster_gpus(host["cluster"])[2]
    return sum(1 for g in host["gpus"] if gpu_is_free(g))


def gpu_fraction(used: int | None, total: int | None) -> float | None:
    return used / total if used is not None and total else None


def host_note(host: dict[str, Any]) -> Text:
    if host.get("reason"):
        return Text(host["reason"], style="red" if host["state"] != "stale" else "yellow")
    models = sorted({g["name"] for g in host["gpus"]})
    note = Text(", ".join(models), style="dim")
    if host.get("backend") == "simulated":
        note.append(" (simulated)", style="italic yellow")
    if host.get("tags"):
        note.append(" #" + " #".join(host["tags"]), style="blue")
    return note


def host_cells(host: dict[str, Any], expanded: bool, wide: bool) -> list[Any]:
    gpus = host["gpus"]
    up = host["state"] in ("healthy", "stale")
    marker = ("▾ " if expanded else "▸ ") if gpus else "  "
    ram = gpu_fraction(host.get("mem_used"), host.get("mem_total"))
    row: list[Any] = [
        Text.assemble(marker, (host["name"], "bold")),
        cells.host_state(host["state"], host.get("drained", False), width=12 if wide else 10),
        f"{free_gpus(host)}/{len(gpus)}" if up and gpus else "-",
        cells.mini_bars([None if g["util"] is None else g["util"] / 100 for g in gpus])
        if up
        else "",
        cells.mini_bars([gpu_fraction(g["mem_used"], g["mem_total"]) for g in gpus]) if up else "",
        cells.percent(host.get("cpu_percent")) if up else "",
    ]
    if wide:
        row += [
            cells.percent(None if ram is None else ram * 100) if up else "",
            units.short_size(host.get("disk_free")) if up else "",
        ]
    row += [str(host.get("runs") or "") or Text("-", style="dim"), host_note(host)]
    return row


def gpu_state(gpu: dict[str, Any]) -> Text:
    """free, busy, or idle-held: held with memory allocated but (almost) no work for a while."""
    if gpu.get("idle_held"):
        return Text("idle", style="bold magenta")
    return Text("busy", style="yellow") if gpu["processes"] else Text("free", style="green")


def gpu_cells(gpu: dict[str, Any], wide: bool, run_names: Mapping[str, str | None]) -> list[Any]:
    procs = gpu["processes"]
    users = sorted({p["user"] or "?" for p in procs})
    util = gpu["util"]
    used, total = gpu["mem_used"], gpu["mem_total"]
    fraction = gpu_fraction(used, total)
    temp, power = gpu.get("temperature"), gpu.get("power")
    mem_text = cells.bar(fraction, 4)
    mem_text.append(f" {units.short_size(used)}/{units.short_size(total)}".rstrip())
    util_text = cells.bar(None if util is None else util / 100, 4)
    util_text.append(f" {cells.percent(util):>3}")
    commands = Text()
    if gpu.get("idle_held") and gpu.get("idle_since") is not None:
        held_s = time.time() - gpu["idle_since"]
        commands.append(f"idle-held {units.duration(held_s)} ", style="bold magenta")
    for proc in procs[:2]:
        run_id = proc.get("run_id")
        if run_id:
            commands.append(f"{run_names.get(run_id) or run_id[:8]} ", style="cyan")
        else:
            commands.append(f"{proc['user'] or '?'}: {proc['command'] or proc['pid']} ")
    row: list[Any] = [
        Text(f"  {gpu['index']} {gpu['name']}", style="dim"),
        Text(cells.fit(",".join(users), 12), style="bold") if users else Text("idle", style="dim"),
        gpu_state(gpu),
        util_text,
        mem_text,
        "-" if temp is None else f"{temp:.0f}°",
    ]
    if wide:
        row += ["-" if power is None else f"{power:.0f}W", ""]
    row += ["", commands]
    return row


class HostsTable(LiveTable):
    """Rows `host:NAME` and, for expanded hosts, `gpu:NAME:INDEX` below each."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space,right,l", "toggle_host", "Expand", show=False),
        Binding("left,h", "collapse_host", "Collapse", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expanded: set[str] = set()
        self.hosts: list[dict[str, Any]] = []
        self.run_names: Mapping[str, str] = {}

    def columns_for(self, width: int) -> list[Column]:
        return host_columns(width)

    def redraw(self) -> None:
        self.show(self.hosts)

    @property
    def wide(self) -> bool:
        return len(self._column_spec) > len(host_columns(0))

    def show(
        self, hosts: Sequence[dict[str, Any]], run_names: Mapping[str, str] | None = None
    ) -> None:
        """Draw hosts; run_names (run id -> name) label the GPU processes that are our runs."""
        self.hosts = list(hosts)
        if run_names is not None:
            self.run_names = run_names
        rows: list[Row] = []
        for host in self.hosts:
            name = host["name"]
            is_open = name in self.expanded
            rows.append((f"host:{name}", (host, is_open)))
            if host.get("cluster") is not None:
                if is_open:
                    rows += cluster_rows(host)
                continue
            if is_open and host["state"] in ("healthy", "stale"):
                for gpu in host["gpus"]:
                    runs = {p["run_id"]: self.run_names.get(p["run_id"]) for p in gpu["processes"]}
                    rows.append((f"gpu:{name}:{gpu['index']}", (gpu, runs)))
        self.show_rows(rows)

    def cells(self, key: str, data: Any) -> list[Any]:
        if key.startswith("host:"):
            host, is_open = data
            if host.get("cluster") is not None:
                return cluster_cells(host, is_open, self.wide)
            return host_cells(host, is_open, self.wide)
        if key.startswith(f"{PARTITION_PREFIX}:"):
            return partition_cells(data, self.wide)
        if key.startswith(f"{NODE_PREFIX}:"):
            node, jobs = data
            return node_cells(node, self.wide, jobs)
        gpu, runs = data
        return gpu_cells(gpu, self.wide, runs)

    def expand_all(self, names: Collection[str], expand: bool) -> None:
        self.expanded = set(names) if expand else set()
        self.show(self.hosts)

    def current_host(self) -> str | None:
        key = self.current_key
        return None if key is None else key.split(":")[1]

    def current_gpu(self) -> int | None:
        key = self.current_key
        return int(key.split(":")[2]) if key and key.startswith("gpu:") else None

    def action_toggle_host(self) -> None:
        name = self.current_host()
        if name is None:
            return
        if name in self.expanded:
            self.expanded.discard(name)
        else:
            self.expanded.add(name)
        self.show(self.hosts)
        self.select_key(f"host:{name}")

    def action_collapse_host(self) -> None:
        name = self.current_host()
        if name is not None and name in self.expanded:
            self.expanded.discard(name)
            self.show(self.hosts)
            self.select_key(f"host:{name}")
