"""Faults around a real Slurm cluster: cvtui killed with SIGKILL mid-run, slurmctld stopped and
started again. Nothing is lost, nothing runs twice, every run ends as Slurm and its supervisor
say, and its outputs come back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import metric_count, running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.mirror import mirror_dir
from cvtui.slurm_lab import SlurmLab
from cvtui.submit import prepare_runs, submit
from slurm.workload import FINAL, runs_of, write_config

pytestmark = [pytest.mark.sshd, pytest.mark.slurm]


def our_jobs(lab: SlurmLab) -> list[str]:
    """Every job of cvtui's that Slurm knows about (comment cvtui:<run id>)."""
    listed = lab.cluster.command(
        ["squeue", "--noheader", "--states=all", "--Format=Comment:|"]
    ).stdout.decode()
    return [line.rstrip("|") for line in listed.splitlines() if line.startswith("cvtui:")]


def cvtui_argv(lab: SlurmLab, home: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cvtui.cli",
        "--home",
        str(home),
        "--inventory",
        str(lab.inventory_path),
        *args,
    ]


async def test_kill_9_of_cvtui_mid_run_then_reconcile(cluster: SlurmLab, home: Path) -> None:
    config = write_config(home.parent, params={"steps": 6, "seed": [1, 2]})
    before = set(our_jobs(cluster))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    log = home.parent / "daemon.log"
    with log.open("ab") as err:
        daemon = subprocess.Popen(
            cvtui_argv(cluster, home, "daemon", "--foreground"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        queued = subprocess.run(
            cvtui_argv(cluster, home, "run", str(config)),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert queued.returncode == 0, queued.stderr
        catalog = Catalog.open_home(home)
        ids = [r["id"] for r in catalog.list_runs()]
        assert len(ids) == 2
        await wait_for(lambda: all(r["state"] == "running" for r in runs_of(catalog, ids)), 30, 0.1)
    finally:
        daemon.send_signal(signal.SIGKILL)  # cvtui dies mid-run; the jobs go on in Slurm
        daemon.wait()
    assert all(r["state"] == "running" for r in runs_of(catalog, ids))
    # The jobs end while no cvtui is watching.
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and cluster.cluster.command(["squeue", "--noheader"]).stdout.strip()
    ):
        time.sleep(0.2)
    inventory = load_inventory(cluster.inventory_path)
    engine = Engine(inventory, Catalog.open_home(home))
    async with running(engine.run):
        await wait_for(lambda: all(r["state"] in FINAL for r in runs_of(catalog, ids)), 30)
        await wait_for(lambda: all(r["sync_status"] == "synced" for r in runs_of(catalog, ids)))
    runs = runs_of(catalog, ids)
    assert [r["state"] for r in runs] == ["succeeded", "succeeded"]
    # One job per run, each run once: nothing was submitted again.
    new = [job for job in our_jobs(cluster) if job not in before]
    assert sorted(new) == sorted(f"cvtui:{run_id}" for run_id in ids)
    for run in runs:
        rows = (mirror_dir(home, run["id"]) / "metrics.csv").read_text().splitlines()
        assert rows == ["step,loss"] + [f"{i},{1.0 / (i + 1)}" for i in range(6)]
        assert metric_count(catalog, run["id"]) == 6
    catalog.close()


async def test_slurmctld_down_is_a_host_error_and_queued_runs_wait(
    cluster: SlurmLab, home: Path
) -> None:
    inventory = load_inventory(cluster.inventory_path)
    engine_catalog, catalog = Catalog.open_home(home), Catalog.open_home(home)
    engine = Engine(inventory, engine_catalog)
    long_config = write_config(home.parent, params={"steps": 8})
    async with running(engine.run):
        await engine.wait_answered(20)
        [during] = submit(catalog, home, prepare_runs(long_config, inventory))
        await wait_for(lambda: (catalog.get_run(during) or {}).get("progress") is not None, 30)
        cluster.cluster.stop_controller()
        try:

            def host_error() -> str | None:
                host = catalog.hosts_report()[0]
                return host["reason"] if host["state"] == "error" else None

            await wait_for(host_error, 15)
            reason = host_error() or ""
            assert reason.startswith("slurm: ") and "Unable to contact slurm controller" in reason
            [waiting] = submit(catalog, home, prepare_runs(long_config, inventory))
            await asyncio_sleep(3)
            held = catalog.get_run(waiting) or {}
            assert held["state"] == "queued" and held["host"] is None  # not handed to Slurm
            assert "cannot take jobs: slurm: " in (held["reason"] or "")
            # The running job goes on without its controller; cvtui keeps it as running.
            assert (catalog.get_run(during) or {})["state"] == "running"
            await asyncio_sleep(8)  # it ends meanwhile: its supervisor records it
            assert (catalog.get_run(during) or {})["state"] == "running"  # Slurm must say
        finally:
            cluster.cluster.start_controller()
        await wait_for(lambda: catalog.hosts_report()[0]["state"] == "healthy", 30)
        await wait_for(
            lambda: all(r["state"] in FINAL for r in runs_of(catalog, [during, waiting])), 60
        )
    runs = runs_of(catalog, [during, waiting])
    assert [r["state"] for r in runs] == ["succeeded", "succeeded"], [r["reason"] for r in runs]
    assert all(r["slurm_job"] for r in runs)
    engine_catalog.close()
    catalog.close()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
