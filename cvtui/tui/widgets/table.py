"""A DataTable with vi keys that updates in place: only changed cells are touched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

Column = tuple[str, str, int | None]  # key, label, width (None: what the others leave)
Row = tuple[str, Sequence[Any]]  # key, cells in column order
MIN_FILL = 8  # the filling column never gets narrower than this


class LiveTable(DataTable[Any]):
    """Rows keyed by name; ``show_rows`` diffs against what is shown and keeps the cursor's row."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Cursor down", show=False),
        Binding("k", "cursor_up", "Cursor up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("ctrl+d", "page_down", "Page down", show=False),
        Binding("ctrl+u", "page_up", "Page up", show=False),
    ]

    DEFAULT_CSS = """
    LiveTable { height: 1fr; overflow-x: hidden; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._column_spec: list[Column] = []
        self._shown: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []
        self._last_rows: Sequence[Row] = ()

    def columns_for(self, width: int) -> list[Column]:
        """The columns at this table width; a None width fills what the others leave."""
        raise NotImplementedError

    def redraw(self) -> None:
        """Show the data again after the columns changed; subclasses rebuild their cells."""
        self.show_rows(self._last_rows)

    def on_mount(self) -> None:
        self.set_columns(self.resolved_columns(self.size.width or 80))
        self.redraw()

    def on_resize(self) -> None:
        columns = self.resolved_columns(self.size.width)
        if columns != self._column_spec:
            self.set_columns(columns)
            self.redraw()

    def resolved_columns(self, width: int) -> list[Column]:
        spec = self.columns_for(width)
        fixed = sum(w for _, _, w in spec if w is not None)
        padding = 2 * self.cell_padding * len(spec) + 2  # +2: the vertical scrollbar
        fill = max(MIN_FILL, width - fixed - padding)
        return [(key, label, fill if w is None else w) for key, label, w in spec]

    def set_columns(self, columns: Sequence[Column]) -> None:
        """Replace the columns (e.g. for another terminal width); rows come with the next show."""
        self._column_spec = list(columns)
        self.clear(columns=True)
        self._shown.clear()
        self._order = []
        for key, label, width in columns:
            self.add_column(label, key=key, width=width)

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _, _ in self._column_spec]

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor, or None for an empty table."""
        if not self.row_count or not self._order:
            return None
        return self._order[min(self.cursor_row, len(self._order) - 1)]

    def show_rows(self, rows: Sequence[Row]) -> None:
        # Plain strings become Text: a DataTable would read "[seed=2]" in a name as markup.
        rows = [(key, [Text(c) if isinstance(c, str) else c for c in cells]) for key, cells in rows]
        self._last_rows = rows
        if not self._column_spec:
            return  # not mounted yet: on_mount sets the columns, then redraw shows these
        keys = [key for key, _ in rows]
        if keys != self._order:
            self._rebuild(rows)
            return
        columns = self.column_keys
        for key, cells in rows:
            old = self._shown.get(key)
            new = tuple(cells)
            if old == new:
                continue
            for index, (column, cell) in enumerate(zip(columns, new, strict=True)):
                if old is None or old[index] != cell:
                    try:
                        self.update_cell(key, column, cell)
                    except (CellDoesNotExist, RowDoesNotExist):
                        self._rebuild(rows)
                        return
            self._shown[key] = new

    def _rebuild(self, rows: Sequence[Row]) -> None:
        current = self.current_key
        old_row = self.cursor_row
        scroll_y = self.scroll_y
        self.clear()
        self._shown = {}
        for key, cells in rows:
            self.add_row(*cells, key=key)
            self._shown[key] = tuple(cells)
        self._order = [key for key, _ in rows]
        if not rows:
            return
        target = self._order.index(current) if current in self._shown else old_row
        self.move_cursor(row=min(max(target, 0), len(rows) - 1), animate=False, scroll=False)
        self.scroll_to(y=scroll_y, animate=False, immediate=True)
        self.move_cursor(row=self.cursor_row, animate=False)

    def select_key(self, key: str) -> None:
        if key in self._shown:
            self.move_cursor(row=self._order.index(key), animate=False)
