"""Screen 2, Queue: waiting runs in start order, why each waits; reprioritise, cancel, submit."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from cvtui.tui.filtering import parse_filter
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import PaletteCommand
from cvtui.tui.screens.run_list import RunListScreen
from cvtui.tui.widgets.runs_table import QueueTable, placement

FILTER_KEYS = ("state", "project", "user", "priority", "host")


def run_fields(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": run["state"],
        "project": run.get("project"),
        "user": run.get("user"),
        "priority": run.get("priority"),
        "host": run.get("host") or (run.get("resources") or {}).get("hosts") or [],
    }


def run_text(run: dict[str, Any]) -> str:
    return f"{run['id']} {run['name']} {run.get('project') or ''}"


class QueueScreen(RunListScreen):
    """Start order: what is being dispatched, then the queue by priority and age."""

    NAV = "queue"
    FILTER_HINT = "filter queue: words, user:alice, project:x, priority:high"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open"),
        Binding("plus,equals_sign,K", "raise_priority", "Priority +"),
        Binding("minus,J", "lower_priority", "Priority -"),
        Binding("p", "pick_priority", "Priority…"),
        Binding("x,delete", "cancel_run", "Cancel"),
        Binding("n", "app.submit", "Submit"),
    ]

    def compose_body(self) -> ComposeResult:
        yield QueueTable(id="queue-table")

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    def focus_main(self) -> None:
        self.table.focus()

    def show(self, view: CatalogView) -> None:
        queue = list(view.queue)
        wanted = parse_filter(self.query_text, FILTER_KEYS)
        if wanted:
            queue = [r for r in queue if wanted.matches(run_fields(r), run_text(r))]
        self.run_rows = queue
        self.table.show(queue, view.now)
        self.show_info()

    def show_info(self) -> None:
        run = self.current_run()
        if run is None:
            empty = "nothing queued: press n to submit a run config"
            self.set_info(
                Text(empty if not self.query_text else "no queued run matches", style="dim")
            )
            return
        res = run.get("resources") or {}
        wants = [f"{res.get('gpus', 0)} GPU(s)"]
        if res.get("hosts"):
            wants.append("on " + ",".join(res["hosts"]))
        if res.get("tags"):
            wants.append("tags " + ",".join(res["tags"]))
        text = Text.assemble((run["name"], "bold"), f" · {run['id'][:12]} · {run['priority']}")
        text.append(f" · wants {' '.join(wants)} · by {run.get('user') or '?'}")
        if run["state"] == "dispatching":
            text.append(f" · starting on {placement(run)}", style="cyan")
        self.set_info(text)

    def action_raise_priority(self) -> None:
        self._shift(1)

    def action_lower_priority(self) -> None:
        self._shift(-1)

    def _shift(self, steps: int) -> None:
        run = self.current_run()
        if run is not None:
            self.dashboard.shift_priority(run["id"], steps)

    def action_pick_priority(self) -> None:
        run = self.current_run()
        if run is not None:
            self.dashboard.pick_priority(run)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand(
                "Queue: raise priority", "of the selected run", self.action_raise_priority
            ),
            PaletteCommand(
                "Queue: lower priority", "of the selected run", self.action_lower_priority
            ),
            PaletteCommand(
                "Queue: set priority…", "urgent, high, normal, low", self.action_pick_priority
            ),
            PaletteCommand("Queue: cancel run", "remove the selected run", self.action_cancel_run),
            PaletteCommand("Queue: open run", "details, config, log", self.action_open_run),
            PaletteCommand("Queue: filter", "by words, user:, project:", self.action_open_filter),
        ]
