"""50 hosts from cold to healthy on sshd with OpenSSH's default limits (direct, and behind one
bastion), and the CPU of the controller serving them at 1 Hz."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import getpass
import pstats
import resource
import shlex
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
HEALTHY_TIMEOUT_S = 180.0
ENVIRONMENTS_TIMEOUT_S = 60.0
POLL_S = 0.05
TARGET_CPU_PERCENT = 10.0
TARGET_COLD_RATIO = 1.2
SERVER = "bench-sshd"  # the 50 hosts' sshd, with OpenSSH's default limits
BASTION = "bench-bastion"  # a jump host in front of it, with the default limits too
ROOMY = "bench-roomy"  # the lab's generous limits: where 50 plain ssh all get in
DEFAULT_MAX_STARTUPS = "10:30:100"  # OpenSSH's defaults (sshd_config(5))
DEFAULT_MAX_SESSIONS = 10
DROPPED = "past MaxStartups"  # what sshd logs (LogLevel VERBOSE) for each connection it drops


def write_inventory(lab: Lab, directory: Path, jump: str | None = None) -> Path:
    """HOSTS entries that all reach the lab's one sshd, each with its own root and leases dir."""
    server = lab.servers[SERVER]
    hosts = {}
    for n in range(HOSTS):
        entry = {
            "address": "127.0.0.1",
            "port": server.port,
            "identity": str(lab.client_key),
            "root": str(directory / "hosts" / f"host-{n:02d}" / "root"),
            "leases_dir": str(directory / "hosts" / f"host-{n:02d}" / "leases"),
            "simulate": {"gpus": GPUS},
        }
        if jump is not None:
            entry["jump"] = jump
        hosts[f"host-{n:02d}"] = entry
    inventory = {
        "defaults": {"user": getpass.getuser(), "known_hosts": str(lab.known_hosts)},
        "policy": {"interval": "1s", "stale_after": "5s", "disconnected_after": "30s"},
        "hosts": hosts,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def with_default_limits(lab: Lab, name: str) -> None:
    """Restart one lab sshd with OpenSSH's default MaxStartups and MaxSessions, logging drops."""
    server = lab.servers[name]
    server.stop()
    server.max_startups, server.max_sessions = DEFAULT_MAX_STARTUPS, DEFAULT_MAX_SESSIONS
    server.log_level = "VERBOSE"
    server.start()


def drops(lab: Lab, name: str) -> int:
    """Connections that sshd dropped past MaxStartups so far (its log)."""
    return (lab.servers[name].directory / "sshd.log").read_text().count(DROPPED)


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


def parallel_ssh(command: list[str]) -> tuple[float, int]:
    """(seconds, how many failed) for HOSTS simultaneous runs of an ssh command line."""
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(HOSTS)
    ]
    for process in processes:
        process.communicate()
    return time.perf_counter() - start, sum(1 for p in processes if p.returncode)


def parallel_ssh_s(lab: Lab, server: str, remote_command: str) -> float:
    """Seconds for HOSTS simultaneous `ssh ... remote_command` to one sshd to all finish."""
    elapsed, failed = parallel_ssh(ssh_command(lab, server, remote_command))
    if failed:
        raise RuntimeError(f"{failed} of {HOSTS} parallel ssh to {server} failed")
    return elapsed


def jumped_ssh_command(lab: Lab, remote_command: str) -> list[str]:
    """Plain ssh through the bastion, as `ssh -J` does it: each opens its own bastion login.

    Spelled as the ProxyCommand that -J stands for, since -J would not hand the jump host's
    ssh the lab's key and known_hosts options.
    """
    hop = ssh_command(lab, BASTION, "")[:-2]  # ssh -p PORT -i KEY -o ... (no user@host, cmd)
    proxy = shlex.join([*hop, "-W", "%h:%p", f"{getpass.getuser()}@127.0.0.1"])
    command = ssh_command(lab, SERVER, remote_command)
    return [command[0], "-o", f"ProxyCommand={proxy}", *command[1:]]


class Watched:
    """An Engine whose telemetry samples and reported failures are counted."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples = 0
        self.failures: list[str] = []
        received, failed = engine.telemetry_received, engine.host_failed

        def counting(name: str, sample: Telemetry) -> None:
            self.samples += 1
            received(name, sample)

        def noting(name: str, state: str, reason: str) -> None:
            self.failures.append(f"{name}: {state} ({reason})")
            failed(name, state, reason)

        engine.telemetry_received = counting  # type: ignore[method-assign]
        engine.host_failed = noting  # type: ignore[method-assign]


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


async def wait_environments(catalog: Catalog) -> None:
    """Until every host's environment is in the catalog (at most ENVIRONMENTS_TIMEOUT_S)."""
    deadline = time.monotonic() + ENVIRONMENTS_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(catalog.host_environment(f"host-{n:02d}") for n in range(HOSTS)):
            return
        await asyncio.sleep(0.2)


async def measure(
    directory: Path, lab: Lab, window_s: float, profile: bool, jump: str | None = None
) -> dict[str, float | list[str]]:
    """Cold start (agent not yet on the hosts) until all healthy; then, when window_s, the
    controller's CPU over that window."""
    inventory_path = write_inventory(lab, directory, jump)
    inventory = load_inventory(inventory_path)
    bundle = build_agent()
    profiler = cProfile.Profile() if profile else None
    got: dict[str, float | list[str]] = {}
    with Catalog.open_home(directory / "home") as catalog:
        engine = Engine(inventory, catalog, inventory_path=inventory_path, bundle=bundle)
        watched = Watched(engine)
        stop = asyncio.Event()
        started, start_cpu = time.monotonic(), cpu_s()
        task = asyncio.create_task(engine.run(stop))
        try:
            await wait_all_healthy(engine, catalog)
            got["healthy_s"], got["startup_cpu_s"] = time.monotonic() - started, cpu_s() - start_cpu
            got["failures"] = list(watched.failures)
            if window_s:
                # Steady state: the one-off reads each connection starts (the host's
                # packages, for provenance) are over before the window opens.
                await wait_environments(catalog)
                await asyncio.sleep(SETTLE_S)
                count0, cpu0, wall0 = watched.samples, cpu_s(), time.monotonic()
                if profiler is not None:
                    profiler.enable()
                await asyncio.sleep(window_s)
                if profiler is not None:
                    profiler.disable()
                count1, cpu1, wall1 = watched.samples, cpu_s(), time.monotonic()
                problems = unhealthy(catalog)
                if problems:
                    raise RuntimeError(f"hosts fell out of healthy while measured: {problems[:3]}")
                got["cpu_percent"] = (cpu1 - cpu0) / (wall1 - wall0) * 100
                got["rate"] = (count1 - count0) / (wall1 - wall0)
                got["elapsed"] = wall1 - wall0
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
    if profiler is not None:
        print(f"--- cProfile of the engine over {window_s:g} s ---", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return got


def run(options: Options) -> list[Row]:
    window_s = QUICK_WINDOW_S if options.quick else WINDOW_S
    directory = Path(tempfile.mkdtemp(prefix="cvtui-bench-engine-"))
    specs = (LabHostSpec(SERVER, gpus=GPUS), LabHostSpec(BASTION), LabHostSpec(ROOMY))
    try:
        with temporary_lab(*specs) as lab:
            with_default_limits(lab, SERVER)
            with_default_limits(lab, BASTION)
            direct = asyncio.run(measure(directory / "direct", lab, window_s, options.profile))
            direct_drops = drops(lab, SERVER)
            bastion = f"{getpass.getuser()}@127.0.0.1:{lab.servers[BASTION].port}"
            jumped = asyncio.run(measure(directory / "jumped", lab, 0, False, bastion))
            jumped_drops = drops(lab, SERVER) - direct_drops + drops(lab, BASTION)
            # After the engines stopped, so the baselines have the machine to themselves too.
            python_s = parallel_ssh_s(lab, ROOMY, "python3 -c pass")
            true_s = parallel_ssh_s(lab, ROOMY, "true")
            before = drops(lab, SERVER)
            _, plain_failed = parallel_ssh(ssh_command(lab, SERVER, "python3 -c pass"))
            plain_drops = drops(lab, SERVER) - before
            before = drops(lab, BASTION)
            _, jump_failed = parallel_ssh(jumped_ssh_command(lab, "python3 -c pass"))
            jump_drops = drops(lab, BASTION) - before
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    limits = f"MaxStartups {DEFAULT_MAX_STARTUPS}, MaxSessions {DEFAULT_MAX_SESSIONS}"
    baseline = f"{HOSTS} parallel ssh python3 -c pass"
    return [
        Row(
            "controller CPU",
            float(direct["cpu_percent"]),  # type: ignore[arg-type]
            "% core",
            target=Target(TARGET_CPU_PERCENT, strict=True),
            note=(
                f"{HOSTS} hosts x {GPUS} GPUs at 1 Hz, {direct['rate']:.1f} samples/s "
                f"over {direct['elapsed']:.0f} s; agents and sshd not counted"
            ),
        ),
        cold_row(
            "controller all healthy (sshd default limits)",
            direct,
            direct_drops,
            python_s,
            baseline,
            f"{HOSTS} connects + first agent uploads to one sshd with {limits}; "
            f"{HOSTS} parallel ssh true: {true_s:.1f} s; baselines on an sshd with roomy "
            f"limits: on the default one {plain_failed} of {HOSTS} plain ssh failed "
            f"({plain_drops} dropped)",
        ),
        cold_row(
            "controller all healthy (behind 1 bastion)",
            jumped,
            jumped_drops,
            python_s,
            baseline,
            f"the same {HOSTS} hosts via ProxyJump through one bastion with {limits} (one "
            f"login to it, carrying all); {HOSTS} parallel ssh -J through it: "
            f"{jump_failed} failed ({jump_drops} dropped)",
        ),
    ]


def cold_row(
    name: str,
    got: dict[str, float | list[str]],
    dropped: int,
    baseline_s: float,
    baseline: str,
    note: str,
) -> Row:
    """A cold-start row: it fails on any connection the engine lost or sshd dropped."""
    failures = got["failures"]
    assert isinstance(failures, list)
    trouble = f"; FAILURES: {failures[:2]}" if failures else ""
    healthy_s = float(got["healthy_s"])  # type: ignore[arg-type]
    return Row(
        name,
        healthy_s if not failures and not dropped else None,
        "s",
        baseline=baseline_s,
        baseline_name=baseline,
        target=Target(TARGET_COLD_RATIO, on_ratio=True),
        note=(
            f"{healthy_s:.1f} s; {len(failures)} refused/reset/lost, {dropped} dropped past "
            f"MaxStartups; controller CPU meanwhile {got['startup_cpu_s']:.1f} s; {note}{trouble}"
        ),
    )
