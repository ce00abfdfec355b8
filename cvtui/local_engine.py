"""Borrow the engine for one command: use a running one through the catalog, else run one here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cvtui.engine.lock import EngineLock, lock_holder
from cvtui.errors import EngineLockedError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import Engine
    from cvtui.inventory import Inventory

Condition = Callable[["Engine | None"], bool]


async def drive(
    inventory: Inventory,
    catalog: Catalog,
    home: Path,
    until: Condition,
    *,
    timeout_s: float | None = None,
    poll_s: float = 0.1,
    hosts: list[str] | None = None,
) -> bool:
    """Wait until `until` holds, with an engine running somewhere; False on timeout.

    When another process holds the engine lock, it does the work and this only watches the
    catalog (``until`` gets None). Otherwise an engine runs in this process for the wait,
    restricted to ``hosts`` when given, and stops afterwards (runs keep going on the hosts).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    async def wait(engine: Engine | None) -> bool:
        while not until(engine):
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    if lock_holder(home) is not None:
        return await wait(None)
    lock = EngineLock(home)
    try:
        lock.acquire()
    except EngineLockedError:
        return await wait(None)
    try:
        from cvtui.engine.engine import Engine  # asyncssh: only when this process must connect

        engine = Engine(inventory, catalog, only=None if hosts is None else set(hosts))
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(stop))
        try:
            return await wait(engine)
        finally:
            stop.set()
            await runner
    finally:
        lock.release()
