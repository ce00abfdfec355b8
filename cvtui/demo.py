"""`cvtui demo`: real SSH to simulated GPU hosts on loopback, with demo runs, shown live."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.engine.lock import EngineLock
from cvtui.inventory import Inventory, load_inventory
from cvtui.lab import DEMO_HOSTS, LabHostSpec, start_lab
from cvtui.report import format_hosts
from cvtui.states import FINAL_STATES

EXTRA_MODELS = ("A100-SXM4-40GB", "RTX-A6000-48GB", "L40S-48GB", "V100-SXM2-32GB")
DEMO_PROJECT = Path(__file__).parent / "demo_project"
# Queued in this order: GPU-filling runs first, then a low-priority backlog, then one that
# never fits (the Queue screen's "why it waits").
DEMO_CONFIGS = ("sweep.yaml", "wide.yaml", "quick.yaml", "flaky.yaml", "later.yaml", "huge.yaml")
STARTED_STATES = ("running", *FINAL_STATES[:2])  # running, succeeded, failed


def demo_specs(count: int) -> tuple[LabHostSpec, ...]:
    """The three demo hosts, then more of assorted models when asked for more."""
    specs = list(DEMO_HOSTS[:count])
    for i in range(len(specs), count):
        model = EXTRA_MODELS[i % len(EXTRA_MODELS)]
        specs.append(LabHostSpec(f"gpu-{i + 1:02d}", gpus=2 + 2 * (i % 3), model=model))
    return tuple(specs)


def queue_demo_runs(catalog: Catalog, home: Path, inventory: Inventory) -> list[str]:
    """Queue the demo project's runs (a sweep, multi-GPU runs, a failure, a backlog)."""
    from cvtui.submit import prepare_runs, submit

    ids: list[str] = []
    for name in DEMO_CONFIGS:
        ids += submit(catalog, home, prepare_runs(DEMO_PROJECT / name, inventory))
    return ids


def started_runs(catalog: Catalog, run_ids: list[str]) -> list[str]:
    """The runs that reached running (and maybe ended since) according to their events."""
    return [
        run_id
        for run_id in run_ids
        if any(e["state"] in STARTED_STATES for e in catalog.run_events(run_id))
    ]


def runs_table(catalog: Catalog, run_ids: list[str]) -> str:
    lines = [f"{'RUN':28} {'STATE':10} {'HOST:GPUS':12} PROGRESS"]
    for run_id in run_ids:
        run = catalog.get_run(run_id) or {}
        where = run.get("host") or "-"
        if run.get("gpus"):
            where += ":" + ",".join(str(g) for g in run["gpus"])
        progress = "-" if run.get("progress") is None else f"{run['progress']:.0f}%"
        lines.append(
            f"{run.get('name', run_id)[:28]:28} {run.get('state', '?'):10} {where:12} {progress}"
        )
    return "\n".join(lines)


async def run_headless(
    inventory: Inventory, catalog: Catalog, duration_s: float, run_ids: list[str]
) -> int:
    """Run the engine for duration_s, printing progress.

    Exit 0 only if every host is healthy, demo runs reached running (or ended after it) and
    none was lost.
    """
    engine = Engine(inventory, catalog)
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    deadline = time.monotonic() + duration_s
    report: list[dict[str, Any]] = []
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            report = catalog.hosts_report(now=time.time(), names=inventory.names())
            states = ", ".join(f"{h['name']}={h['state']}" for h in report)
            started = len(started_runs(catalog, run_ids))
            print(
                f"[{time.strftime('%H:%M:%S')}] {states}; runs started {started}/{len(run_ids)}",
                flush=True,
            )
    finally:
        stop.set()
        await runner
    print(format_hosts(report), flush=True)
    print(runs_table(catalog, run_ids), flush=True)
    healthy = bool(report) and all(h["state"] == "healthy" for h in report)
    lost = [r for r in run_ids if (catalog.get_run(r) or {}).get("state") == "lost"]
    return 0 if healthy and started_runs(catalog, run_ids) and not lost else 1


def stop_demo_runs(catalog: Catalog, base: Path) -> None:
    """End the demo's runs: their hosts are this machine, so signal them directly.

    Only processes whose working directory is inside the demo's temp dir are touched.
    """
    for run in catalog.list_runs(states=["dispatching", "running"]):
        for pid, group in ((run.get("pgid"), True), (run.get("supervisor_pid"), False)):
            if not pid or not _inside(pid, base):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)


def _inside(pid: int, base: Path) -> bool:
    try:
        cwd = Path(f"/proc/{pid}/cwd").readlink()
    except OSError:
        return False
    return cwd.is_relative_to(base.resolve())


_SIGNALLED: list[int] = []  # the signal that ended the demo, if one did


def _exit_on_signal(signum: int, frame: object) -> None:
    # SIGHUP (terminal closed) and SIGTERM must still run the cleanup in run_demo's finally.
    if _SIGNALLED:
        return  # the cleanup is under way: a second signal (uv forwards the hangup the child
        # also got from the kernel) must not cut it short
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)


def run_demo(
    host_count: int = 3, *, headless: bool = False, duration_s: float | None = None
) -> int:
    base = Path(tempfile.mkdtemp(prefix="cvtui-demo-"))
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    lab = None
    catalog = None
    try:
        print(f"starting {host_count} simulated GPU hosts behind sshd on 127.0.0.1 ...", flush=True)
        lab = start_lab(base / "lab", demo_specs(host_count))
        home = base / "home"
        home.mkdir(mode=0o700)
        inventory = load_inventory(lab.inventory_path)
        lock = EngineLock(home)
        lock.acquire()
        catalog = Catalog.open_home(home)
        run_ids = queue_demo_runs(catalog, home, inventory)
        if headless:
            return asyncio.run(run_headless(inventory, catalog, duration_s or 20.0, run_ids))
        from cvtui.tui.app import DashboardApp

        app = DashboardApp(
            inventory,
            catalog,
            engine=Engine(inventory, catalog, inventory_path=lab.inventory_path),
            home=home,
            title="cvtui demo",
            duration_s=duration_s,
        )
        app.run()
        return app.return_code or 0
    except KeyboardInterrupt:
        return 130
    finally:
        if catalog is not None:
            stop_demo_runs(catalog, base)
            catalog.close()
        if lab is not None:
            lab.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
        sys.stdout.flush()
        if _SIGNALLED:
            # Cleaned up; now leave at once. The signal cut the app short, so threads it would
            # have stopped (the inventory watcher's) can hold an ordinary exit forever: a
            # closed terminal left demo processes behind, waiting on such a thread.
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(128 + _SIGNALLED[0])
