"""Wall time of `cvtui --help` against `python -c pass` from the same interpreter."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Options
from benchmarks.table import Row, Target

NAME = "cli startup"
RUNS = 10
QUICK_RUNS = 6
TARGET_MS = 150.0
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def cvtui_command() -> list[str]:
    """The installed `cvtui` script next to this interpreter, else the module form."""
    script = Path(sys.executable).with_name("cvtui")
    if script.is_file():
        return [str(script), "--help"]
    return [sys.executable, "-m", "cvtui.cli", "--help"]


def bytecode_env(cache_dir: Path | None) -> dict[str, str]:
    """The environment for a run with .pyc files cached under cache_dir (None: never written).

    An installed cvtui runs from cached bytecode after its first start; without the cache every
    start compiles click and cvtui again. The cache goes to a temp dir, not the source tree.
    """
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if cache_dir is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env


def wall_s(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    return time.perf_counter() - start


def medians_ms(commands: list[list[str]], env: dict[str, str], runs: int) -> list[float]:
    """Median wall time of each command, runs interleaved after one warm-up of each."""
    for command in commands:
        wall_s(command, env)  # warm-up: page cache, and the bytecode cache when enabled
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for command, samples in zip(commands, times, strict=True):
            samples.append(wall_s(command, env))
    return [statistics.median(samples) * 1000 for samples in times]


def slowest_imports(env: dict[str, str], count: int = 3) -> str:
    """The top-level imports that cost `cvtui --help` the most, from `python -X importtime`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cvtui.cli", "--help"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
    )
    top_level = []
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and len(match[3]) == 1:  # one space of indent: imported by cvtui or python itself
            top_level.append((int(match[2]), match[4]))
    top_level.sort(reverse=True)
    return ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in top_level[:count])


def run(options: Options) -> list[Row]:
    runs = QUICK_RUNS if options.quick else RUNS
    commands = [cvtui_command(), [sys.executable, "-c", "pass"]]
    cache_dir = Path(tempfile.mkdtemp(prefix="cvtui-bench-pyc-"))
    try:
        warm_env = bytecode_env(cache_dir)
        cvtui_ms, python_ms = medians_ms(commands, warm_env, runs)
        cold_ms = medians_ms(commands[:1], bytecode_env(None), max(3, runs // 2))[0]
        note = (
            f"median of {runs}, .pyc cached; `{Path(commands[0][0]).name} --help` "
            f"without .pyc: {cold_ms:.0f} ms"
        )
        row = Row(
            NAME,
            cvtui_ms,
            "ms",
            baseline=python_ms,
            baseline_name="python -c pass",
            target=Target(TARGET_MS),
            note=note,
        )
        if not row.passed or options.profile:
            slowest = slowest_imports(warm_env)
            row = dataclasses.replace(row, note=f"{note}; slowest imports: {slowest}")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return [row]
