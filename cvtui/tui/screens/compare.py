"""Marked runs' metrics overlaid on one plot, key by key."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand
from cvtui.tui.widgets.metric_plot import SERIES_STYLES
from cvtui.tui.widgets.metrics_panel import MetricsPanel


class CompareScreen(DashboardScreen):
    """Opened with `c` on the Runs screen; j/k pick the key, esc goes back."""

    NAV = "runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("u", "unmark_all", "Unmark all"),
    ]

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = run_ids
        self._version = -1

    def compose_body(self) -> ComposeResult:
        yield MetricsPanel(self.run_ids, {})

    def on_mount(self) -> None:
        self.query_one("#metric-keys").focus()

    def show(self, view: CatalogView) -> None:
        names = {r["id"]: r["name"] for r in view.runs}
        panel = self.query_one(MetricsPanel)
        panel.names.update(names)
        if view.version != self._version:
            self._version = view.version
            panel.reload()
        text = Text(f"comparing {len(self.run_ids)} runs: ", style="bold")
        for i, run_id in enumerate(self.run_ids):
            style = SERIES_STYLES[i % len(SERIES_STYLES)]
            text.append(f"{names.get(run_id, run_id[:8])}  ", style=style)
        self.set_info(text)

    def action_unmark_all(self) -> None:
        self.dashboard.marked.clear()
        self.app.pop_screen()

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand("Compare: back", "close the comparison", self.app.pop_screen),
            PaletteCommand("Compare: unmark all runs", "and close", self.action_unmark_all),
        ]
