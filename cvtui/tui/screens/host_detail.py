"""A host opened from the Hosts screen: each GPU's recent history, every process on them, and
disk usage per top-level dir owner of its `disk_usage:` paths."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from cvtui.tui.messages import deliver
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand
from cvtui.tui.screens.hosts import host_info
from cvtui.tui.widgets.gpu_tables import GpuTable, History, ProcessTable
from cvtui.units import ago, size

# History shown: 5 min, 30 min, 2 h, a day, 30 days, a year; each read from the history
# tier that gives the sparkline its cells (raw samples first, hour buckets last).
WINDOWS_S = (300.0, 1800.0, 7200.0, 86400.0, 30 * 86400.0, 365 * 86400.0)
POINTS = 120  # buckets asked of the history: about two per sparkline cell


def window_label(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h" if seconds < 86400 else f"{seconds / 86400:.0f} d"


def disk_usage_text(scans: list[dict[str, Any]], now: float) -> Text:
    """Each scanned path, then its top-level dirs biggest first: owner, size, files, age."""
    text = Text()
    if not scans:
        text.append("  none scanned (set disk_usage: for this host in the inventory)", "dim")
        return text
    for scan in scans:
        text.append(f"  {scan['path']}", "bold")
        text.append(f"  scanned {ago(scan['scanned_at'], now)}", "dim")
        if scan["partial"]:
            text.append("  partial", "yellow")
        if scan["error"]:
            text.append(f"  {scan['error']}", "red")
        text.append("\n")
        width = max((len(e["entry"]) for e in scan["entries"]), default=0)
        for entry in scan["entries"]:
            text.append(
                f"    {entry['entry']:{width}}  {entry['owner']:10} {size(entry['bytes']):>9}"
                f" {entry['files']:9} files  {ago(entry['scanned_at'], now)}"
            )
            if entry["partial"]:
                text.append(f"  partial: {entry['reason']}", "yellow")
            text.append("\n")
    text.rstrip()
    return text


class HostDetailScreen(DashboardScreen):
    """GPUs with utilisation and memory sparklines, then processes with user, container, run."""

    NAV = "hosts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("w", "cycle_window", "Window"),
        Binding("exclamation_mark", "shell", "Shell", key_display="!"),
        Binding("tab", "focus_next", "Next table", show=False),
    ]

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.window_s = WINDOWS_S[0]
        self._reading = False
        self._last_version = -1

    def compose_body(self) -> ComposeResult:
        yield Static("", id="host-title", classes="title")
        yield GpuTable(id="gpu-table")
        yield Static(" Processes", classes="section")
        yield ProcessTable(id="process-table")
        yield Static(" Disk usage", classes="section")
        yield Static("", id="disk-usage")

    def on_mount(self) -> None:
        self.query_one(GpuTable).focus()

    def show(self, view: CatalogView) -> None:
        host = view.host(self.host)
        title = self.query_one("#host-title", Static)
        if host is None:
            title.update(Text(f"{self.host} is no longer in the inventory", style="red"))
            return
        title.update(host_info(host, view.now))
        names = {r["id"]: r["name"] for r in view.runs}
        self.query_one(ProcessTable).show(host["gpus"], names)
        self.set_info(
            Text(f"history: last {window_label(self.window_s)} (w changes) · esc back", style="dim")
        )
        if view.version != self._last_version and not self._reading:
            self._last_version = view.version
            self._reading = True
            self.read_history(host, view.now)

    @work(thread=True, exclusive=True, group="host-history")
    def read_history(self, host: dict[str, Any], now: float) -> None:
        history: dict[int, History] = {}
        disk: list[dict[str, Any]] = []
        try:
            with self.dashboard.reader.use() as catalog:
                found = catalog.host_telemetry_history(
                    self.host, now - self.window_s, now, points=POINTS
                )
            with self.dashboard.reader.query() as queries:
                disk = queries.disk_usage(self.host)
            for gpu in host["gpus"]:
                history[gpu["index"]] = found.get(gpu["index"], [])
                # Raw history is written a few seconds at a time: end on the live value.
                history[gpu["index"]].append((now, gpu["util"], gpu["mem_used"]))
        finally:
            deliver(self, self._history_read, host["gpus"], history, disk, now)

    def _history_read(
        self,
        gpus: list[dict[str, Any]],
        history: dict[int, History],
        disk: list[dict[str, Any]],
        now: float,
    ) -> None:
        self._reading = False
        self.query_one(GpuTable).show(gpus, history)
        self.query_one("#disk-usage", Static).update(disk_usage_text(disk, now))

    def action_cycle_window(self) -> None:
        self.window_s = WINDOWS_S[(WINDOWS_S.index(self.window_s) + 1) % len(WINDOWS_S)]
        self._last_version = -1
        view = self.dashboard.view
        if view is not None:
            self.show(view)

    def action_shell(self) -> None:
        """A login shell on this host, the dashboard suspended meanwhile."""
        from cvtui.tui.shell import start_shell

        start_shell(self.dashboard, self.host)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand(
                "Host: change history window",
                "5 min, 30 min, 2 h, 1 d, 30 d, 365 d",
                self.action_cycle_window,
            ),
            PaletteCommand("Host: back to hosts", "close this host", self.app.pop_screen),
        ]
