"""LiveTable: rows drawn once until their data or colours change, and its own scroll bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.app import App, ComposeResult

from cvtui.tui.widgets.cell_segments import row_segments
from cvtui.tui.widgets.table import SCROLLBAR, Column, LiveTable


class CountingTable(LiveTable):
    """Rows `name -> value`; counts how many rows it built cells for."""

    def __init__(self) -> None:
        super().__init__()
        self.built: list[str] = []

    def columns_for(self, width: int) -> list[Column]:
        return [("name", "NAME", 10), ("value", "VALUE", None)]

    def cells(self, key: str, data: Any) -> Sequence[Any]:
        self.built.append(key)
        return [key, str(data)]


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield CountingTable()


def rows(count: int, value: int = 0) -> list[tuple[str, int]]:
    return [(f"row-{n:03d}", value) for n in range(count)]


def wheel_scrolls(table: LiveTable) -> bool:
    """Whether the mouse wheel scrolls the table (Textual asks allow_vertical_scroll)."""
    return table.allow_vertical_scroll


def first_style(table: LiveTable, y: int) -> Style | None:
    """The style of the first cells on line y of the table."""
    return next(iter(table.render_line(y))).style


def bar_style(table: LiveTable, y: int) -> Style | None:
    """The style of the scroll bar cells on line y of the table."""
    last = list(table.render_line(y))[-1]
    assert last.text == " " * SCROLLBAR
    return last.style


async def test_only_changed_rows_are_built_again() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(CountingTable)
        table.show_rows(rows(5))
        await pilot.pause()
        assert sorted(table.built) == [f"row-{n:03d}" for n in range(5)]
        table.built.clear()
        table.show_rows([(key, 1 if key == "row-002" else 0) for key, _ in rows(5)])
        await pilot.pause()
        assert table.built == ["row-002"]
        table.built.clear()
        # Textual re-applies CSS on every screen switch; unchanged colours keep the rows.
        app.stylesheet.update(app.screen)
        await pilot.pause()
        table.refresh()
        await pilot.pause()
        assert table.built == []


async def test_a_theme_change_draws_the_rows_in_the_new_colours() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(CountingTable)
        table.show_rows(rows(3))
        await pilot.pause()
        dark = first_style(table, 1)
        table.built.clear()
        app.theme = "textual-light"
        await pilot.pause()
        await pilot.pause()
        assert first_style(table, 1) != dark
        assert table.built  # rebuilt, not served from the cache


async def test_the_scroll_bar_follows_the_cursor() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(CountingTable)
        table.show_rows(rows(3))
        await pilot.pause()
        visible = table.size.height - 1  # the header takes a line
        assert not wheel_scrolls(table)
        # No bar: its cells continue each row, the cursor's row (line 1) lit like the rest.
        plain, lit = bar_style(table, 2), bar_style(table, 1)
        assert plain is not None and plain.bgcolor == table.base_style.bgcolor
        cursor_row = first_style(table, 1)
        assert lit is not None and cursor_row is not None
        assert lit.bgcolor == cursor_row.bgcolor != plain.bgcolor

        table.show_rows(rows(10 * visible))
        await pilot.pause()
        assert wheel_scrolls(table)
        top = bar_style(table, 1)
        bottom = bar_style(table, visible)
        assert top != bottom  # thumb at the top, track below
        await pilot.press("G")  # to the last row
        await pilot.pause()
        assert table.scroll_offset.y == table.max_scroll_y > 0
        assert bar_style(table, visible) == top
        assert bar_style(table, 1) == bottom


def test_row_segments_share_a_segment_between_plain_cells() -> None:
    from rich.console import Console
    from rich.text import Text

    base = Style(color="white")
    segments = row_segments(["a", "b", Text("c", style="red"), "d"], [3, 3, 3, 3], base, Console())
    assert segments[0] == Segment(" a    b    ", base)  # two plain cells and their padding
    assert segments[1].text == "c  " and segments[1].style == base + Style(color="red")
    assert segments[2] == Segment("  d   ", base)
    assert sum(len(s.text) for s in segments) == 4 * (3 + 2)
