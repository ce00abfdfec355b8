"""`!` in the dashboard: `cvtui shell` on a host or in a run's work dir, in this terminal.

The dashboard is suspended meanwhile (Textual gives the terminal back and drops its own
output) while its event loop goes on: an engine running in the dashboard keeps its hosts and
serves the shell's connection through its control socket, as it serves any `cvtui exec`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from textual.app import SuspendNotSupported

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp


def shell_argv(app: DashboardApp, target: str) -> list[str] | None:
    """The `cvtui shell TARGET` command for this dashboard's home and inventory file (None:
    the inventory came from no file, so no command can name it)."""
    path = app.inventory.path
    if not path or path.startswith("<"):
        return None
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(app.home), "--inventory", path]
    return [*argv, "shell", target]


def start_shell(app: DashboardApp, target: str) -> None:
    """Open the shell on target in a worker of the app (one at a time), so the screen that
    asked goes on taking messages meanwhile."""
    app.run_worker(open_shell(app, target), group="shell", exclusive=True)


async def open_shell(app: DashboardApp, target: str) -> None:
    """Run `cvtui shell target` with the terminal to itself, then show the dashboard again."""
    argv = shell_argv(app, target)
    if argv is None:
        app.notify("no inventory file to give the shell", title="Shell", severity="error")
        return
    try:
        with app.suspend():
            process = await asyncio.create_subprocess_exec(*argv)
            code = await process.wait()
    except SuspendNotSupported:
        app.notify("this terminal cannot be handed over", title="Shell", severity="error")
        return
    if code:
        app.notify(f"exited with {code}", title=f"Shell on {target}", severity="warning")
