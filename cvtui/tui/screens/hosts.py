"""Screen 1, Hosts: every host with its GPUs at a glance; expand one, or open it for history."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from cvtui.tui import cells
from cvtui.tui.filtering import parse_filter
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand
from cvtui.tui.widgets.cluster_rows import cluster_gpus
from cvtui.tui.widgets.hosts_table import HostsTable, free_gpus
from cvtui.tui.widgets.table import LiveTable
from cvtui.units import ago, size

SORTS = ("name", "free GPUs", "GPU util")
EXPAND_UP_TO_GPUS = 32  # a lab this small starts with every host expanded
FILTER_KEYS = ("tag", "state", "model", "name")


def sort_hosts(hosts: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    if how == "free GPUs":
        return sorted(hosts, key=lambda h: (-free_gpus(h), h["name"]))
    if how == "GPU util":
        return sorted(hosts, key=lambda h: (-mean_util(h), h["name"]))
    return sorted(hosts, key=lambda h: h["name"])


def mean_util(host: dict[str, Any]) -> float:
    values = [g["util"] for g in host["gpus"] if g["util"] is not None]
    return sum(values) / len(values) if values else -1.0


def host_fields(host: dict[str, Any]) -> dict[str, Any]:
    states = [host["state"]] + (["drained"] if host.get("drained") else [])
    return {
        "tag": host.get("tags") or [],
        "state": states,
        "model": [g["name"] for g in host["gpus"]],
        "name": host["name"],
    }


def host_info(host: dict[str, Any], now: float) -> Text:
    if host.get("cluster") is not None:
        return cluster_info(host, now)
    gpus = host["gpus"]
    models = sorted({g["name"] for g in gpus})
    text = Text.assemble((host["name"], "bold"), " ", cells.host_state(host["state"]))
    if host.get("reason"):
        text.append(f" ({host['reason']})", style="red")
    if gpus:
        text.append(f" · {len(gpus)}× {', '.join(models)}")
    if host.get("backend"):
        text.append(f" · {host['backend']}", style="italic")
    if host.get("tags"):
        text.append(" · tags " + ",".join(host["tags"]), style="blue")
    if host["state"] in ("healthy", "stale"):
        text.append(
            f" · ram {size(host.get('mem_used'))}/{size(host.get('mem_total'))}"
            f" · disk {size(host.get('disk_free'))} free"
        )
    text.append(f" · seen {ago(host.get('last_seen'), now)}", style="dim")
    return text


def cluster_info(host: dict[str, Any], now: float) -> Text:
    """A Slurm cluster: its GPUs as Slurm allocates them, and the user's jobs there."""
    cluster = host["cluster"]
    total, alloc, idle = cluster_gpus(cluster)
    text = Text.assemble((host["name"], "bold"), " ", cells.host_state(host["state"]))
    if host.get("reason"):
        text.append(f" ({host['reason']})", style="red")
    text.append(" · slurm", style="italic")
    text.append(f" · {len(cluster.get('partitions') or [])} partitions")
    text.append(f" · {len(cluster.get('nodes') or [])} nodes")
    text.append(f" · GPUs {idle} idle, {alloc} allocated of {total}")
    text.append(f" · you: {cluster.get('running', 0)} running, {cluster.get('pending', 0)} pending")
    text.append(f" · seen {ago(host.get('last_seen'), now)}", style="dim")
    return text


def gpu_info(host: dict[str, Any], index: int) -> Text:
    gpu = next((g for g in host["gpus"] if g["index"] == index), None)
    if gpu is None:
        return Text("")
    text = Text.assemble((f"{host['name']}[{index}]", "bold"), f" {gpu['name']}")
    text.append(f" · util {cells.percent(gpu['util'])}")
    text.append(f" · mem {cells.memory(gpu['mem_used'], gpu['mem_total'])}")
    if gpu.get("temperature") is not None:
        text.append(f" · {gpu['temperature']:.0f}°C")
    if gpu.get("power") is not None:
        text.append(f" · {gpu['power']:.0f} W")
    for proc in gpu["processes"]:
        text.append(f" · {proc['user'] or '?'} pid {proc['pid']} {proc['command'] or ''}")
    return text


class HostsScreen(DashboardScreen):
    """Hosts table with sort and filter; enter opens a host's GPU history and processes."""

    NAV = "hosts"
    FILTER_HINT = "filter hosts: words, tag:a100, state:error, model:A100 (enter keeps, esc clears)"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_host", "Open", show=True),
        Binding("space", "toggle_host", "Expand"),
        Binding("e", "expand_all", "Expand all"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("exclamation_mark", "shell", "Shell", key_display="!"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort = SORTS[0]
        self._expanded_once = False
        self._hosts: list[dict[str, Any]] = []
        self._now = 0.0

    def compose_body(self) -> ComposeResult:
        yield HostsTable(id="hosts-table")

    @property
    def table(self) -> HostsTable:
        return self.query_one(HostsTable)

    def focus_main(self) -> None:
        self.table.focus()

    def show(self, view: CatalogView) -> None:
        table = self.table
        hosts = list(view.hosts)
        if not self._expanded_once and hosts:
            self._expanded_once = True
            if sum(len(h["gpus"]) for h in hosts) <= EXPAND_UP_TO_GPUS:
                table.expanded = {h["name"] for h in hosts}
        wanted = parse_filter(self.query_text, FILTER_KEYS)
        if wanted:
            hosts = [h for h in hosts if wanted.matches(host_fields(h), h["name"])]
        self._hosts = sort_hosts(hosts, self.sort)
        self._now = view.now
        table.show(self._hosts, {r["id"]: r["name"] for r in view.runs})
        self.show_info()

    def show_info(self) -> None:
        table = self.table
        name = table.current_host()
        host = next((h for h in self._hosts if h["name"] == name), None)
        if host is None:
            empty = "no host matches the filter" if self.query_text else "no hosts yet"
            self.set_info(Text(empty, style="dim"))
            return
        gpu = table.current_gpu()
        text = host_info(host, self._now) if gpu is None else gpu_info(host, gpu)
        extra = [f"sort: {self.sort}"] if self.sort != SORTS[0] else []
        if self.query_text:
            extra.append(f"filter: {self.query_text}")
        if extra:
            text = Text.assemble(Text(f"[{' · '.join(extra)}] ", style="bold yellow"), text)
        self.set_info(text)

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        self.show_info()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open_host()

    def action_open_host(self) -> None:
        name = self.table.current_host()
        if name is not None:
            from cvtui.tui.screens.host_detail import HostDetailScreen

            self.app.push_screen(HostDetailScreen(name))

    def action_toggle_host(self) -> None:
        self.table.action_toggle_host()

    def action_shell(self) -> None:
        """A login shell on the host under the cursor, the dashboard suspended meanwhile."""
        name = self.table.current_host()
        if name is not None:
            from cvtui.tui.shell import start_shell

            start_shell(self.dashboard, name)

    def action_expand_all(self) -> None:
        table = self.table
        everything = {h["name"] for h in self._hosts}
        table.expand_all(everything, expand=not everything <= table.expanded)

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        view = self.dashboard.view
        if view is not None:
            self.show(view)
        self.table.move_cursor(row=0)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand("Hosts: open host", "GPU history and processes", self.action_open_host),
            PaletteCommand(
                "Hosts: expand or collapse all", "show every GPU", self.action_expand_all
            ),
            PaletteCommand(
                "Hosts: sort by free GPUs", "most free GPUs first", lambda: self.sort_by(SORTS[1])
            ),
            PaletteCommand("Hosts: sort by name", "alphabetical", lambda: self.sort_by(SORTS[0])),
            PaletteCommand(
                "Hosts: filter", "by name, tag:, state:, model:", self.action_open_filter
            ),
        ]

    def sort_by(self, how: str) -> None:
        self.sort = SORTS[(SORTS.index(how) - 1) % len(SORTS)]
        self.action_cycle_sort()
