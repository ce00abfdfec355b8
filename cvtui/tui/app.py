"""The cvtui dashboard app: hosts the engine when asked to and shows the catalog live."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Header, Static

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.inventory import Inventory
from cvtui.tui.widgets.hosts_table import HostsTable


class DashboardApp(App[int]):
    """Hosts and GPUs, refreshed whenever the catalog changes."""

    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        inventory: Inventory,
        catalog: Catalog,
        *,
        engine: Engine | None = None,
        title: str = "cvtui",
        duration_s: float | None = None,
        refresh_s: float = 0.5,
    ) -> None:
        super().__init__()
        self.inventory = inventory
        self.catalog = catalog
        self.engine = engine
        self.title = title
        self.duration_s = duration_s
        self.refresh_s = refresh_s
        self._stop = asyncio.Event()
        self._engine_task: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield HostsTable(id="hosts")
        yield Static("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        if self.engine is not None:
            self._engine_task = asyncio.create_task(self.engine.run(self._stop))
        self.refresh_hosts()
        self.set_interval(self.refresh_s, self.refresh_hosts)
        if self.duration_s:
            self.set_timer(self.duration_s, self.action_quit)

    def refresh_hosts(self) -> None:
        policy = self.inventory.policy
        if self.engine is not None:
            self.inventory = self.engine.inventory
        report = self.catalog.hosts_report(
            now=time.time(),
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
        )
        # Staleness depends on the clock as well as on commits, so this redraws on a timer.
        self.query_one(HostsTable).show(report)
        healthy = sum(1 for h in report if h["state"] == "healthy")
        gpus = sum(len(h["gpus"]) for h in report)
        error = self.engine.inventory_error if self.engine else None
        status = f"{healthy}/{len(report)} hosts healthy · {gpus} GPUs"
        if error is not None:
            status += f" · inventory edit rejected: {error}"
        self.query_one("#status", Static).update(status)

    async def action_quit(self) -> None:
        self._stop.set()
        if self._engine_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task
        self.exit(0)
