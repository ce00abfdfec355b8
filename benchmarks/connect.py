"""Connect + deploy (agent cached) + first telemetry, against `ssh ... true` to the same sshd."""

from __future__ import annotations

import asyncio
import cProfile
import getpass
import os
import pstats
import pwd
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import Options
from benchmarks.sandbox import ssh_command, temporary_lab
from benchmarks.sessions import open_agent_session
from benchmarks.table import Row, Target
from cvtui.engine.agent_build import build_agent
from cvtui.inventory import Host, Policy, load_inventory
from cvtui.lab import Lab, LabHostSpec

NAME = "connect"
RUNS = 15
QUICK_RUNS = 8
TARGET_RATIO = 1.5
HOST = "bench-01"


def login_shell_ms(runs: int = 3) -> float:
    """Median start of this user's login shell as sshd runs it (rc files read), in ms.

    Both `ssh ... true` and the agent's exec go through it, so it is part of both figures;
    the table names it because a heavy rc file (pyenv, conda) can dominate them.
    """
    shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    # bash reads ~/.bashrc for a non-interactive shell when SSH_CLIENT says sshd started it.
    env = {
        "HOME": str(Path.home()),
        "USER": getpass.getuser(),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SSH_CLIENT": "127.0.0.1 50000 22",
    }
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [shell, "-c", "true"], env=env, stdin=subprocess.DEVNULL, capture_output=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def time_ssh(command: list[str]) -> float:
    """Seconds for one `ssh ... true`, which must succeed."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - start


async def time_cvtui(
    host: Host,
    policy: Policy,
    steps: dict[str, list[float]],
    profiler: cProfile.Profile | None = None,
    *,
    warm_up: bool = False,
) -> float:
    """Seconds from nothing to the first telemetry line, on a fresh connection."""
    bundle = build_agent()
    if profiler is not None:
        profiler.enable()
    try:
        session = await open_agent_session(host, policy, bundle)
    finally:
        if profiler is not None:
            profiler.disable()
    try:
        if session.uploaded and not warm_up:
            raise RuntimeError("the agent was uploaded again although it was cached")
        steps["ssh"].append(session.step_ms("start", "connected"))
        steps["deploy"].append(session.step_ms("connected", "deployed"))
        steps["agent"].append(session.step_ms("deployed", "hello"))
        steps["telemetry"].append(session.step_ms("hello", "telemetry"))
        return session.marks["telemetry"] - session.marks["start"]
    finally:
        await session.close()


async def measure(
    lab: Lab, runs: int, profile: bool
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    inventory = load_inventory(lab.inventory_path)
    host, policy = inventory.host(HOST), inventory.policy
    command = ssh_command(lab, HOST)
    build_agent()  # built once per process, as the engine does before connecting
    steps: dict[str, list[float]] = {"ssh": [], "deploy": [], "agent": [], "telemetry": []}
    # Warm-up: uploads the agent (every timed run then finds it cached) and fills page caches.
    await time_cvtui(host, policy, {k: [] for k in steps}, warm_up=True)
    time_ssh(command)
    profiler = cProfile.Profile() if profile else None
    cvtui_s, ssh_s = [], []
    for _ in range(runs):  # interleaved, so drift in machine load hits both alike
        ssh_s.append(time_ssh(command))
        cvtui_s.append(await time_cvtui(host, policy, steps, profiler))
    if profiler is not None:
        print(f"--- cProfile of {runs} cvtui connects (controller side) ---", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    return cvtui_s, ssh_s, steps


def run(options: Options) -> list[Row]:
    runs = QUICK_RUNS if options.quick else RUNS
    with temporary_lab(LabHostSpec(HOST, gpus=8)) as lab:
        cvtui_s, ssh_s, steps = asyncio.run(measure(lab, runs, options.profile))
    breakdown = ", ".join(f"{name} {statistics.median(ms):.0f}" for name, ms in steps.items())
    return [
        Row(
            NAME,
            statistics.median(cvtui_s) * 1000,
            "ms",
            baseline=statistics.median(ssh_s) * 1000,
            baseline_name="ssh true",
            target=Target(TARGET_RATIO, on_ratio=True),
            note=(
                f"median of {runs}; steps {breakdown} ms; login shell start "
                f"{login_shell_ms():.0f} ms is in both"
            ),
        )
    ]
