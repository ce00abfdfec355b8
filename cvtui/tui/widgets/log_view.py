"""A live tail of a run's output.log that stays fast on huge files: only visible lines are read."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.worker import get_current_worker

from cvtui import units
from cvtui.tui.logindex import MAX_SHOWN_CHARS, LogIndex
from cvtui.tui.messages import LogIndexed

INDEX_STEP_BYTES = 16 << 20  # index this much, then tell the view, so a huge log shows progress
CACHE_LINES = 4000


class LogView(ScrollView, can_focus=True):
    """The file's lines through a LogIndex; follows the end while `follow` is on."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "line_down", "Down", show=False),
        Binding("k,up", "line_up", "Up", show=False),
        Binding("ctrl+d,pagedown", "page_down", "Page down", show=False),
        Binding("ctrl+u,pageup", "page_up", "Page up", show=False),
        Binding("g,home", "top", "Top", show=False),
        Binding("G,end", "bottom", "Bottom", show=False),
        Binding("h,left", "scroll_left", "Left", show=False),
        Binding("l,right", "scroll_right", "Right", show=False),
        Binding("f", "toggle_follow", "Follow"),
    ]

    DEFAULT_CSS = """
    LogView { height: 1fr; background: $surface; }
    """

    follow: reactive[bool] = reactive(True)

    def __init__(self, path: Path, *, poll_s: float = 0.25, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.index = LogIndex(path)
        self.poll_s = poll_s
        self.lines = 0  # lines the view knows of (the index may be ahead, in its thread)
        self.pending_bytes = 0  # not indexed yet, for the "indexing" note
        self._cache: OrderedDict[int, Text] = OrderedDict()

    def on_mount(self) -> None:
        self.watch_index()

    @work(thread=True, exclusive=True, group="log-index")
    def watch_index(self) -> None:
        """Poll the file's size; index what it gained in steps; tell the view after each step."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            before = self.index.size
            changed = self.index.update(INDEX_STEP_BYTES)
            if changed:
                rebuilt = self.index.size < before or (before and self.index.size == 0)
                self.post_message(
                    LogIndexed(self.index.line_count, self.index.pending(), bool(rebuilt))
                )
                if self.index.pending():
                    continue
            time.sleep(self.poll_s)

    def on_log_indexed(self, message: LogIndexed) -> None:
        message.stop()
        if message.rebuilt:
            self._cache.clear()
        elif self.lines:
            self._cache.pop(self.lines - 1, None)  # the last line may have grown
        self.lines = message.lines
        self.pending_bytes = message.pending_bytes
        width = min(MAX_SHOWN_CHARS, self.index.longest) + 1
        self.virtual_size = Size(width, self.lines)
        if self.follow:
            # After the refresh: only then does the scroll range include the new lines.
            self.call_after_refresh(self.scroll_to_end)
        self.refresh()

    def scroll_to_end(self) -> None:
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def text_line(self, number: int) -> Text:
        """Line ``number`` as Text, read with its visible neighbours in one go when missing."""
        text = self._cache.get(number)
        if text is not None:
            self._cache.move_to_end(number)
            return text
        first = max(0, number - 2)
        try:
            raw = self.index.read_lines(first, self.size.height + 4)
        except (OSError, IndexError):
            raw = []
        for offset, line in enumerate(raw):
            self._cache[first + offset] = Text.from_ansi(line) if "\x1b" in line else Text(line)
        while len(self._cache) > CACHE_LINES:
            self._cache.popitem(last=False)
        return self._cache.get(number, Text(""))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        number = scroll_y + y
        width = self.size.width
        style = self.rich_style
        if number >= self.lines:
            return Strip.blank(width, style)
        text = self.text_line(number).copy()
        text.no_wrap = True
        text.stylize_before(style)
        segments = list(text.render(self.app.console))
        strip = Strip(segments).crop_extend(scroll_x, scroll_x + width, style)
        return strip.apply_offsets(scroll_x, number)

    def watch_follow(self, follow: bool) -> None:
        if follow and self.lines:
            self.scroll_to_end()

    def _unfollow(self) -> None:
        self.follow = False

    def action_line_down(self) -> None:
        self.scroll_relative(y=1, animate=False)
        self.follow = self.is_vertical_scroll_end

    def action_line_up(self) -> None:
        self._unfollow()
        self.scroll_relative(y=-1, animate=False)

    def action_page_down(self) -> None:
        self.scroll_relative(y=self.size.height - 1, animate=False)
        self.follow = self.is_vertical_scroll_end

    def action_page_up(self) -> None:
        self._unfollow()
        self.scroll_relative(y=-(self.size.height - 1), animate=False)

    def action_top(self) -> None:
        self._unfollow()
        self.scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.follow = True

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow

    def status(self) -> str:
        """One line for the tab's caption: size, lines, follow state, indexing progress."""
        size = self.index.size
        parts = [f"{self.lines:,} lines", units.size(size)]
        if self.pending_bytes:
            parts.append(f"indexing, {units.size(self.pending_bytes)} to go")
        parts.append("following" if self.follow else "paused (G follows)")
        return " · ".join(parts)
