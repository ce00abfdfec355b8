"""`?`: every key of the screen underneath and of the whole app, and the filter language."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from cvtui.tui.widgets.key_hints import key_label

# Textual's own bindings that say nothing useful in this app (horizontal paging, copying).
UNLISTED = frozenset({"Page Left", "Page Right", "Copy selected text", "Home", "End"})

FILTER_HELP = (
    "Filters (/): words must all appear in the row; key:value terms match a field, e.g.\n"
    "  hosts: tag:a100 state:error model:A100\n"
    "  runs:  state:failed project:vit host:gpu-02 user:alice\n"
    "Enter keeps the filter, esc clears it."
)


def help_rows(bindings: Mapping[str, ActiveBinding]) -> list[tuple[str, str, str]]:
    """(group, keys, description) per action: the screen's own first, then the app's."""
    by_action: dict[tuple[str, str], list[str]] = {}
    for key, active in bindings.items():
        binding = active.binding
        if not binding.description or binding.system or binding.description in UNLISTED:
            continue
        where = "everywhere" if active.node is active.node.app else "this screen"
        by_action.setdefault((where, binding.description), []).append(key_label(key))
    return [
        (where, " ".join(dict.fromkeys(keys)), description)
        for group in ("this screen", "everywhere")
        for (where, description), keys in by_action.items()
        if where == group
    ]


def bindings_table(rows: list[tuple[str, str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    group = ""
    for where, keys, description in rows:
        if where != group:
            group = where
            table.add_row(Text(where.upper(), style="bold underline"), "")
        table.add_row(keys, description)
    return table


class HelpScreen(ModalScreen[None]):
    """Closed with escape, q or ?."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss(None)", "Close"),
    ]

    def __init__(self, title: str, bindings: Mapping[str, ActiveBinding]) -> None:
        super().__init__()
        self.title_text = title
        self.rows = help_rows(bindings)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide-dialog"):
            yield Static(Text(f"Keys · {self.title_text}", style="bold"))
            with VerticalScroll():
                yield Static(bindings_table(self.rows))
                yield Static(Text("\n" + FILTER_HELP, style="dim"))
            yield Static(
                Text("ctrl+p: every action by name · esc closes", style="dim"), classes="hint"
            )
