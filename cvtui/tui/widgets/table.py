"""A keyed table drawn line by line: a row is rebuilt only when its data changed and it shows.

Textual's DataTable re-renders every visible cell on any update, which at 100 hosts updating
each second costs a quarter of a core. Here a row is its data (compared by value); its cells
are built when it is first drawn, rendered straight to segments and cached as a Strip by key
until the data, the width, the cursor or the theme change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from cvtui.tui.widgets.cell_segments import PADDING, row_segments

Column = tuple[str, str, int | None]  # key, label, width (None: what the others leave)
Row = tuple[str, Any]  # key, the row's data: cells are built from it only when it is drawn
MIN_FILL = 8  # the filling column never gets narrower than this
SCROLLBAR = 2  # cells at the right where the table draws its scroll bar


class LiveTable(ScrollView, can_focus=True):
    """Rows keyed by name under a fixed header; ``show_rows`` keeps the cursor on its row.

    Subclasses say which columns fit a width (``columns_for``) and how a row's data becomes
    its cells (``cells``).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Cursor down", show=False),
        Binding("up,k", "cursor_up", "Cursor up", show=False),
        Binding("pagedown,ctrl+d", "page_down", "Page down", show=False),
        Binding("pageup,ctrl+u", "page_up", "Page up", show=False),
        Binding("home,g", "first", "Top", show=False),
        Binding("end,G", "last", "Bottom", show=False),
        Binding("enter", "select", "Open", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "live-table--header",
        "live-table--cursor",
        "live-table--cursor-blurred",
    }
    # overflow-y hidden: the table draws its scroll bar in its own lines. Textual's ScrollBar
    # widget repaints all its lines each time its screen comes back (a third of a screen
    # switch); this bar costs one segment on lines that are drawn anyway.
    DEFAULT_CSS = """
    LiveTable { height: 1fr; overflow-x: hidden; overflow-y: hidden; background: $surface; }
    LiveTable > .live-table--header { background: $panel; color: $text; text-style: bold; }
    LiveTable > .live-table--cursor { background: $block-cursor-background; }
    LiveTable > .live-table--cursor-blurred { background: $block-cursor-blurred-background; }
    """

    @dataclass
    class Highlighted(Message):
        """The cursor moved to another row (key None: the table is empty)."""

        table: LiveTable
        key: str | None

    @dataclass
    class Selected(Message):
        """enter (or a second click) on a row."""

        table: LiveTable
        key: str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._column_spec: list[Column] = []
        self._rows: list[Row] = []
        self._index: dict[str, int] = {}
        self._strips: dict[tuple[str, int], Strip] = {}  # (key, look) -> rendered line
        self._cursor = 0
        self._last_rows: Sequence[Row] = ()
        self._base: Style | None = None  # rich_style walks the DOM: once per style change
        self._looks: tuple[Style, ...] = ()  # the styles the cached strips were drawn with
        self._bar_styles = (Style(), Style())  # scroll bar track and thumb
        self._header_strip: Strip | None = None

    # -- columns ------------------------------------------------------------------------
    def columns_for(self, width: int) -> list[Column]:
        """The columns at this table width; a None width fills what the others leave."""
        raise NotImplementedError

    def cells(self, key: str, data: Any) -> Sequence[Any]:
        """The cells of a row, in column order (Text, or str which is never read as markup)."""
        raise NotImplementedError

    def redraw(self) -> None:
        """Show the data again after the columns changed."""
        self.show_rows(self._last_rows)

    def resolved_columns(self, width: int) -> list[Column]:
        spec = self.columns_for(width)
        fixed = sum(w for _, _, w in spec if w is not None)
        padding = 2 * PADDING * len(spec) + SCROLLBAR
        fill = max(MIN_FILL, width - fixed - padding)
        return [(key, label, fill if w is None else w) for key, label, w in spec]

    def on_mount(self) -> None:
        self._set_columns(self.resolved_columns(self.size.width or 80))
        self.redraw()

    def on_resize(self) -> None:
        columns = self.resolved_columns(self.size.width)
        if columns != self._column_spec:
            self._set_columns(columns)
            self.redraw()

    def _set_columns(self, columns: Sequence[Column]) -> None:
        self._column_spec = list(columns)
        self._header_strip = None
        self._strips.clear()
        self._rows = []
        self._index = {}

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _, _ in self._column_spec]

    @property
    def widths(self) -> list[int]:
        return [width or 0 for _, _, width in self._column_spec]

    # -- rows ---------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def row_keys(self) -> list[str]:
        return [key for key, _ in self._rows]

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor, or None for an empty table."""
        return self._rows[self._cursor][0] if self._rows else None

    def get_cell(self, key: str, column: str) -> Any:
        return self.cells(key, self._rows[self._index[key]][1])[self.column_keys.index(column)]

    def show_rows(self, rows: Sequence[Row]) -> None:
        """Replace the rows; only rows whose data changed are drawn again."""
        self._last_rows = rows
        if not self._column_spec:
            return  # not mounted yet: on_mount sets the columns, then redraw shows these
        current = self.current_key
        before = self._rows
        old = dict(before)
        self._rows = list(rows)
        self._index = {key: i for i, (key, _) in enumerate(self._rows)}
        changed = {key for key, data in self._rows if key in old and old[key] != data}
        for key in [*changed, *(old.keys() - self._index.keys())]:
            for look in (0, 1, 2):
                self._strips.pop((key, look), None)
        cursor_before = self._cursor
        if current in self._index:
            self._cursor = self._index[current]
        self._cursor = max(0, min(self._cursor, len(self._rows) - 1))
        if self.current_key != current:
            self.post_message(self.Highlighted(self, self.current_key))
        height = len(self._rows) + 1
        if self.virtual_size != Size(self.size.width, height):
            self.virtual_size = Size(self.size.width, height)
            self.refresh()  # the scroll range changed: lines may have moved
            return
        # Repaint only the lines on screen whose row is new, moved or changed: the others
        # keep Textual's rendered lines, which is most of a frame's cost.
        top = self.scroll_offset.y
        stale = []
        for y in range(1, max(1, self.size.height)):
            number = top + y - 1
            new_key = self._rows[number][0] if number < len(self._rows) else None
            old_key = before[number][0] if number < len(before) else None
            cursor_moved = cursor_before != self._cursor and number in (
                cursor_before,
                self._cursor,
            )
            if new_key != old_key or new_key in changed or cursor_moved:
                stale.append(y)
        self._refresh_lines(stale)

    def _refresh_lines(self, lines: Sequence[int]) -> None:
        """Repaint these lines of the widget (0 is the header), in as few regions as runs."""
        width = self.size.width
        if not lines or not width:
            return
        if len(lines) * 2 > self.size.height:
            self.refresh()
            return
        regions = []
        start = previous = lines[0]
        for y in [*lines[1:], -1]:
            if y != previous + 1:
                regions.append(Region(0, start, width, previous - start + 1))
                start = y
            previous = y
        self.refresh(*regions)

    # -- drawing ------------------------------------------------------------------------
    @property
    def base_style(self) -> Style:
        """The table's own style (background, colour) that every cell is drawn over."""
        if self._base is None:
            # Textual re-applies CSS to every node of a screen each time it comes back, and
            # says so here whether or not anything changed: drop the drawn rows only when
            # their colours really did.
            looks = (
                self.rich_style,
                self.get_component_rich_style("live-table--header"),
                self.get_component_rich_style("live-table--cursor"),
                self.get_component_rich_style("live-table--cursor-blurred"),
            )
            if looks != self._looks:
                self._looks = looks
                self._strips.clear()
                self._header_strip = None
            self._bar_styles = self._scrollbar_styles()
            self._base = looks[0]
        return self._base

    def _scrollbar_styles(self) -> tuple[Style, Style]:
        """Track and thumb, in the scrollbar colours of the CSS, as Textual draws them."""
        styles = self.styles
        track = styles.scrollbar_background
        if track.a < 1:
            track = self.background_colors[0] + track
        thumb = track + styles.scrollbar_color
        return Style(bgcolor=track.rich_color), Style(bgcolor=thumb.rich_color)

    @property
    def allow_vertical_scroll(self) -> bool:
        # The mouse wheel scrolls whenever there is more to see (overflow-y is hidden only
        # because the bar is drawn here).
        return not self.disabled and self.max_scroll_y > 0

    def _scrollbar(self, y: int, blank: Style) -> Segment:
        """The scroll bar's cells on line y (1 is the first row's line); blank: no bar."""
        visible = self.size.height - 1
        total = len(self._rows)
        if total <= visible or visible < 1:
            return Segment(" " * SCROLLBAR, blank)
        thumb = max(1, round(visible * visible / total))
        start = round(self.scroll_offset.y * (visible - thumb) / (total - visible))
        track, lit = self._bar_styles
        return Segment(" " * SCROLLBAR, lit if start <= y - 1 < start + thumb else track)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.base_style  # first: it drops the cached lines if the colours changed
        if y == 0:
            return self._header(width)
        inner = max(0, width - SCROLLBAR)
        number = self.scroll_offset.y + y - 1
        row = self._row(number, inner) if number < len(self._rows) else Strip.blank(inner, base)
        segments = list(row)
        # Without a bar its cells continue the row's background (the cursor's, too).
        end = segments[-1].style if segments else None
        blank = base + Style(bgcolor=end.bgcolor) if end and end.bgcolor else base
        return Strip([*segments, self._scrollbar(y, blank)], inner + SCROLLBAR)

    def _row(self, number: int, width: int) -> Strip:
        """Row number drawn width cells wide, lit when under the cursor (cached by key)."""
        key = self._rows[number][0]
        look = 0 if number != self._cursor else (1 if self.has_focus else 2)
        strip = self._strips.get((key, look))
        if strip is None:
            plain = self._strips.get((key, 0))
            if plain is None:
                plain = self._row_strip(self.cells(key, self._rows[number][1]), width)
                self._strips[(key, 0)] = plain
            strip = plain
            if look:
                # Over the cells' own colours: the whole row is lit.
                name = "live-table--cursor" if look == 1 else "live-table--cursor-blurred"
                lit = Style(bgcolor=self.get_component_rich_style(name).bgcolor)
                strip = Strip(Segment.apply_style(list(plain), post_style=lit), width)
            self._strips[(key, look)] = strip
        return strip

    def _row_strip(self, cells: Sequence[Any], width: int, style: Style | None = None) -> Strip:
        """Cells as one line exactly width cells wide."""
        base = self.base_style if style is None else style
        segments = row_segments(cells, self.widths, base, self.app.console)
        used = sum(self.widths) + 2 * PADDING * len(self.widths)
        if used > width:
            return Strip(segments).crop_extend(0, width, base)
        if used < width:
            segments.append(Segment(" " * (width - used), base))
        return Strip(segments, width)

    def _header(self, width: int) -> Strip:
        header = self._header_strip
        if header is None or header.cell_length != width:
            style = self.base_style + self.get_component_rich_style("live-table--header")
            labels = [label for _, label, _ in self._column_spec]
            header = self._header_strip = self._row_strip(labels, width, style)
        return header

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None  # base_style compares the new colours with the drawn ones

    def on_focus(self) -> None:
        self._refresh_rows(self._cursor)

    def on_blur(self) -> None:
        self._refresh_rows(self._cursor)

    def _refresh_rows(self, *numbers: int) -> None:
        """Repaint the lines of these rows, where they are on screen."""
        top = self.scroll_offset.y
        self._refresh_lines(
            sorted({n - top + 1 for n in numbers if 0 <= n - top < self.size.height - 1})
        )

    # -- moving -------------------------------------------------------------------------
    def move_cursor(self, row: int) -> None:
        if not self._rows:
            return
        row = max(0, min(row, len(self._rows) - 1))
        if row != self._cursor:
            self._refresh_rows(self._cursor, row)
            self._cursor = row
            self.post_message(self.Highlighted(self, self.current_key))
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.size.height - 1)  # the header takes a line
        top = self.scroll_offset.y
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, immediate=True)
        elif self._cursor >= top + visible:
            self.scroll_to(y=self._cursor - visible + 1, animate=False, immediate=True)

    def select_key(self, key: str) -> None:
        if key in self._index:
            self.move_cursor(self._index[key])

    def action_cursor_down(self) -> None:
        self.move_cursor(self._cursor + 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(self._cursor - 1)

    def action_page_down(self) -> None:
        self.move_cursor(self._cursor + max(1, self.size.height - 2))

    def action_page_up(self) -> None:
        self.move_cursor(self._cursor - max(1, self.size.height - 2))

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self._rows) - 1)

    def action_select(self) -> None:
        if self.current_key is not None:
            self.post_message(self.Selected(self, self.current_key))

    def on_click(self, event: events.Click) -> None:
        row = self.scroll_offset.y + event.y - 1
        if event.y < 1 or row >= len(self._rows):
            return
        if row == self._cursor and event.chain > 1:
            self.action_select()
        self.move_cursor(row)
