"""What the Queue and Runs screens share: a table of runs to pick, open and cancel."""

from __future__ import annotations

from typing import Any

from cvtui.tui.screens.base import DashboardScreen
from cvtui.tui.widgets.table import LiveTable


class RunListScreen(DashboardScreen):
    """A screen whose table lists runs; subclasses fill `run_rows` and define `table`."""

    @property
    def table(self) -> LiveTable:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.run_rows: list[dict[str, Any]] = []  # what the table shows, in its order

    def show_info(self) -> None:
        raise NotImplementedError

    def current_run(self) -> dict[str, Any] | None:
        key = self.table.current_key
        return next((r for r in self.run_rows if r["id"] == key), None)

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        self.show_info()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open_run()

    def action_open_run(self) -> None:
        run = self.current_run()
        if run is not None:
            self.dashboard.open_run(run["id"])

    def action_cancel_run(self) -> None:
        run = self.current_run()
        if run is not None:
            self.dashboard.confirm_cancel([run])
