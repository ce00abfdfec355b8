"""The bottom line: the keys of what has focus, as Textual's Footer shows them, in one Static.

Footer recomposes a widget per key whenever the screen or focus changes, which costs tens of
milliseconds on every screen switch; this redraws one line of text.
"""

from __future__ import annotations

from collections.abc import Mapping

from textual.binding import ActiveBinding
from textual.content import Content
from textual.markup import escape
from textual.widgets import Static

KEY_NAMES = {
    "slash": "/",
    "question_mark": "?",
    "plus": "+",
    "minus": "-",
    "equals_sign": "=",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "escape": "esc",
    "delete": "del",
}


def key_label(key: str) -> str:
    return KEY_NAMES.get(key, key)


def hints(bindings: Mapping[str, ActiveBinding]) -> list[tuple[str, str]]:
    """(key, description) of the bindings marked to show, one per action, in binding order."""
    seen: dict[tuple[str, str], str] = {}
    for key, active in bindings.items():
        binding = active.binding
        if binding.show and binding.description and active.enabled:
            seen.setdefault((binding.action, binding.description), key_label(key))
    return [(key, description) for (_, description), key in seen.items()]


class KeyHints(Static):
    """Redrawn when the screen comes up and when focus moves inside it."""

    DEFAULT_CSS = """
    KeyHints { height: 1; background: $panel; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__("")
        self.markup = ""

    def show(self, bindings: Mapping[str, ActiveBinding]) -> None:
        parts = [f"[bold $accent]{escape(k)}[/] {escape(d)}" for k, d in hints(bindings)]
        markup = " " + "  ".join(parts) + "  [dim]ctrl+p[/] [dim]palette[/]"
        if markup != self.markup:
            self.markup = markup
            self.update(Content.from_markup(markup), layout=False)
