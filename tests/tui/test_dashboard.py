"""The dashboard driven by Textual's Pilot over a real catalog file (no SSH needed)."""

from __future__ import annotations

import time
from pathlib import Path

from catalog.samples import InventoryHost, gpu, telemetry

from cvtui.catalog import Catalog
from cvtui.inventory import parse_inventory
from cvtui.tui.app import DashboardApp
from cvtui.tui.widgets.hosts_table import HostsTable
from remote_agent.protocol import GpuProcess

INVENTORY = """
hosts:
  gpu-01: {address: 10.0.0.1}
  gpu-02: {address: 10.0.0.2}
"""


def cell_text(table: HostsTable, row: str, column: str) -> str:
    return str(table.get_cell(row, column))


async def test_dashboard_shows_hosts_gpus_and_follows_the_catalog(tmp_path: Path) -> None:
    inventory = parse_inventory(INVENTORY)
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.sync_hosts([InventoryHost("gpu-01"), InventoryHost("gpu-02")])
    busy = gpu(
        1, util=97.0, processes=(GpuProcess(4242, "alice", "python train.py", None, 2 << 30, None),)
    )
    catalog.record_telemetry(
        [("gpu-01", telemetry(gpus=(gpu(0, util=5.0), busy)))], received=time.time()
    )
    catalog.set_host_state("gpu-02", "error", "auth failed")

    app = DashboardApp(inventory, catalog, refresh_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.query_one(HostsTable)
        keys = [str(row.value) for row in table.rows]
        assert keys == ["host:gpu-01", "gpu:gpu-01:0", "gpu:gpu-01:1", "host:gpu-02"]
        assert "simulated" in cell_text(table, "host:gpu-01", "name")
        assert "1/2 free" in cell_text(table, "host:gpu-01", "procs")
        assert "97%" in cell_text(table, "gpu:gpu-01:1", "util")
        assert "alice" in cell_text(table, "gpu:gpu-01:1", "info")
        assert cell_text(table, "host:gpu-02", "state") == "error"
        assert "auth failed" in cell_text(table, "host:gpu-02", "info")

        # The engine (another writer) brings gpu-02 up: the table follows without a key press.
        catalog.record_telemetry([("gpu-02", telemetry(gpu_count=3))], received=time.time())
        await pilot.pause(0.3)
        keys = [str(row.value) for row in table.rows]
        assert keys[-4:] == ["host:gpu-02", "gpu:gpu-02:0", "gpu:gpu-02:1", "gpu:gpu-02:2"]
        assert cell_text(table, "host:gpu-02", "state") == "healthy"

        await pilot.press("down", "down")
        assert table.cursor_row == 2
        await pilot.press("q")
    assert app.return_code == 0
    catalog.close()
