"""The top line: the numbered screens (current one lit, clickable), counts, engine, time.

One Static redrawn only when its text changes, and never with a layout pass: a bar of small
widgets would re-lay-out the screen on every catalog read.
"""

from __future__ import annotations

import time

from textual.content import Content
from textual.markup import escape
from textual.widgets import Static

from cvtui.tui.model import CatalogView

SCREENS = (("hosts", "Hosts"), ("queue", "Queue"), ("runs", "Runs"), ("stats", "Stats"))


def tab_counts(view: CatalogView) -> dict[str, str]:
    """The figure next to each screen's name: healthy hosts, queued runs, running runs."""
    up = sum(1 for h in view.hosts if h["state"] == "healthy")
    queued = sum(1 for r in view.queue if r["state"] == "queued")
    running = sum(1 for r in view.runs if r["state"] in ("running", "dispatching"))
    return {
        "hosts": f"{up}/{len(view.hosts)}",
        "queue": str(queued) if queued else "",
        "runs": f"{running}▶" if running else "",
    }


def nav_markup(current: str, counts: dict[str, str], status: str, width: int) -> str:
    parts = ["[bold $text on $primary] cvtui [/]"]
    used = 7
    for number, (name, label) in enumerate(SCREENS, start=1):
        count = f" {counts[name]}" if counts.get(name) else ""
        tab = f" {number} {label}{count} "
        style = "bold $text on $accent" if name == current else "$text-muted"
        click = f"@click=app.show_screen('{name}')"
        parts.append(f" [{style} {click}]{escape(tab)}[/]")
        used += len(tab) + 1
    gap = width - used - len(status) - 1
    if gap >= 2:
        parts.append(" " * gap + f"[$text-muted]{escape(status)}[/] ")
    return "".join(parts)


class NavBar(Static):
    """Redrawn by its screen with every catalog read, when something on it changed."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; }
    """

    def __init__(self, current: str) -> None:
        super().__init__("")
        self.current = current
        self.markup = ""

    def on_mount(self) -> None:
        self.show(None, "")

    def show(self, view: CatalogView | None, engine: str) -> None:
        width = self.app.size.width
        status = engine
        if view is not None and width >= 100:
            status += time.strftime("  %H:%M:%S", time.localtime(view.now))
        counts = tab_counts(view) if view is not None else {}
        markup = nav_markup(self.current, counts, status, width)
        if markup != self.markup:
            self.markup = markup
            self.update(Content.from_markup(markup), layout=False)
