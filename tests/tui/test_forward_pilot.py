"""The dashboard offers port forwarding on a run: in a real run's detail screen (real sshd), p
asks for the port, the forward opens on 127.0.0.1; p again closes it, and so does the run's end."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import serving_lab, wait_for, wait_running

from cvtui.catalog import Catalog
from cvtui.inventory import load_inventory
from cvtui.tui.app import DashboardApp
from cvtui.tui.screens.forward import ForwardScreen
from cvtui.tui.screens.run_detail import RunDetailScreen

pytestmark = pytest.mark.sshd


async def test_p_on_a_running_run_forwards_a_port(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, api, config, remote = serving_lab(lab_factory, home, tmp_path, monkeypatch)
    [run] = api.submit(config)
    wait_running(api, run)

    with Catalog.open_home(home) as catalog:
        app = DashboardApp(load_inventory(lab.inventory_path), catalog, refresh_s=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            app.open_run(run.id)
            await wait_for(lambda: isinstance(app.screen, RunDetailScreen) and app.screen.run, 30)
            await pilot.press("p")
            await wait_for(lambda: isinstance(app.screen, ForwardScreen), 30)
            await pilot.press(*f"{remote}:0", "enter")
            await wait_for(lambda: bool(app.forwards.of_run(run.id)), 30)
            [forward] = app.forwards.of_run(run.id)
            assert forward.url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(forward.url + "hello.txt", timeout=10) as reply:
                assert reply.read() == f"hello from {run.id}".encode()
            await pilot.press("p")  # again: closes it
            await wait_for(lambda: not forward.active, 30)
            assert app.forwards.of_run(run.id) == []
            # Opened again, it ends with the run.
            await pilot.press("p")
            await wait_for(lambda: isinstance(app.screen, ForwardScreen), 30)
            await pilot.press(*f"{remote}:0", "enter")
            await wait_for(lambda: bool(app.forwards.of_run(run.id)), 30)
            [again] = app.forwards.of_run(run.id)
            api.cancel(run, grace_s=1)
            await wait_for(lambda: not again.active, 30)
