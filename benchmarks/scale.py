"""The controller at scale: 200 and 1,000 simulated hosts x 8 GPUs at 1 Hz, and the dashboard.

The hosts are a fleet (benchmarks/fleet.py): one load-generator process serving the agent
protocol over asyncssh for every host, labelled simulated, so that the controller's own cost
shows (200 real agents started through login shells swamp a 2-core machine). The Engine runs
in this process, holding the engine lock as a daemon does; its CPU (getrusage, every thread)
is measured over a window once every host is healthy and the one-off reads of each connection
are over. Then the dashboard (`cvtui --home H --inventory I`, reading the catalog that Engine
writes) runs in a pty and its key latency is measured as benchmarks/tui.py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.controller_cost import Watched, cpu_s, unhealthy
from benchmarks.fleet import host_root
from benchmarks.procfs import cpu_seconds
from benchmarks.table import Row, Target
from benchmarks.tui import Terminal, key_latencies, p95, terminal_env
from cvtui.catalog import Catalog
from cvtui.engine.agent_build import build_agent
from cvtui.engine.engine import Engine
from cvtui.engine.lock import EngineLock
from cvtui.inventory import load_inventory
from cvtui.lab import generate_key, known_hosts_line

SIZES = ((200, 15.0), (1000, 50.0))  # hosts, target % of one core
HOSTS_PER_PORT = 50  # one fleet SSH server per 50 hosts, as hosts behind a few addresses
GPUS = 8
WINDOW_S, QUICK_WINDOW_S = 20.0, 8.0
SETTLE_S = 3.0
HEALTHY_TIMEOUT_S = 300.0
KEY_PRESSES, QUICK_KEY_PRESSES = 20, 8
TARGET_KEY_MS = 100.0


def name_of(index: int) -> str:
    return f"sim-{index:04d}"


def write_files(directory: Path, hosts: int, ports: list[int], host_pub: str) -> Path:
    """known_hosts for the fleet's ports, and an inventory of `hosts` entries over them."""
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("".join(known_hosts_line(port, host_pub) + "\n" for port in ports))
    inventory = {
        "defaults": {"user": getpass.getuser(), "known_hosts": str(known_hosts)},
        "policy": {"interval": "1s", "stale_after": "5s", "disconnected_after": "30s"},
        "hosts": {
            name_of(i): {
                "address": "127.0.0.1",
                "port": ports[i // HOSTS_PER_PORT],
                "identity": str(directory / "client_key"),
                "root": str(host_root(directory, i)),
            }
            for i in range(hosts)
        },
    }
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def start_fleet(directory: Path, hosts: int) -> tuple[subprocess.Popen[str], list[int], str]:
    """The load generator, listening: (its process, its ports, its host key line)."""
    host_pub = generate_key(directory / "host_key", "cvtui-fleet")
    client_pub = generate_key(directory / "client_key", "cvtui-fleet-client")
    (directory / "authorized_keys").write_text(client_pub + "\n")
    argv = [sys.executable, "-m", "benchmarks.fleet", str(directory), str(hosts)]
    argv += [str(HOSTS_PER_PORT), build_agent().hash]
    fleet = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert fleet.stdout is not None
    line = fleet.stdout.readline().split()
    if not line or line[0] != "ready":
        fleet.kill()
        raise RuntimeError(f"the fleet did not start: {line}")
    return fleet, [int(port) for port in line[1:]], host_pub


async def wait_steady(engine: Engine, catalog: Catalog, hosts: int) -> tuple[float, int]:
    """(seconds, hosts healthy) once every host is healthy and its environment read (the
    one-off requests), or at HEALTHY_TIMEOUT_S with what was healthy then."""
    started = time.monotonic()
    deadline = started + HEALTHY_TIMEOUT_S
    said = started
    while time.monotonic() < deadline:
        engine.flush()
        sick = len(unhealthy(catalog))
        if time.monotonic() - said > 10:
            print(f"  {hosts - sick} of {hosts} hosts healthy", file=sys.stderr, flush=True)
            said = time.monotonic()
        if not sick:
            break
        await asyncio.sleep(0.5)
    healthy_s = time.monotonic() - started
    while time.monotonic() < deadline:
        if all(catalog.host_environment(name_of(i)) for i in range(hosts)):
            break
        await asyncio.sleep(0.5)
    return healthy_s, hosts - len(unhealthy(catalog))


async def measure(directory: Path, hosts: int, window_s: float, presses: int) -> dict[str, float]:
    fleet, ports, host_pub = start_fleet(directory, hosts)
    home = directory / "home"
    home.mkdir(mode=0o700)
    inventory_path = write_files(directory, hosts, ports, host_pub)
    lock = EngineLock(home)
    lock.acquire()  # as a daemon holds it: the dashboard only reads
    got: dict[str, float] = {}
    try:
        with Catalog.open_home(home) as catalog:
            engine = Engine(load_inventory(inventory_path), catalog)
            watched = Watched(engine)
            stop = asyncio.Event()
            cpu_start = cpu_s()
            task = asyncio.create_task(engine.run(stop))
            try:
                got["healthy_s"], got["healthy"] = await wait_steady(engine, catalog, hosts)
                got["startup_cpu_s"] = cpu_s() - cpu_start
                await asyncio.sleep(SETTLE_S)
                count0, cpu0, wall0 = watched.samples, cpu_s(), time.monotonic()
                fleet_cpu0 = cpu_seconds(fleet.pid)
                await asyncio.sleep(window_s)
                count1, cpu1, wall1 = watched.samples, cpu_s(), time.monotonic()
                got["cpu_percent"] = (cpu1 - cpu0) / (wall1 - wall0) * 100
                got["fleet_percent"] = (cpu_seconds(fleet.pid) - fleet_cpu0) / (wall1 - wall0) * 100
                got["rate"] = (count1 - count0) / (wall1 - wall0)
                got["failures"] = float(len(watched.failures))
                got["healthy_after"] = hosts - len(unhealthy(catalog))
                if presses:
                    latencies = await asyncio.to_thread(
                        dashboard_keys, directory, home, inventory_path, presses
                    )
                    got["key_p95_ms"], got["key_median_ms"] = (
                        p95(latencies),
                        statistics.median(latencies),
                    )
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 60)
    finally:
        lock.release()
        if fleet.stdin is not None:
            fleet.stdin.close()
        try:
            fleet.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()
    return got


def dashboard_keys(directory: Path, home: Path, inventory: Path, presses: int) -> list[float]:
    """Key latencies (ms, sorted) of the dashboard over the catalog the Engine writes."""
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory", str(inventory)]
    env = terminal_env(directory / "pycache-cvtui")
    warm = Terminal(argv, env)  # fills the bytecode cache, as an installed cvtui has it
    try:
        warm.wait_for(name_of(0).encode(), 0)
    finally:
        warm.close()
    terminal = Terminal(argv, env)
    try:
        terminal.wait_for(name_of(0).encode(), 0)
        time.sleep(SETTLE_S)
        return key_latencies(terminal, presses)
    finally:
        terminal.close()


def run(options: Options) -> list[Row]:
    window_s = QUICK_WINDOW_S if options.quick else WINDOW_S
    presses = QUICK_KEY_PRESSES if options.quick else KEY_PRESSES
    rows: list[Row] = []
    for hosts, target in SIZES:
        with tempfile.TemporaryDirectory(prefix="cvtui-bench-scale-") as tmp:
            last = hosts == SIZES[-1][0]
            got = asyncio.run(measure(Path(tmp), hosts, window_s, presses if last else 0))
        label = f"{hosts} simulated hosts x {GPUS} GPUs at 1 Hz (one fleet process)"
        healthy = min(got["healthy"], got["healthy_after"])
        rows.append(
            Row(
                f"scale controller CPU, {hosts} hosts",
                got["cpu_percent"] if healthy == hosts and not got["failures"] else None,
                "% core",
                target=Target(target, strict=True),
                note=(
                    f"{got['cpu_percent']:.1f}% with {label}: {got['rate']:.0f} samples/s over "
                    f"{window_s:.0f} s; {got['healthy']:.0f} of {hosts} healthy "
                    f"{got['healthy_s']:.0f} s after start ({got['healthy_after']:.0f} at the "
                    f"window's end); controller CPU meanwhile {got['startup_cpu_s']:.1f} s; "
                    f"{got['failures']:.0f} connection failures; the fleet process used "
                    f"{got['fleet_percent']:.0f}% of a core"
                ),
            )
        )
        if "key_p95_ms" in got:
            rows.append(
                Row(
                    f"scale tui key latency, {hosts} hosts",
                    got["key_p95_ms"],
                    "ms",
                    target=Target(TARGET_KEY_MS, strict=True),
                    note=(
                        f"p95 of {presses} screen switches (1 <-> 3) of the dashboard reading "
                        f"the catalog that Engine writes; median {got['key_median_ms']:.0f} ms"
                    ),
                )
            )
    return rows
