"""A host opened from the Hosts screen: each GPU's recent history, and every process on them."""

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

WINDOWS_S = (300.0, 1800.0, 7200.0)  # history shown: 5 min, 30 min, 2 h


def window_label(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.0f} h"


class HostDetailScreen(DashboardScreen):
    """GPUs with utilisation and memory sparklines, then processes with user, container, run."""

    NAV = "hosts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("w", "cycle_window", "Window"),
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
        try:
            with self.dashboard.reader.use() as catalog:
                for gpu in host["gpus"]:
                    history[gpu["index"]] = catalog.telemetry_history(
                        self.host, gpu["index"], now - self.window_s
                    )
        finally:
            deliver(self, self._history_read, host["gpus"], history)

    def _history_read(self, gpus: list[dict[str, Any]], history: dict[int, History]) -> None:
        self._reading = False
        self.query_one(GpuTable).show(gpus, history)

    def action_cycle_window(self) -> None:
        self.window_s = WINDOWS_S[(WINDOWS_S.index(self.window_s) + 1) % len(WINDOWS_S)]
        self._last_version = -1
        view = self.dashboard.view
        if view is not None:
            self.show(view)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand(
                "Host: change history window", "5 min, 30 min, 2 h", self.action_cycle_window
            ),
            PaletteCommand("Host: back to hosts", "close this host", self.app.pop_screen),
        ]
