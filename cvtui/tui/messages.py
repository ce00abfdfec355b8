"""App-wide messages: catalog reads arriving from the watcher thread, and the notices they carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message
from textual.message_pump import MessagePump

from cvtui.tui.model import CatalogView, Notice


@dataclass
class CatalogUpdated(Message):
    """A new read of the catalog; a backlog of them collapses into the newest."""

    view: CatalogView

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CatalogUpdated)


@dataclass
class CatalogNotices(Message):
    """Runs that ended and hosts that went down or came back; never merged, never dropped."""

    notices: list[Notice]


@dataclass
class LogIndexed(Message):
    """The log view's index grew (or was rebuilt); merged like telemetry."""

    lines: int
    pending_bytes: int
    rebuilt: bool

    def can_replace(self, message: Message) -> bool:
        # ``message`` is the next one in the queue; a rebuild must still reach the view.
        return isinstance(message, LogIndexed) and not self.rebuilt


@dataclass
class WorkerResult(Message):
    """A worker thread's result, applied on the UI thread by the app.

    Unlike call_from_thread it never blocks the worker, so a worker finishing while the app
    shuts down cannot hang the interpreter's exit: the message is simply dropped.
    """

    apply: Callable[[], object]


def _alive(node: MessagePump) -> bool:
    """Whether ``node`` can still take a result: attached, the app not shutting down, and
    neither it nor a parent being removed (a screen being pruned loses its children first,
    while still attached, so a query on it would find nothing)."""
    if not node.is_attached or not node.app.is_running:
        return False
    current: MessagePump | None = node
    while current is not None:
        if getattr(current, "_pruning", False) or current._closing or current._closed:
            return False
        current = current._parent
    return True


def deliver(node: MessagePump, apply: Callable[..., object], *args: object) -> None:
    """From a worker thread: call ``apply(*args)`` on the UI thread, unless ``node`` is gone."""

    def guarded() -> None:
        if _alive(node):
            apply(*args)

    node.app.post_message(WorkerResult(guarded))
