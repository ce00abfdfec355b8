"""`cvtui hosts`: read a running engine's view, or run a short-lived engine for one round."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.engine.lock import EngineLock, lock_holder
from cvtui.errors import EngineLockedError
from cvtui.inventory import Inventory


async def first_round(inventory: Inventory, catalog: Catalog, timeout_s: float) -> None:
    """Connect to every host, wait for its first telemetry or failure, then disconnect."""
    engine = Engine(inventory, catalog)
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    await engine.wait_answered(timeout_s)
    for name, answered in engine.answered.items():
        if not answered.is_set():
            catalog.set_host_state(name, "disconnected", f"timeout (no answer in {timeout_s:g} s)")
    stop.set()
    await runner


def collect_hosts_report(
    inventory: Inventory, home: Path, timeout_s: float
) -> list[dict[str, Any]]:
    """The hosts report, from the engine that owns home's catalog or from a fresh round."""
    with Catalog.open_home(home) as catalog:
        if lock_holder(home) is None:
            lock = EngineLock(home)
            try:
                lock.acquire()
            except EngineLockedError:
                pass  # an engine started meanwhile: read what it writes
            else:
                try:
                    asyncio.run(first_round(inventory, catalog, timeout_s))
                finally:
                    lock.release()
        policy = inventory.policy
        return catalog.hosts_report(
            now=time.time(),
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
            names=inventory.names(),
        )
