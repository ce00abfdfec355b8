"""Live reload: each saved version of the inventory file, parsed, handed to a callback."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cvtui.errors import InventoryError
from cvtui.inventory.model import Inventory
from cvtui.inventory.paths import decode_inventory, read_inventory_bytes

if TYPE_CHECKING:
    import asyncio

_WATCH_TIMEOUT_MS = 200  # how often the watcher thread hands back control when nothing changes


def _watch_targets(path: str | os.PathLike[str]) -> tuple[str, set[pathlib.Path], list[str]]:
    """The path to read, the file's paths (as given and through symlinks), the dirs to watch."""
    expanded = pathlib.Path(path).expanduser()
    targets = {expanded.absolute(), expanded.resolve()}
    directories = sorted({target.parent for target in targets})
    for directory in directories:
        if not directory.is_dir():
            problem = f"cannot watch: no such directory {directory}"
            raise InventoryError(str(expanded), None, None, problem)
    return str(expanded), targets, [str(directory) for directory in directories]


def _snapshot(path: str) -> bytes | InventoryError:
    try:
        return read_inventory_bytes(path)
    except InventoryError as exc:
        return exc


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def watch_inventory(
    path: str | os.PathLike[str],
    on_change: Callable[[Inventory], None],
    on_error: Callable[[InventoryError], None],
    stop: asyncio.Event | None = None,
    debounce_ms: int = 50,
    ready: asyncio.Event | None = None,
) -> None:
    """Call on_change with each valid new version of the file, on_error with each invalid one.

    The parent directory is watched, so editors that save by renaming a new file over the old
    one are seen. Content identical to the last version seen (valid or not) is not reported
    again. ``ready`` is set once the OS watch is in place; an edit made after the call but
    before that is still reported. Returns when ``stop`` is set.
    """
    import asyncio  # deferred like watchfiles: the CLI's quick commands never watch

    import watchfiles  # deferred: it pulls in anyio and starts a watcher thread

    if stop is not None and stop.is_set():
        return
    shown, targets, directories = _watch_targets(path)
    last = _snapshot(shown)
    # awatch sets its stop event when cancelled; ours, so the caller's shared event is untouched.
    halt = asyncio.Event()
    relay = asyncio.create_task(_relay(stop, halt)) if stop is not None else None

    def is_target(_change: watchfiles.Change, changed: str) -> bool:
        return pathlib.Path(changed) in targets

    first = True
    try:
        async for changes in watchfiles.awatch(
            *directories,
            watch_filter=is_target,
            debounce=debounce_ms,
            step=max(1, min(50, debounce_ms)),
            stop_event=halt,
            rust_timeout=_WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            recursive=False,
        ):
            if not changes and not first:
                continue
            if first:
                first = False
                if ready is not None:
                    ready.set()
            current = _snapshot(shown)
            if current == last:
                continue
            last = current
            if isinstance(current, InventoryError):
                on_error(current)
                continue
            try:
                inventory = decode_inventory(current, shown)
            except InventoryError as exc:
                on_error(exc)
                continue
            on_change(inventory)
    finally:
        if relay is not None:
            relay.cancel()
