"""The dashboard offers port forwarding on a run: in a real run's detail screen (real sshd), p
asks for the port, the forward opens on 127.0.0.1; p again closes it, and so does the run's end."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import cvtui
from cvtui.catalog import Catalog
from cvtui.inventory import load_inventory
from cvtui.lab import LabHostSpec, free_port
from cvtui.tui.app import DashboardApp
from cvtui.tui.screens.forward import ForwardScreen
from cvtui.tui.screens.run_detail import RunDetailScreen

pytestmark = pytest.mark.sshd

SERVE = """\
import http.server, os, sys
with open("ping.txt", "w") as f:
    f.write("pong")
handler = http.server.SimpleHTTPRequestHandler
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"""


async def until(predicate: Any, timeout_s: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_p_on_a_running_run_forwards_a_port(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    code = tmp_path / "project"
    code.mkdir()
    (code / "serve.py").write_text(SERVE)
    remote = free_port()
    (code / "serve.yaml").write_text(
        f"name: board\ncommand: [python3, serve.py, '{remote}']\nresources: {{gpus: 0}}\n"
    )
    api = cvtui.Lab(lab.inventory_path, home)
    [run] = api.submit(code / "serve.yaml")
    deadline = time.monotonic() + 30
    while api.get(run)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)

    with Catalog.open_home(home) as catalog:
        app = DashboardApp(load_inventory(lab.inventory_path), catalog, refresh_s=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            app.open_run(run.id)
            await until(lambda: isinstance(app.screen, RunDetailScreen) and app.screen.run)
            await pilot.press("p")
            await until(lambda: isinstance(app.screen, ForwardScreen))
            await pilot.press(*f"{remote}:0", "enter")
            await until(lambda: bool(app.forwards.of_run(run.id)))
            [forward] = app.forwards.of_run(run.id)
            assert forward.url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(forward.url + "ping.txt", timeout=10) as reply:
                assert reply.read() == b"pong"
            await pilot.press("p")  # again: closes it
            await until(lambda: not forward.active)
            assert app.forwards.of_run(run.id) == []
            # Opened again, it ends with the run.
            await pilot.press("p")
            await until(lambda: isinstance(app.screen, ForwardScreen))
            await pilot.press(*f"{remote}:0", "enter")
            await until(lambda: bool(app.forwards.of_run(run.id)))
            [again] = app.forwards.of_run(run.id)
            api.cancel(run, grace_s=1)
            await until(lambda: not again.active)
