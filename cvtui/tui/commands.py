"""The command palette's cvtui entries: the app's global actions plus the current screen's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from cvtui.tui.screens.base import DashboardScreen, PaletteCommand

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp


class DashboardCommands(Provider):
    """Every action a key can do, findable by name (ctrl+p)."""

    def entries(self) -> list[PaletteCommand]:
        app: DashboardApp = self.app  # type: ignore[assignment]
        found = list(app.global_commands())
        if isinstance(self.screen, DashboardScreen):
            found = self.screen.commands() + found
        return found

    async def discover(self) -> Hits:
        for entry in self.entries():
            yield DiscoveryHit(entry.title, entry.run, help=entry.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in self.entries():
            score = matcher.match(entry.title)
            if score > 0:
                yield Hit(score, matcher.highlight(entry.title), entry.run, help=entry.help)
