"""One run: live log tail, metric plots (overlaying marked runs), resolved config, files, events."""

from __future__ import annotations

import datetime
from functools import partial
from typing import Any, ClassVar

import yaml
from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from cvtui import units
from cvtui.errors import CvtuiError
from cvtui.mirror import run_log_path
from cvtui.outputs_note import outputs_note
from cvtui.tui import cells
from cvtui.tui.messages import deliver
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand
from cvtui.tui.widgets.log_view import LogView
from cvtui.tui.widgets.metrics_panel import MetricsPanel
from cvtui.tui.widgets.runs_table import placement

TABS = ("log", "metrics", "config", "files", "events")


def clock_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def run_header(run: dict[str, Any], now: float) -> Text:
    text = Text.assemble((run["name"], "bold"), "  ", cells.run_state(run["state"]))
    text.append(f"  {placement(run)}  ")
    text.append_text(cells.progress(run.get("progress"), 10))
    started = run.get("started")
    if started:
        text.append(f"  ran {units.duration((run.get('ended') or now) - started)}")
    else:
        text.append(f"  waiting {units.duration(now - run['submitted'])}", style="dim")
    if run.get("exit_code") is not None:
        text.append(f"  exit {run['exit_code']}", style="red" if run["exit_code"] else "green")
    energy = run.get("energy")
    if energy is not None:  # NVML power integrated over the run's GPUs
        text.append(f"  {energy[0]:.3f} kWh")
        if energy[1]:
            text.append(" (simulated)", style="italic yellow")
    line2 = Text(f"{run['id']} · {run.get('user') or '?'}/{run.get('project') or '-'}", style="dim")
    line2.append(f" · {run['priority']}", style="dim")
    if run.get("progress_msg"):
        line2.append(f" · {run['progress_msg']}")
    if run.get("reason"):
        line2.append(f" · {run['reason']}", style="red" if run["state"] != "queued" else "yellow")
    return Text("\n").join([text, line2])


def config_text(run: dict[str, Any]) -> str:
    command = run.get("command")
    shown = {
        "command": command if isinstance(command, str) else " ".join(command or []),
        "params": run.get("params") or {},
        "resources": run.get("resources") or {},
        "code snapshot": run.get("code_hash"),
        "run dir": run.get("run_dir"),
        "attempt": run.get("attempt"),
        "config": run.get("config") or {},
    }
    if run.get("reproduces"):
        shown["reproduces"] = run["reproduces"]
    made_of = run.get("provenance")
    if made_of:
        git = None
        if made_of.get("git_head"):
            git = made_of["git_head"][:12] + (" (dirty)" if made_of.get("git_dirty") else "")
        shown["provenance"] = {
            "code dir": made_of.get("code_root"),
            "git": git,
            "diff blob": (made_of.get("git_diff_hash") or "")[:12] or None,
            "host": made_of.get("host"),
            "gpus": made_of.get("gpu_models"),
            "driver": made_of.get("driver"),
            "python": made_of.get("python"),
            "packages blob": (made_of.get("pip_freeze_hash") or "")[:12] or None,
        }
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=200)


class RunDetailScreen(DashboardScreen):
    """Opened from the Runs or Queue screen; esc goes back."""

    NAV = "runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("right_square_bracket", "next_tab", "Next tab"),
        Binding("left_square_bracket", "previous_tab", "Prev tab", show=False),
        Binding("x", "cancel_run", "Cancel"),
        Binding("p", "forward_port", "Forward port"),
        Binding("exclamation_mark", "shell", "Shell", key_display="!"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.run: dict[str, Any] | None = None
        self._last_version = -1
        self._reading = False
        self._config_shown = ""
        self._note: str | None = None  # what an ended run did not produce (outputs_note)

    def header(self, run: dict[str, Any], now: float) -> Text:
        text = run_header(run, now)
        if self._note:  # an ended run that left no output (or no metrics) says so up front
            text = Text.assemble(text, "\n", Text(f"note: {self._note}", style="yellow"))
        return text

    def compose_body(self) -> ComposeResult:
        yield Static("", id="run-header", classes="title")
        with TabbedContent(id="run-tabs"):
            with TabPane("Log", id="log"):
                yield LogView(run_log_path(self.dashboard.home, self.run_id))
            with TabPane("Metrics", id="metrics"):
                yield MetricsPanel([self.run_id], {})
            with TabPane("Config", id="config"), VerticalScroll():
                yield Static("", id="config-text")
            with TabPane("Files", id="files"):
                yield DataTable(id="files-table", cursor_type="row")
            with TabPane("Events", id="events"):
                yield DataTable(id="events-table", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one(LogView).focus()
        self.set_interval(0.5, self.show_log_status)
        events = self.query_one("#events-table", DataTable)
        events.add_columns("TIME", "STATE", "DETAIL")

    def show(self, view: CatalogView) -> None:
        run = view.run(self.run_id) or self.run
        if run is not None and self.run is not None and "energy" not in run:
            run = {**run, "energy": self.run.get("energy")}  # read with the whole row
        if run is not None:
            self.query_one("#run-header", Static).update(self.header(run, view.now))
        marked = [r for r in self.dashboard.marked if r != self.run_id]
        names = {r["id"]: r["name"] for r in view.runs}
        panel = self.query_one(MetricsPanel)
        panel.set_runs([self.run_id, *marked], names)
        if view.version != self._last_version and not self._reading:
            self._last_version = view.version
            self._reading = True
            self.read_run()
            panel.reload()

    @work(thread=True, exclusive=True, group="run-detail")
    def read_run(self) -> None:
        run = None
        events: list[tuple[float, str, str | None]] = []
        files: tuple[list[str], list[tuple[Any, ...]]] | None = None
        try:
            with self.dashboard.reader.query() as queries:
                run = queries.get_run(self.run_id)
                events = queries.run_events(self.run_id)
                if queries.features().files:
                    files = queries.run_files(self.run_id)
        finally:
            deliver(self, self._run_read, run, events, files)

    def _run_read(
        self,
        run: dict[str, Any] | None,
        events: list[tuple[float, str, str | None]],
        files: tuple[list[str], list[tuple[Any, ...]]] | None,
    ) -> None:
        self._reading = False
        if run is None:
            self.query_one("#run-header", Static).update(
                Text(f"run {self.run_id} is not in the catalog", style="red")
            )
            return
        self.run = run
        view = self.dashboard.view
        if files is not None:
            columns, rows = files
            self._note = outputs_note(run, [dict(zip(columns, r, strict=True)) for r in rows])
        self.query_one("#run-header", Static).update(self.header(run, view.now if view else 0.0))
        text = config_text(run)
        if text != self._config_shown:
            self._config_shown = text
            self.query_one("#config-text", Static).update(Syntax(text, "yaml", word_wrap=True))
        table = self.query_one("#events-table", DataTable)
        if table.row_count != len(events):
            table.clear()
            for when, state, detail in events:
                table.add_row(clock_time(when), cells.run_state(state), detail or "")
        self.show_files(files)

    def show_files(self, files: tuple[list[str], list[tuple[Any, ...]]] | None) -> None:
        table = self.query_one("#files-table", DataTable)
        if files is None:
            if not table.columns:
                table.add_column("FILES")
                table.add_row(
                    Text(
                        "file sync state appears here once the catalog has a files table",
                        style="dim",
                    )
                )
            return
        columns, rows = files
        if [str(c.label) for c in table.columns.values()] != [c.upper() for c in columns]:
            table.clear(columns=True)
            table.add_columns(*(c.upper() for c in columns))
        table.clear()
        for row in rows:
            table.add_row(*(format_file_cell(c, v) for c, v in zip(columns, row, strict=True)))

    def show_log_status(self) -> None:
        log = self.query_one(LogView)
        if self.query_one(TabbedContent).active == "log":
            self.set_info(
                Text(f"output.log · {log.status()} · f follow · [ ] tabs · esc back", style="dim")
            )
        else:
            self.set_info(Text("[ ] tabs · esc back · x cancel · p forward", style="dim"))

    def action_next_tab(self) -> None:
        self._move_tab(1)

    def action_previous_tab(self) -> None:
        self._move_tab(-1)

    def _move_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + step) % len(TABS)]
        self.focus_tab(tabs.active)

    def focus_tab(self, tab: str) -> None:
        if tab == "log":
            self.query_one(LogView).focus()
        elif tab == "metrics":
            self.query_one(MetricsPanel).query_one("#metric-keys").focus()
        elif tab == "config":
            self.query_one("#config", TabPane).query_one(VerticalScroll).focus()
        else:
            self.query_one(f"#{tab}-table", DataTable).focus()

    def show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.focus_tab(tab)

    def action_cancel_run(self) -> None:
        run = self.run or (self.dashboard.view.run(self.run_id) if self.dashboard.view else None)
        if run is not None:
            self.dashboard.confirm_cancel([run])

    def action_shell(self) -> None:
        """A login shell in the run's work dir on its host, the dashboard suspended meanwhile."""
        from cvtui.tui.shell import start_shell

        run = self.run or (self.dashboard.view.run(self.run_id) if self.dashboard.view else None)
        if run is None or not run.get("host"):
            self.notify("the run has no host yet", title="Shell", severity="warning")
            return
        start_shell(self.dashboard, self.run_id)

    def action_forward_port(self) -> None:
        """Ask for a port and forward it here from the run's host; p again closes them."""
        from cvtui.tui.screens.forward import ForwardScreen

        run = self.run or (self.dashboard.view.run(self.run_id) if self.dashboard.view else None)
        forwards = self.dashboard.forwards
        if run is None:
            return
        if forwards.of_run(self.run_id):
            closed = forwards.close_run(self.run_id)
            self.notify(f"closed {closed} forward{'s' if closed != 1 else ''}", title="Forward")
            return
        if run["state"] != "running" or not run.get("host"):
            self.notify("only a running run's host has ports to forward", severity="warning")
            return

        def chosen(ports: tuple[int, int | None] | None) -> None:
            if ports is not None:
                self.open_forward(run["id"], *ports)

        self.app.push_screen(ForwardScreen(run["name"], run["host"]), chosen)

    @work(thread=True, group="forward")
    def open_forward(self, run_id: str, remote_port: int, local_port: int | None) -> None:
        try:
            forward = self.dashboard.forwards.start(run_id, remote_port, local_port)
        except CvtuiError as exc:
            self.app.call_from_thread(
                self.notify, str(exc), title="Forward failed", severity="error"
            )
            return
        said = f"{forward.url} -> {forward.host.name}:{remote_port} (p closes it)"
        self.app.call_from_thread(self.notify, said, title="Forwarding", timeout=10)

    def commands(self) -> list[PaletteCommand]:
        entries = [
            PaletteCommand(f"Run: show {tab}", f"the {tab} tab", partial(self.show_tab, tab))
            for tab in TABS
        ]
        return [
            *entries,
            PaletteCommand("Run: follow log", "keep the log at its end", self.follow_log),
            PaletteCommand("Run: cancel", "SIGTERM, then SIGKILL", self.action_cancel_run),
            PaletteCommand(
                "Run: forward a port", "a port of its host, here", self.action_forward_port
            ),
            PaletteCommand("Run: back", "close this run", self.app.pop_screen),
        ]

    def follow_log(self) -> None:
        self.show_tab("log")
        self.query_one(LogView).follow = True


def format_file_cell(column: str, value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, int) and ("size" in column or column.endswith("bytes")):
        return units.short_size(value)
    if isinstance(value, float) and (
        "time" in column or column in ("mtime", "synced_at", "updated")
    ):
        return clock_time(value)
    if column in ("state", "sync_status", "status"):
        style = {"synced": "green", "syncing": "cyan", "outdated": "yellow"}.get(str(value), "")
        return Text(str(value), style=style)
    return str(value)
