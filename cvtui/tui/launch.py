"""`cvtui` with no command: the dashboard, hosting the engine unless a daemon already runs one."""

from __future__ import annotations

from pathlib import Path

from cvtui.catalog import Catalog
from cvtui.engine.lock import EngineLock
from cvtui.errors import EngineLockedError
from cvtui.inventory import Inventory


def open_dashboard(inventory: Inventory, inventory_path: Path, home: Path) -> int:
    """Run the dashboard until the user quits; its exit code.

    When no engine holds the catalog's lock, one runs inside the dashboard (connecting,
    dispatching, syncing) and stops with it; runs keep going on the hosts. Otherwise the
    dashboard only reads the catalog and sends commands through it to that engine.
    """
    from cvtui.tui.app import DashboardApp

    lock = EngineLock(home)
    try:
        lock.acquire()
        hosting = True
    except EngineLockedError:
        hosting = False
    try:
        with Catalog.open_home(home) as catalog:
            engine = None
            if hosting:
                from cvtui.engine.engine import Engine

                engine = Engine(inventory, catalog, inventory_path=inventory_path)
            app = DashboardApp(inventory, catalog, engine=engine, home=home)
            app.run()
            return app.return_code or 0
    finally:
        if hosting:
            lock.release()
