"""CPU of the controller process running an Engine over 50 hosts at 1 Hz, and time to healthy."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import getpass
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.sandbox import ssh_command, temporary_lab
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from cvtui.engine.agent_build import build_agent
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec
from remote_agent.protocol import Telemetry

HOSTS = 50
GPUS = 8
WINDOW_S = 20.0
QUICK_WINDOW_S = 8.0
SETTLE_S = 2.0  # let the connect burst and the first catalog writes pass before measuring
HEALTHY_TIMEOUT_S = 120.0
POLL_S = 0.05
TARGET_CPU_PERCENT = 10.0
SERVER = "bench-sshd"


def write_inventory(lab: Lab, directory: Path) -> Path:
    """HOSTS entries that all reach the lab's one sshd, each with its own root and leases dir."""
    server = lab.servers[SERVER]
    hosts = {
        f"host-{n:02d}": {
            "address": "127.0.0.1",
            "port": server.port,
            "identity": str(lab.client_key),
            "root": str(directory / "hosts" / f"host-{n:02d}" / "root"),
            "leases_dir": str(directory / "hosts" / f"host-{n:02d}" / "leases"),
            "simulate": {"gpus": GPUS},
        }
        for n in range(HOSTS)
    }
    inventory = {
        "defaults": {"user": getpass.getuser(), "known_hosts": str(lab.known_hosts)},
        "policy": {"interval": "1s", "stale_after": "5s", "disconnected_after": "30s"},
        "hosts": hosts,
    }
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def cpu_s() -> float:
    """User + system CPU seconds of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unhealthy(catalog: Catalog) -> list[str]:
    """'name: state (reason)' of every host that is not healthy, from the catalog."""
    return [
        f"{h['name']}: {h['state']} ({h['reason']})"
        for h in catalog.hosts_report(now=time.time())
        if h["state"] != "healthy"
    ]


def parallel_ssh_s(lab: Lab, remote_command: str) -> float:
    """Seconds for HOSTS simultaneous `ssh ... remote_command` to the same sshd to all finish."""
    command = ssh_command(lab, SERVER, remote_command)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(HOSTS)
    ]
    errors = [p.communicate()[1] for p in processes]
    elapsed = time.perf_counter() - start
    failed = [(p.returncode, e) for p, e in zip(processes, errors, strict=True) if p.returncode]
    if failed:
        code, stderr = failed[0]
        raise RuntimeError(f"{len(failed)} parallel ssh failed, first ({code}): {stderr[:200]!r}")
    return elapsed


async def wait_all_healthy(engine: Engine, catalog: Catalog) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while time.monotonic() < deadline:
        # Cheap check first; the catalog is read only once every host has answered.
        if len(engine.answered) == HOSTS and all(e.is_set() for e in engine.answered.values()):
            engine.flush()
            if not unhealthy(catalog):
                return
        await asyncio.sleep(POLL_S)
    problems = unhealthy(catalog)
    raise RuntimeError(f"{len(problems)} of {HOSTS} hosts not healthy: {problems[:3]}")


async def measure(directory: Path, lab: Lab, window_s: float, profile: bool) -> dict[str, float]:
    inventory_path = write_inventory(lab, directory)
    inventory = load_inventory(inventory_path)
    bundle = build_agent()
    samples = {"count": 0}
    with Catalog.open_home(directory / "home") as catalog:
        engine = Engine(inventory, catalog, inventory_path=inventory_path, bundle=bundle)
        received = engine.telemetry_received

        def counting(name: str, sample: Telemetry) -> None:
            samples["count"] += 1
            received(name, sample)

        engine.telemetry_received = counting  # type: ignore[method-assign]
        stop = asyncio.Event()
        started, start_cpu = time.monotonic(), cpu_s()
        task = asyncio.create_task(engine.run(stop))
        try:
            await wait_all_healthy(engine, catalog)
            healthy_s, startup_cpu_s = time.monotonic() - started, cpu_s() - start_cpu
            await asyncio.sleep(SETTLE_S)
            profiler = cProfile.Profile() if profile else None
            count0, cpu0, wall0 = samples["count"], cpu_s(), time.monotonic()
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(window_s)
            if profiler is not None:
                profiler.disable()
            count1, cpu1, wall1 = samples["count"], cpu_s(), time.monotonic()
            problems = unhealthy(catalog)
            if problems:
                raise RuntimeError(f"hosts fell out of healthy while measured: {problems[:3]}")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
    if profiler is not None:
        print(f"--- cProfile of the engine over {window_s:g} s ---", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    elapsed = wall1 - wall0
    return {
        "cpu_percent": (cpu1 - cpu0) / elapsed * 100,
        "healthy_s": healthy_s,
        "startup_cpu_s": startup_cpu_s,
        "rate": (count1 - count0) / elapsed,
        "elapsed": elapsed,
    }


def run(options: Options) -> list[Row]:
    window_s = QUICK_WINDOW_S if options.quick else WINDOW_S
    directory = Path(tempfile.mkdtemp(prefix="cvtui-bench-engine-"))
    try:
        with temporary_lab(LabHostSpec(SERVER, gpus=GPUS)) as lab:
            got = asyncio.run(measure(directory, lab, window_s, options.profile))
            # After the engine stopped, so the baseline has the machine to itself as well.
            true_s = parallel_ssh_s(lab, "true")
            python_s = parallel_ssh_s(lab, "python3 -c pass")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return [
        Row(
            "controller CPU",
            got["cpu_percent"],
            "% core",
            target=Target(TARGET_CPU_PERCENT, strict=True),
            note=(
                f"{HOSTS} hosts x {GPUS} GPUs at 1 Hz, {got['rate']:.1f} samples/s "
                f"over {got['elapsed']:.0f} s; agents and sshd not counted"
            ),
        ),
        Row(
            "controller all healthy",
            got["healthy_s"],
            "s",
            baseline=python_s,
            baseline_name=f"{HOSTS} parallel ssh python3 -c pass",
            note=(
                f"{HOSTS} connects + first agent uploads to one sshd, until all healthy; "
                f"controller CPU meanwhile {got['startup_cpu_s']:.1f} s; "
                f"{HOSTS} parallel ssh true: {true_s:.1f} s"
            ),
        ),
    ]
