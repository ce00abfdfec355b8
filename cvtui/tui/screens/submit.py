"""Submit a run config: a path (with completion), overrides, priority; shows the dry run first."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, Label, Select, Static

from cvtui.actions import PRIORITY_ORDER, Submission, plan_submission, submit_runs
from cvtui.errors import CvtuiError
from cvtui.tui.messages import deliver

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp


class PathSuggester(Suggester):
    """Completes the last component of a path from the directory's entries (dirs get a /)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return await asyncio.to_thread(complete_path, value) if value else None


def complete_path(value: str) -> str | None:
    """value extended to the first directory entry its last component starts."""
    typed = Path(value).expanduser()
    folder, stem = (typed, "") if value.endswith("/") else (typed.parent, typed.name)
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return None
    for name in names:
        # Hidden entries only when the user started typing a dot.
        if name.startswith(stem) and (stem.startswith(".") or not name.startswith(".")):
            return value + name[len(stem) :]
    return None


class SubmitScreen(ModalScreen[list[str] | None]):
    """enter previews the expansion (`cvtui run --dry-run`); ctrl+s queues what was previewed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("ctrl+s", "submit", "Submit", priority=True),
        Binding("ctrl+r", "preview", "Dry run", priority=True),
    ]

    def __init__(self, start_path: str = "") -> None:
        super().__init__()
        self.start_path = start_path
        self.plan: Submission | None = None
        self._planned_for: tuple[str, str, str] | None = None
        self._busy = False

    @property
    def dashboard(self) -> DashboardApp:
        return cast("DashboardApp", self.app)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide-dialog"):
            yield Static(Text("Submit a run config", style="bold"))
            yield Input(
                self.start_path,
                placeholder="path to a run config YAML (→ completes)",
                suggester=PathSuggester(),
                id="submit-path",
            )
            with Horizontal(classes="submit-options"):
                yield Input(placeholder="--set KEY=VALUE …", id="submit-set")
                yield Select(
                    [(p, p) for p in PRIORITY_ORDER],
                    prompt="priority from config",
                    id="submit-priority",
                )
            with VerticalScroll(id="submit-preview"):
                yield Static(
                    Text("enter: dry run · ctrl+s: submit · esc: close", style="dim"),
                    id="submit-text",
                )
            yield Label("", id="submit-status")

    def on_mount(self) -> None:
        self.query_one("#submit-path", Input).focus()

    def inputs(self) -> tuple[str, str, str]:
        priority = self.query_one("#submit-priority", Select).value
        return (
            self.query_one("#submit-path", Input).value.strip(),
            self.query_one("#submit-set", Input).value.strip(),
            priority if isinstance(priority, str) else "",
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_preview()

    def action_preview(self) -> None:
        path, overrides, priority = self.inputs()
        if not path:
            self.set_status("give the path of a run config first", error=True)
            return
        if self._busy:
            return
        self._busy = True
        self.set_status("expanding …")
        self.plan_config(path, overrides, priority)

    @work(thread=True, exclusive=True, group="submit")
    def plan_config(self, path: str, overrides: str, priority: str) -> None:
        plan: Submission | None = None
        problem = ""
        try:
            sets = shlex.split(overrides)
            with self.dashboard.reader.use() as catalog:
                plan = plan_submission(
                    catalog,
                    self.dashboard.inventory,
                    path,
                    overrides=sets,
                    priority=priority or None,
                )
        except (CvtuiError, ValueError, OSError) as exc:
            problem = str(exc)
        deliver(self, self._planned, (path, overrides, priority), plan, problem)

    def _planned(self, key: tuple[str, str, str], plan: Submission | None, problem: str) -> None:
        self._busy = False
        text = self.query_one("#submit-text", Static)
        if plan is None:
            self.plan = None
            text.update(Text(problem, style="red"))
            self.set_status("fix the config and press enter again", error=True)
            return
        self.plan, self._planned_for = plan, key
        text.update(Text(plan.dry_run))
        count = len(plan.specs)
        self.set_status(f"ctrl+s queues these {count} run{'s' if count != 1 else ''} · esc closes")

    def action_submit(self) -> None:
        if self._busy:
            return
        if self.plan is None or self._planned_for != self.inputs():
            self.set_status("showing the dry run first; ctrl+s again submits it")
            self.action_preview()
            return
        self._busy = True
        self.set_status("queueing …")
        self.queue_plan(self.plan)

    @work(thread=True, exclusive=True, group="submit")
    def queue_plan(self, plan: Submission) -> None:
        ids: list[str] = []
        problem = ""
        try:
            with self.dashboard.reader.use() as catalog:
                ids = submit_runs(catalog, self.dashboard.home, plan)
        except (CvtuiError, ValueError, OSError) as exc:
            problem = str(exc)
        deliver(self, self._queued, ids, problem)

    def _queued(self, ids: list[str], problem: str) -> None:
        self._busy = False
        if problem:
            self.set_status(problem, error=True)
            return
        self.dismiss(ids)

    def set_status(self, message: str, *, error: bool = False) -> None:
        self.query_one("#submit-status", Label).update(
            Text(message, style="red" if error else "cyan")
        )
