"""What every dashboard screen shares: the nav bar, a `/` filter, an info line, the footer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Static

from cvtui.tui.model import CatalogView
from cvtui.tui.widgets.filter_bar import FilterBar
from cvtui.tui.widgets.key_hints import KeyHints
from cvtui.tui.widgets.navbar import NavBar

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp


@dataclass(frozen=True)
class PaletteCommand:
    """One entry of the command palette: what it says, and what it does."""

    title: str
    help: str
    run: Callable[[], object]


class DashboardScreen(Screen[None]):
    """A screen fed with catalog views by the app; subclasses compose the body and show views."""

    NAV: ClassVar[str] = ""  # which numbered screen the nav bar lights
    FILTER_HINT: ClassVar[str] = ""  # the filter bar's placeholder; empty: no filter
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_filter", "Filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_text = ""
        self._info_shown: Text | str | None = None
        self._shown_version = -1  # the catalog view this screen last drew
        self._keys_for: object = None  # the focused widget the key hints were made for

    @property
    def dashboard(self) -> DashboardApp:
        return cast("DashboardApp", self.app)

    def compose(self) -> ComposeResult:
        yield NavBar(self.NAV)
        yield from self.compose_body()
        yield Static("", id="info", classes="info")
        if self.FILTER_HINT:
            yield FilterBar(self.FILTER_HINT)
        yield KeyHints()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        if self.focused is not self._keys_for or self._keys_for is None:
            self.show_keys()
        view = self.dashboard.view
        if view is not None and view.version != self._shown_version:
            self.show_view(view)  # coming back within the same read: nothing to redraw

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.show_keys()

    def show_keys(self) -> None:
        if self.is_mounted:
            self._keys_for = self.focused
            self.query_one(KeyHints).show(self.active_bindings)

    def show_view(self, view: CatalogView) -> None:
        """Called by the app for every catalog read while this screen is on top."""
        if not self.is_mounted:
            return  # just pushed: on_screen_resume shows the view once it is composed
        self._shown_version = view.version
        self.query_one(NavBar).show(view, self.dashboard.engine_note)
        self.show(view)

    def show(self, view: CatalogView) -> None:
        """Draw the view; subclasses redraw only what they own."""

    def set_info(self, text: Text | str) -> None:
        """The line under the table; redrawn only when it changed (it has a fixed height)."""
        if text != self._info_shown:
            self._info_shown = text
            self.query_one("#info", Static).update(text, layout=False)

    def commands(self) -> list[PaletteCommand]:
        """This screen's palette entries (the app adds the global ones)."""
        return []

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "open_filter" and not self.FILTER_HINT)

    def action_open_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.open()

    def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
        self.query_text = message.query
        view = self.dashboard.view
        if view is not None:
            self.show(view)
        if message.done:
            self.focus_main()

    def focus_main(self) -> None:
        """Give the keyboard back to the screen's main widget after the filter bar closes."""
