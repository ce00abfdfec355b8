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
from cvtui.tui.widgets.key_hints import KeyHints
from cvtui.tui.widgets.navbar import NavBar

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp
    from cvtui.tui.widgets.filter_bar import FilterBar


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
        # A new screen starts a CSS generation behind the app's, so Textual re-parses every
        # stylesheet (twice) the first time it shows one: tens of milliseconds at start-up
        # and on a screen's first key. This screen is styled from the app's current, parsed
        # stylesheet when it mounts, so it starts current. (Private Textual state, hence
        # the guard: without it the screen shows as before, only slower.)
        try:
            generation = getattr(self.app, "_css_update_count", None)
        except RuntimeError:  # made outside a running app: nothing to catch up with
            generation = None
        if isinstance(generation, int) and hasattr(self, "_css_update_count"):
            self._css_update_count = generation
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
        # The filter bar (an Input) is mounted on the first `/`: hidden until then, it would
        # still be composed, and styled again on every switch to this screen.
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

    async def action_open_filter(self) -> None:
        from cvtui.tui.widgets.filter_bar import FilterBar

        bars = self.query(FilterBar)
        if bars:
            bar = bars.first()
        else:
            bar = FilterBar(self.FILTER_HINT)
            await self.mount(bar, before=self.query_one(KeyHints))
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
