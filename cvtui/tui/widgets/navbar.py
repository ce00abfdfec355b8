"""The top line: the numbered screens (current one lit, clickable), counts, engine, time."""

from __future__ import annotations

import time

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
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


class NavTab(Static):
    """One numbered screen name; a click switches to it."""

    def __init__(self, name: str, number: int, label: str, lit: bool) -> None:
        super().__init__(f"{number} {label}", classes="nav-tab -lit" if lit else "nav-tab")
        self.screen_name = name
        self.caption = f"{number} {label}"

    def show(self, count: str) -> None:
        text = Text(self.caption)
        if count:
            text.append(f" {count}", style="bold")
        self.update(text)

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.app.run_action(f"show_screen('{self.screen_name}')")


class NavBar(Horizontal):
    """Redrawn by its screen with every catalog read."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; }
    NavBar .nav-brand {
        width: auto; padding: 0 1; text-style: bold; background: $primary; color: $text;
    }
    NavBar .nav-tab { width: auto; padding: 0 1; color: $text-muted; text-wrap: nowrap; }
    NavBar .nav-tab.-lit { background: $accent; color: $text; text-style: bold; }
    NavBar .nav-status {
        width: 1fr; content-align: right middle; padding: 0 1; color: $text-muted;
    }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        yield Static("cvtui", classes="nav-brand")
        for number, (name, label) in enumerate(SCREENS, start=1):
            yield NavTab(name, number, label, lit=name == self.current)
        yield Static("", classes="nav-status")

    def show(self, view: CatalogView | None, engine: str) -> None:
        counts = tab_counts(view) if view is not None else {}
        for tab in self.query(NavTab):
            tab.show(counts.get(tab.screen_name, ""))
        status = engine
        if view is not None and self.size.width >= 100:
            status += time.strftime("  %H:%M:%S", time.localtime(view.now))
        self.query_one(".nav-status", Static).update(status)
