"""`cvtui exec -t`: the local terminal an interactive command on a host runs in.

Standard library only: the CLI's side (raw mode, the window size and its changes) runs before
anything heavy is imported, and the engine's side only reads the wire form.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_TYPE = "xterm-256color"
DEFAULT_SIZE = (80, 24)
MAX_SIDE = 10_000  # columns or rows: more is not a terminal


@dataclass(frozen=True)
class Term:
    """The pty to ask the host for: its type ($TERM) and size; fd: the local terminal whose
    size changes are followed (None: the size stays)."""

    type: str
    cols: int
    rows: int
    fd: int | None = None

    @classmethod
    def local(cls) -> Term:
        """This process's terminal: stdout's (else stdin's) size, $TERM's type."""
        fd = next((f for f in (1, 0, 2) if _is_tty(f)), None)
        cols, rows = window_size(fd) if fd is not None else DEFAULT_SIZE
        return cls(os.environ.get("TERM") or DEFAULT_TYPE, cols, rows, fd)

    def size(self) -> tuple[int, int]:
        """(columns, rows) now."""
        return window_size(self.fd) if self.fd is not None else (self.cols, self.rows)

    def to_wire(self) -> dict[str, Any]:
        cols, rows = self.size()
        return {"type": self.type, "cols": cols, "rows": rows}

    @classmethod
    def from_wire(cls, data: object) -> Term | None:
        """A client's term request; None when there is none or it is not one."""
        if not isinstance(data, dict):
            return None
        kind, cols, rows = data.get("type"), data.get("cols"), data.get("rows")
        if not isinstance(kind, str) or not kind.isprintable() or not 0 < len(kind) <= 64:
            return None
        if not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in (cols, rows)):
            return None
        return cls(kind, int(cols), int(rows))  # type: ignore[arg-type]


def resize_payload(cols: int, rows: int) -> bytes:
    return f"{cols} {rows}".encode()


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    """(columns, rows) of a RESIZE frame; None when it is not one."""
    try:
        cols, rows = (int(v) for v in payload.split())
    except ValueError:
        return None
    if 0 < cols <= MAX_SIDE and 0 < rows <= MAX_SIDE:
        return cols, rows
    return None


def window_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return DEFAULT_SIZE
    return (size.columns or DEFAULT_SIZE[0], size.lines or DEFAULT_SIZE[1])


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keys go to the host as typed (Ctrl-C included, to the command's pty) until the block
    ends, then the terminal is as it was. Nothing happens when fd is not a terminal."""
    if not _is_tty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(callback: Callable[[], None]) -> Iterator[None]:
    """Call callback on each SIGWINCH while the block runs (main thread only; elsewhere the
    size simply stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        callback()

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)
