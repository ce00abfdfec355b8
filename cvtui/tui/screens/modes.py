"""The dashboard's four numbered screens, each module imported when its screen is first shown.

The first frame then waits only for the screen it shows (and `cvtui` for none of them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual.screen import Screen


def hosts_screen() -> Screen[None]:
    from cvtui.tui.screens.hosts import HostsScreen

    return HostsScreen()


def queue_screen() -> Screen[None]:
    from cvtui.tui.screens.queue import QueueScreen

    return QueueScreen()


def runs_screen() -> Screen[None]:
    from cvtui.tui.screens.runs import RunsScreen

    return RunsScreen()


def stats_screen() -> Screen[None]:
    from cvtui.tui.screens.stats import StatsScreen

    return StatsScreen()


# Mode name (as in navbar.SCREENS) -> what makes its screen, for App.MODES.
MODE_SCREENS = {
    "hosts": hosts_screen,
    "queue": queue_screen,
    "runs": runs_screen,
    "stats": stats_screen,
}


def import_screens() -> None:
    """Import every screen's module (from a thread, once the first frame is out): the first
    switch to a screen then only composes it."""
    for module in ("hosts", "queue", "runs", "stats"):
        importlib.import_module(f"cvtui.tui.screens.{module}")
