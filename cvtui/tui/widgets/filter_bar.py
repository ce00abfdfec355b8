"""The `/` filter line under a table: live as you type, enter keeps it, escape clears it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Hidden until shown; posts FilterBar.Applied on each change and when closed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_and_close", "Clear filter", show=False),
    ]

    DEFAULT_CSS = """
    FilterBar { dock: bottom; height: 1; border: none; padding: 0 1; display: none; }
    FilterBar.-open { display: block; }
    """

    @dataclass
    class Applied(Message):
        """The filter text now in force (empty: no filter); ``done`` when the bar closed."""

        bar: FilterBar
        query: str
        done: bool

    def __init__(self, placeholder: str, **kwargs: object) -> None:
        super().__init__(placeholder=placeholder, **kwargs)  # type: ignore[arg-type]

    def open(self) -> None:
        self.add_class("-open")
        self.focus()

    def close(self) -> None:
        self.remove_class("-open")

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Applied(self, self.value, done=False))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.close()
        self.post_message(self.Applied(self, self.value, done=True))

    def action_clear_and_close(self) -> None:
        self.value = ""
        self.close()
        self.post_message(self.Applied(self, "", done=True))
