"""`cvtui demo`: real SSH to simulated GPU hosts on loopback, shown live."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine, EngineLock
from cvtui.inventory import Inventory, load_inventory
from cvtui.lab import DEMO_HOSTS, LabHostSpec, start_lab
from cvtui.report import format_hosts

EXTRA_MODELS = ("A100-SXM4-40GB", "RTX-A6000-48GB", "L40S-48GB", "V100-SXM2-32GB")


def demo_specs(count: int) -> tuple[LabHostSpec, ...]:
    """The three demo hosts, then more of assorted models when asked for more."""
    specs = list(DEMO_HOSTS[:count])
    for i in range(len(specs), count):
        model = EXTRA_MODELS[i % len(EXTRA_MODELS)]
        specs.append(LabHostSpec(f"gpu-{i + 1:02d}", gpus=2 + 2 * (i % 3), model=model))
    return tuple(specs)


async def run_headless(inventory: Inventory, catalog: Catalog, duration_s: float) -> int:
    """Run the engine for duration_s, printing the hosts table; 0 only if every host is healthy."""
    engine = Engine(inventory, catalog)
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    deadline = time.monotonic() + duration_s
    report: list[dict] = []
    while time.monotonic() < deadline:
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        report = catalog.hosts_report(now=time.time(), names=inventory.names())
        states = ", ".join(f"{h['name']}={h['state']}" for h in report)
        print(f"[{time.strftime('%H:%M:%S')}] {states}", flush=True)
    stop.set()
    await runner
    print(format_hosts(report), flush=True)
    return 0 if report and all(h["state"] == "healthy" for h in report) else 1


def _exit_on_signal(signum: int, frame: object) -> None:
    # SIGHUP (terminal closed) and SIGTERM must still run the cleanup in run_demo's finally.
    raise SystemExit(128 + signum)


def run_demo(
    host_count: int = 3, *, headless: bool = False, duration_s: float | None = None
) -> int:
    base = Path(tempfile.mkdtemp(prefix="cvtui-demo-"))
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    lab = None
    try:
        print(f"starting {host_count} simulated GPU hosts behind sshd on 127.0.0.1 ...", flush=True)
        lab = start_lab(base / "lab", demo_specs(host_count))
        home = base / "home"
        home.mkdir(mode=0o700)
        inventory = load_inventory(lab.inventory_path)
        lock = EngineLock(home)
        lock.acquire()
        with Catalog.open_home(home) as catalog:
            if headless:
                return asyncio.run(run_headless(inventory, catalog, duration_s or 20.0))
            from cvtui.tui.app import DashboardApp

            app = DashboardApp(
                inventory,
                catalog,
                engine=Engine(inventory, catalog, inventory_path=lab.inventory_path),
                title="cvtui demo",
                duration_s=duration_s,
            )
            app.run()
            return app.return_code or 0
    except KeyboardInterrupt:
        return 130
    finally:
        if lab is not None:
            lab.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
        sys.stdout.flush()
