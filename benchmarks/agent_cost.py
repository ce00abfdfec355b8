"""CPU and memory of one agent at 1 Hz with 8 simulated GPUs, started over SSH like the engine."""

from __future__ import annotations

import asyncio
import time

import asyncssh

from benchmarks import Options
from benchmarks.procfs import command_line, cpu_seconds, stat_cpu_seconds, status_bytes
from benchmarks.sandbox import temporary_lab
from benchmarks.sessions import open_agent_session
from benchmarks.table import Row, Target
from cvtui.engine.agent_build import build_agent
from cvtui.inventory import load_inventory
from cvtui.lab import LabHostSpec

WINDOW_S = 20.0
QUICK_WINDOW_S = 8.0
SETTLE_S = 1.0  # let the first samples (imports, backend start) pass before measuring
INTERVAL_S = 1.0
GPUS = 8
TARGET_RSS_MB = 20.0
TARGET_CPU_PERCENT = 0.2
HOST = "bench-agent"
# The baseline: the same remote python3, idle, started the same way on the same connection.
BARE_PYTHON = "exec python3 -u -c 'import os, sys; print(os.getpid()); sys.stdin.read()'"


async def bare_python_rss_mb(conn: asyncssh.SSHClientConnection) -> float:
    """VmRSS of an idle python3 started over SSH: the floor any Python agent stands on."""
    process = await conn.create_process(BARE_PYTHON)
    try:
        pid = int(await asyncio.wait_for(process.stdout.readline(), 15))
        await asyncio.sleep(0.2)
        return status_bytes(pid, "VmRSS") / 1e6
    finally:
        process.stdin.write_eof()
        process.close()


async def measure(window_s: float) -> dict[str, float | str]:
    with temporary_lab(LabHostSpec(HOST, gpus=GPUS)) as lab:
        inventory = load_inventory(lab.inventory_path)
        host = inventory.host(HOST)
        session = await open_agent_session(
            host, inventory.policy, build_agent(), interval_s=INTERVAL_S
        )
        try:
            pid = session.hello.pid
            # The lab's hosts are this machine, so the agent's pid is one of ours to read.
            seen = command_line(pid)
            if "agent.pyz" not in seen:
                raise RuntimeError(f"pid {pid} from the hello is not the agent: {seen}")
            await asyncio.sleep(SETTLE_S)
            cpu0, ticks0, count0 = cpu_seconds(pid), stat_cpu_seconds(pid), session.telemetry.count
            start = time.monotonic()
            await asyncio.sleep(window_s)
            cpu1, ticks1, count1 = cpu_seconds(pid), stat_cpu_seconds(pid), session.telemetry.count
            elapsed = time.monotonic() - start
            rss_mb = status_bytes(pid, "VmRSS") / 1e6
            peak_mb = status_bytes(pid, "VmHWM") / 1e6
            bare_mb = await bare_python_rss_mb(session.conn)
            return {
                "cpu_percent": (cpu1 - cpu0) / elapsed * 100,
                "stat_percent": (ticks1 - ticks0) / elapsed * 100,
                "rss_mb": rss_mb,
                "peak_mb": peak_mb,
                "bare_mb": bare_mb,
                "samples": count1 - count0,
                "elapsed": elapsed,
                "python": session.hello.python,
                "backend": session.hello.backend,
            }
        finally:
            await session.close()


def run(options: Options) -> list[Row]:
    window_s = QUICK_WINDOW_S if options.quick else WINDOW_S
    got = asyncio.run(measure(window_s))
    where = f"{GPUS} {got['backend']} GPUs at 1 Hz, python {got['python']}"
    return [
        Row(
            "agent RSS",
            float(got["rss_mb"]),
            "MB",
            baseline=float(got["bare_mb"]),
            baseline_name="idle python3",
            target=Target(TARGET_RSS_MB, strict=True),
            note=f"VmRSS; peak {float(got['peak_mb']):.1f} MB; {where}",
        ),
        Row(
            "agent CPU",
            float(got["cpu_percent"]),
            "% core",
            target=Target(TARGET_CPU_PERCENT, strict=True),
            note=(
                f"{got['samples']} samples in {float(got['elapsed']):.0f} s; "
                f"utime+stime says {float(got['stat_percent']):.2f} %"
            ),
        ),
    ]
