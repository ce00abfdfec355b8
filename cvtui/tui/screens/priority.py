"""Pick a queued run's priority from a short list."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from cvtui.actions import PRIORITY_ORDER
from cvtui.tui.cells import PRIORITY_STYLES


class PriorityScreen(ModalScreen[str | None]):
    """Dismissed with the chosen priority, or None on escape; u/h/n/l pick directly."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("u", "pick('urgent')", "Urgent", show=False),
        Binding("h", "pick('high')", "High", show=False),
        Binding("n", "pick('normal')", "Normal", show=False),
        Binding("l", "pick('low')", "Low", show=False),
    ]

    def __init__(self, run_name: str, current: str) -> None:
        super().__init__()
        self.run_name = run_name
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"Priority of {self.run_name}", style="bold"))
            yield OptionList(
                *(
                    Option(
                        Text.assemble(
                            (p, PRIORITY_STYLES.get(p, "")),
                            ("  (now)" if p == self.current else "", "dim"),
                        ),
                        id=p,
                    )
                    for p in PRIORITY_ORDER
                ),
                id="priority-options",
            )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = PRIORITY_ORDER.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_pick(self, priority: str) -> None:
        self.dismiss(priority)
