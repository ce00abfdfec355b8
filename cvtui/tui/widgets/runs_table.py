"""Tables of runs: the Runs screen's (all states) and the Queue's (start order and reasons)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rich.text import Text

from cvtui import units
from cvtui.run_names import display_names
from cvtui.states import ACTIVE_STATES, FINAL_STATES
from cvtui.tui import cells
from cvtui.tui.widgets.table import Column, LiveTable, Row

WIDE_FROM = 110
ACTIVE = ACTIVE_STATES


def placement(run: dict[str, Any]) -> str:
    if not run.get("host"):
        return "-"
    gpus = ",".join(str(g) for g in run.get("gpus") or [])
    return f"{run['host']}:{gpus}" if gpus else run["host"]


def run_time(run: dict[str, Any], now: float) -> Text:
    """Running: time so far; ended: how long it ran; waiting: how long it has waited (dim)."""
    end = run.get("ended") or now
    if run.get("started"):
        return Text(units.duration(end - run["started"]))
    return Text(units.duration(end - run["submitted"]), style="dim")


def run_note(run: dict[str, Any]) -> Text:
    state = run["state"]
    reason = run.get("reason") or ""
    if state == "failed" and run.get("exit_code") is not None:
        extra = "" if not reason or reason.startswith("exit code") else f": {reason}"
        return Text(f"exit {run['exit_code']}{extra}", style="red")
    if state in (*FINAL_STATES[1:], "queued") and run.get("reason"):
        return Text(run["reason"], style="red" if state != "queued" else "dim")
    return Text(run.get("progress_msg") or "", style="dim")


def wanted_gpus(run: dict[str, Any]) -> str:
    return str((run.get("resources") or {}).get("gpus", 0))


def runs_columns(width: int) -> list[Column]:
    wide = width >= WIDE_FROM
    columns: list[Column] = [("id", "ID", 12)] if wide else []
    columns += [
        ("name", "NAME", 28 if wide else 22),
        ("state", "STATE", 11),
        ("where", "HOST:GPUS", 14 if wide else 10),
        ("progress", "PROGRESS", 11 if wide else 8),
        ("time", "TIME", 6),
    ]
    if wide:
        columns += [("user", "USER", 8), ("project", "PROJECT", 10)]
    columns.append(("note", "NOTE", None))
    return columns


class RunsTable(LiveTable):
    """Rows keyed by run id; marked runs (for comparing metrics) show a dot."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._last: tuple[Sequence[dict[str, Any]], float, Collection[str]] = ([], 0.0, ())

    def columns_for(self, width: int) -> list[Column]:
        return runs_columns(width)

    def redraw(self) -> None:
        self.show(*self._last)

    @property
    def _wide(self) -> bool:
        return len(self._column_spec) > len(runs_columns(0))

    def show(self, runs: Sequence[dict[str, Any]], now: float, marked: Collection[str]) -> None:
        self._last = (runs, now, marked)
        names = display_names(runs)
        # Only active runs depend on the clock: ended ones keep equal data, so stay cached.
        self.show_rows(
            [
                (
                    r["id"],
                    (r, now if r["state"] in ACTIVE else None, r["id"] in marked, names[r["id"]]),
                )
                for r in runs
            ]
        )

    def cells(self, key: str, data: Any) -> list[Any]:
        run, now, is_marked, shown = data
        wide = self._wide
        name = Text("● ", style="bold magenta") if is_marked else Text()
        name.append(shown)
        row: list[Any] = [Text(run["id"][:12], style="dim")] if wide else []
        row += [
            name,
            cells.run_state(run["state"]),
            cells.fit(placement(run), 14 if wide else 10),
            cells.progress(run.get("progress"), 6 if wide else 3),
            run_time(run, now or 0.0),
        ]
        if wide:
            row += [cells.fit(run.get("user") or "-", 8), cells.fit(run.get("project") or "-", 10)]
        row.append(run_note(run))
        return row


def queue_columns(width: int) -> list[Column]:
    wide = width >= WIDE_FROM
    columns: list[Column] = [("pos", "#", 3)]
    if wide:
        columns.append(("id", "ID", 12))
    columns += [
        ("name", "NAME", 28 if wide else 22),
        ("priority", "PRIO", 6),
        ("gpus", "GPUS", 4),
        ("waited", "WAITED", 6),
    ]
    if wide:
        columns.append(("user", "USER", 8))
    columns.append(("reason", "WAITS FOR", None))
    return columns


class QueueTable(LiveTable):
    """Rows keyed by run id in start order: dispatching runs first, then the queue."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._last: tuple[Sequence[dict[str, Any]], float] = ([], 0.0)

    def columns_for(self, width: int) -> list[Column]:
        return queue_columns(width)

    def redraw(self) -> None:
        self.show(*self._last)

    def cells(self, key: str, data: Any) -> list[Any]:
        return list(data)

    @property
    def _wide(self) -> bool:
        return len(self._column_spec) > len(queue_columns(0))

    def show(self, queue: Sequence[dict[str, Any]], now: float) -> None:
        self._last = (queue, now)
        rows: list[Row] = []
        position = 0
        names = display_names(queue)
        for run in queue:
            dispatching = run["state"] == "dispatching"
            if not dispatching:
                position += 1
            reason = (
                Text(f"starting on {placement(run)}", style="bold cyan")
                if dispatching
                else Text(run.get("reason") or "next dispatch pass", style="")
            )
            row: list[Any] = [Text("»", style="bold cyan") if dispatching else str(position)]
            if self._wide:
                row.append(Text(run["id"][:12], style="dim"))
            row += [
                names[run["id"]],
                Text(run["priority"], style=cells.PRIORITY_STYLES.get(run["priority"], "")),
                wanted_gpus(run),
                Text(units.duration(now - run["submitted"]), style="dim"),
            ]
            if self._wide:
                row.append(cells.fit(run.get("user") or "-", 8))
            row.append(reason)
            rows.append((run["id"], row))
        self.show_rows(rows)
