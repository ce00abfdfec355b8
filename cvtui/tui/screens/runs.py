"""Screen 3, Runs: running and finished runs, filtered and searched; open one, compare some."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from cvtui.states import ACTIVE_STATES, FINAL_STATES
from cvtui.tui import cells
from cvtui.tui.filtering import parse_filter
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import PaletteCommand
from cvtui.tui.screens.queue import run_fields, run_text
from cvtui.tui.screens.run_list import RunListScreen
from cvtui.tui.widgets.runs_table import RunsTable, placement

FILTER_KEYS = ("state", "project", "user", "priority", "host")
STATE_SETS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("all", None),
    ("active", ACTIVE_STATES),
    ("finished", FINAL_STATES),
    ("failed", ("failed", "lost")),
)


class RunsScreen(RunListScreen):
    """Newest first; `f` cycles state sets, `/` filters, space marks runs for a metrics overlay."""

    NAV = "runs"
    FILTER_HINT = "search runs: words, state:failed, project:x, host:gpu-01, user:alice"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open"),
        Binding("space", "mark_run", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("f", "cycle_states", "States"),
        Binding("x,delete", "cancel_run", "Cancel"),
        Binding("n", "app.submit", "Submit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.states = STATE_SETS[0]

    def compose_body(self) -> ComposeResult:
        yield RunsTable(id="runs-table")

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def focus_main(self) -> None:
        self.table.focus()

    def show(self, view: CatalogView) -> None:
        runs = list(view.runs)
        if self.states[1] is not None:
            runs = [r for r in runs if r["state"] in self.states[1]]
        wanted = parse_filter(self.query_text, FILTER_KEYS)
        if wanted:
            runs = [r for r in runs if wanted.matches(run_fields(r), run_text(r))]
        self.run_rows = runs
        self.table.show(runs, view.now, self.dashboard.marked)
        self.show_info()

    def show_info(self) -> None:
        run = self.current_run()
        tags = []
        if self.states[0] != "all":
            tags.append(f"states: {self.states[0]}")
        if self.query_text:
            tags.append(f"search: {self.query_text}")
        if self.dashboard.marked:
            tags.append(f"{len(self.dashboard.marked)} marked (c compares)")
        text = Text(f"[{' · '.join(tags)}] " if tags else "", style="bold yellow")
        if run is None:
            text.append(
                "no runs yet: press n to submit a run config" if not tags else "no run matches",
                style="dim",
            )
        else:
            text.append(run["name"], style="bold")
            text.append(f" · {run['id']} · ")
            text.append_text(cells.run_state(run["state"]))
            text.append(
                f" · {placement(run)} · {run.get('user') or '?'}/{run.get('project') or '-'}"
            )
        self.set_info(text)

    def action_mark_run(self) -> None:
        run = self.current_run()
        if run is None:
            return
        marked = self.dashboard.marked
        if run["id"] in marked:
            marked.remove(run["id"])
        else:
            marked.append(run["id"])
        view = self.dashboard.view
        if view is not None:
            self.show(view)
        self.table.action_cursor_down()

    def action_compare(self) -> None:
        ids = list(self.dashboard.marked)
        run = self.current_run()
        if not ids and run is not None:
            ids = [run["id"]]
        if ids:
            from cvtui.tui.screens.compare import CompareScreen

            self.app.push_screen(CompareScreen(ids))

    def action_cycle_states(self) -> None:
        self.states = STATE_SETS[(STATE_SETS.index(self.states) + 1) % len(STATE_SETS)]
        view = self.dashboard.view
        if view is not None:
            self.show(view)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand("Runs: open run", "log, metrics, config, files", self.action_open_run),
            PaletteCommand("Runs: mark run", "for a metrics comparison", self.action_mark_run),
            PaletteCommand(
                "Runs: compare marked runs", "overlay their metrics", self.action_compare
            ),
            PaletteCommand("Runs: cancel run", "SIGTERM, then SIGKILL", self.action_cancel_run),
            PaletteCommand(
                "Runs: cycle state filter",
                "all, active, finished, failed",
                self.action_cycle_states,
            ),
            PaletteCommand(
                "Runs: search", "words, state:, project:, host:, user:", self.action_open_filter
            ),
        ]
