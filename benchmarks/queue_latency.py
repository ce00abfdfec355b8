"""The queue: submit->dispatch with a running `cvtui daemon`, and one scheduling pass at scale."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.connect import time_ssh
from benchmarks.sandbox import ssh_command, temporary_lab
from benchmarks.scheduler import bench_scheduler
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec
from cvtui.submit import prepare_runs, run_rows

HOST = "bench-01"
RUNS, QUICK_RUNS = 15, 6
DISPATCH_TARGET_MS = 300.0
SCHEDULER_TARGET_MS = 50.0
READY_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 30.0


@contextlib.contextmanager
def running_daemon(lab: Lab, home: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`cvtui daemon --foreground` in a process of its own, stopped with SIGTERM afterwards."""
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), "daemon", "--foreground"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    with open(log, "wb") as err:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err, env=env)
    try:
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:g} s")
        time.sleep(0.002)


def measure(lab: Lab, tmp: Path, runs: int) -> tuple[list[float], list[float], list[float]]:
    """(submit->dispatch s, submit->running s, ssh true s) for runs submissions."""
    project = tmp / "project"
    project.mkdir()
    config = project / "run.yaml"
    config.write_text(
        yaml.safe_dump({"name": "bench", "command": "true", "resources": {"gpus": 1}})
    )
    home = tmp / "home"
    specs = prepare_runs(config, load_inventory(lab.inventory_path))
    ssh = ssh_command(lab, HOST)
    dispatch_s, running_s, ssh_s = [], [], []
    with Catalog.open_home(home) as catalog, running_daemon(lab, home, tmp / "daemon.log"):

        def healthy() -> bool:
            return [h["state"] for h in catalog.hosts_report(names=[HOST])] == ["healthy"]

        wait_until(healthy, READY_TIMEOUT_S, f"{HOST} was not healthy")
        for i in range(runs + 1):  # the first run ships the code snapshot: not timed
            rows = run_rows(specs, home)  # the snapshot is taken before the clock starts
            submitted = time.time()
            [run_id] = catalog.insert_runs(rows)

            def finished(run_id: str = run_id) -> bool:
                return (catalog.get_run(run_id) or {}).get("state") == "succeeded"

            wait_until(finished, RUN_TIMEOUT_S, f"run {run_id} did not succeed")
            times = {e["state"]: e["time"] for e in catalog.run_events(run_id)}
            if i:
                dispatch_s.append(times["dispatching"] - submitted)
                running_s.append(times["running"] - submitted)
                ssh_s.append(time_ssh(ssh))  # interleaved, so load drift hits both
    return dispatch_s, running_s, ssh_s


def run(options: Options) -> list[Row]:
    runs = QUICK_RUNS if options.quick else RUNS
    with temporary_lab(LabHostSpec(HOST, gpus=8)) as lab, tempfile.TemporaryDirectory() as tmp:
        dispatch_s, running_s, ssh_s = measure(lab, Path(tmp), runs)
    worst = max(dispatch_s) * 1000
    return [
        Row(
            "queue submit->dispatch",
            statistics.median(dispatch_s) * 1000,
            "ms",
            baseline=statistics.median(ssh_s) * 1000,
            baseline_name="ssh true",
            target=Target(DISPATCH_TARGET_MS, strict=True),
            note=(
                f"median of {runs}, max {worst:.0f} ms; catalog insert -> engine's dispatch "
                f"decision in a running `cvtui daemon`; to running (agent started it) "
                f"{statistics.median(running_s) * 1000:.0f} ms"
            ),
        )
    ]


def run_scheduler(options: Options) -> list[Row]:
    figures = bench_scheduler(options.quick)
    return [
        Row(
            "scheduler pass",
            float(figures["median_ms"]),
            "ms",
            target=Target(SCHEDULER_TARGET_MS, strict=True),
            note=(
                f"median plan() over {figures['runs']:,} queued runs x {figures['hosts']} hosts "
                f"x {figures['gpus'] // figures['hosts']} GPUs (pure function, no I/O)"
            ),
        )
    ]
