"""Ask which port of a run's host to forward here (run detail, key p)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from cvtui.errors import CvtuiError
from cvtui.tui.forwards import parse_ports


class ForwardScreen(ModalScreen[tuple[int, int | None] | None]):
    """Dismissed with (remote port, local port or None), or None on escape."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, run_name: str, host: str) -> None:
        super().__init__()
        self.run_name = run_name
        self.host = host

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"Forward a port of {self.host} ({self.run_name})", style="bold"))
            yield Static(
                Text("PORT, or PORT:LOCAL_PORT (127.0.0.1 only), e.g. 6006:16006", style="dim")
            )
            yield Input(placeholder="6006", id="forward-ports")
            yield Static("", id="forward-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.dismiss(parse_ports(event.value))
        except CvtuiError as exc:
            self.query_one("#forward-error", Static).update(Text(str(exc), style="red"))
