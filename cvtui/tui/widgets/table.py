"""A keyed table drawn line by line: a row is rebuilt only when its data changed and it shows.

Textual's DataTable re-renders every visible cell on any update, which at 100 hosts updating
each second costs a quarter of a core. Here a row is its data (compared by value); its cells
are built when it is first drawn, rendered straight to segments and cached as a Strip by key
until the data, the width, the cursor or the theme change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Column = tuple[str, str, int | None]  # key, label, width (None: what the others leave)
Row = tuple[str, Any]  # key, the row's data: cells are built from it only when it is drawn
MIN_FILL = 8  # the filling column never gets narrower than this
PADDING = 1  # blank cells on each side of a column


def fit_plain(text: str, width: int) -> str:
    """text padded or cut (with an ellipsis) to exactly width cells."""
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    return set_cell_size(text, width - 1) + "…"


def row_segments(
    cells: Sequence[Any], widths: Sequence[int], base: Style, console: Console
) -> list[Segment]:
    """One table row as segments over the base style; plain strings are never read as markup.

    A str or single-style Text becomes one segment, without Rich's text layout: most cells
    are like that, and rows are drawn often.
    """
    pad = Segment(" " * PADDING, base)
    segments: list[Segment] = []
    for cell, width in zip(cells, widths, strict=False):
        segments.append(pad)
        if isinstance(cell, Text) and cell.spans:
            segments.extend(styled_segments(cell, width, base, console))
        elif isinstance(cell, Text):
            style = base + console.get_style(cell.style) if cell.style else base
            segments.append(Segment(fit_plain(cell.plain, width), style))
        else:
            segments.append(Segment(fit_plain(str(cell), width), base))
        segments.append(pad)
    return segments


def styled_segments(text: Text, width: int, base: Style, console: Console) -> tuple[Segment, ...]:
    """A Text with spans as segments exactly width cells wide (cached: cells recur a lot)."""
    return _styled(text.plain, tuple(text.spans), text.style, width, base, console)


@lru_cache(maxsize=16384)
def _styled(
    plain: str,
    text_spans: tuple[Span, ...],
    text_style: str | Style,
    width: int,
    base: Style,
    console: Console,
) -> tuple[Segment, ...]:
    # Rich's own rendering lays text out (wrapping, justifying) and costs ~60 us a cell; a
    # table cell is one short line, so styles are resolved per span boundary instead.
    if cell_len(plain) > width or "\n" in plain:
        cut = Text(plain, style=text_style, spans=list(text_spans), end="")
        cut.truncate(width, overflow="ellipsis", pad=True)
        cut.stylize_before(base)
        return tuple(cut.render(console))
    own = base + console.get_style(text_style) if text_style else base
    spans = [(s.start, s.end, console.get_style(s.style)) for s in text_spans if s.end > s.start]
    cuts = sorted({0, len(plain), *(p for s in spans for p in s[:2] if p < len(plain))})
    segments = []
    for start, end in pairwise(cuts):
        style = own
        for s_start, s_end, span_style in spans:
            if s_start <= start and end <= s_end:
                style = style + span_style
        segments.append(Segment(plain[start:end], style))
    if cell_len(plain) < width:
        segments.append(Segment(" " * (width - cell_len(plain)), own))
    return tuple(segments)


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
    DEFAULT_CSS = """
    LiveTable { height: 1fr; overflow-x: hidden; background: $surface; }
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
        padding = 2 * PADDING * len(spec) + 2  # +2: the vertical scrollbar
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
        old = dict(self._rows)
        self._rows = list(rows)
        self._index = {key: i for i, (key, _) in enumerate(self._rows)}
        changed = [key for key, data in self._rows if key in old and old[key] != data]
        for key in [*changed, *(old.keys() - self._index.keys())]:
            for look in (0, 1, 2):
                self._strips.pop((key, look), None)
        self.virtual_size = Size(self.size.width, len(self._rows) + 1)
        if current in self._index:
            self._cursor = self._index[current]
        self._cursor = max(0, min(self._cursor, len(self._rows) - 1))
        if self.current_key != current:
            self.post_message(self.Highlighted(self, self.current_key))
        self.refresh()

    # -- drawing ------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            return self._header(width)
        number = self.scroll_offset.y + y - 1
        if number >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        key = self._rows[number][0]
        look = 0 if number != self._cursor else (1 if self.has_focus else 2)
        strip = self._strips.get((key, look))
        if strip is None:
            plain = self._strips.get((key, 0))
            if plain is None:
                cells = self.cells(key, self._rows[number][1])
                segments = row_segments(cells, self.widths, self.rich_style, self.app.console)
                plain = Strip(segments).crop_extend(0, width, self.rich_style)
                self._strips[(key, 0)] = plain
            strip = plain
            if look:
                # Over the cells' own colours: the whole row is lit.
                name = "live-table--cursor" if look == 1 else "live-table--cursor-blurred"
                lit = Style(bgcolor=self.get_component_rich_style(name).bgcolor)
                strip = Strip(Segment.apply_style(list(plain), post_style=lit), width)
            self._strips[(key, look)] = strip
        return strip

    def _header(self, width: int) -> Strip:
        style = self.rich_style + self.get_component_rich_style("live-table--header")
        labels = [label for _, label, _ in self._column_spec]
        segments = row_segments(labels, self.widths, style, self.app.console)
        return Strip(segments).crop_extend(0, width, style)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- moving -------------------------------------------------------------------------
    def move_cursor(self, row: int) -> None:
        if not self._rows:
            return
        row = max(0, min(row, len(self._rows) - 1))
        if row != self._cursor:
            self._cursor = row
            self.post_message(self.Highlighted(self, self.current_key))
            self.refresh()
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
