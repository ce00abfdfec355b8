"""A big grid, as a user submits and cancels it: `cvtui run grid.yaml` queueing 10,000 runs,
then `cvtui cancel --all-mine` taking them all back (issue 15 item 5).

Whole CLI processes against a real engine (the one `cvtui run` starts in the background) and
one simulated host behind real sshd, drained so every run stays queued. Peak memory is the
command's own (its rusage) and the engine's high-water mark (/proc VmHWM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.cli_commands import cvtui_argv
from benchmarks.cli_startup import bytecode_env
from benchmarks.sandbox import temporary_lab
from benchmarks.table import Row, Target
from cvtui.engine.lock import lock_holder
from cvtui.lab import LabHostSpec

# 10 x 10 x 10 x 10 = 10,000 runs (--quick: 10 x 10 x 10 x 2 = 2,000)
AXES = {"lr": 10, "seed": 10, "depth": 10, "width": 10}
QUICK_WIDTH = 2
SUBMIT_TARGET_S = 10.0
SUBMIT_RSS_TARGET_MB = 500.0
CANCEL_TARGET_S = 3.0


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float, str, str, int]:
    """Seconds, peak RSS (MB) of the process itself, stdout, stderr, exit status."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            seconds,
            usage.ru_maxrss / 1024,  # KiB on Linux
            out.read().decode(),
            err.read().decode(),
            proc.returncode,
        )


def high_water_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the background engine and wait until it is gone (it releases the lab)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def run(options: Options) -> list[Row]:
    axes = dict(AXES)
    if options.quick:
        axes["width"] = QUICK_WIDTH
    count = 1
    for n in axes.values():
        count *= n
    with temporary_lab(LabHostSpec("grid-01", gpus=8)) as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        env = {k: v for k, v in bytecode_env(work / "pycache").items() if k != "CVTUI_HOME"}
        project = work / "project"
        project.mkdir()
        (project / "train.py").write_text("import sys; print(sys.argv)\n")
        config = project / "grid.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": "grid",
                    "code": ".",
                    "command": "python3 train.py --lr {lr} --seed {seed}",
                    "params": {k: list(range(n)) for k, n in axes.items()},
                }
            )
        )
        cvtui = cvtui_argv(lab, home)
        drained = subprocess.run(
            [*cvtui, "hosts", "drain", "grid-01"], capture_output=True, text=True, env=env
        )
        if drained.returncode != 0:
            raise RuntimeError(f"cvtui hosts drain failed: {drained.stderr.strip()}")
        submit_s, submit_mb, out, err, rc = timed_process(
            [*cvtui, "run", str(config), "--json", "--max-runs", str(count)], env
        )
        if rc != 0:
            raise RuntimeError(f"cvtui run failed: {err.strip()[:300]}")
        queued = json.loads(out)
        if len(queued) != count:
            raise RuntimeError(f"cvtui run queued {len(queued)} runs, not {count}")
        engine = lock_holder(home)
        engine_mb = high_water_mb(engine) if engine else None
        cancel_s, cancel_mb, out, err, rc = timed_process([*cvtui, "cancel", "--all-mine"], env)
        if rc != 0:
            raise RuntimeError(f"cvtui cancel --all-mine failed: {err.strip()[:300]}")
        left = subprocess.run(
            [*cvtui, "ps", "--json"], capture_output=True, text=True, env=env
        ).stdout
        active = [r for r in json.loads(left or "[]") if r.get("state") in ("queued", "running")]
        if active:
            raise RuntimeError(f"{len(active)} runs still active after cancel --all-mine")
        engine_after = high_water_mb(engine) if engine else None
        with_engine = ""
        if engine:
            stop(engine)
            with_engine = f"; engine peak {engine_after or engine_mb or 0:.0f} MB"
        note = f"{count:,} runs, whole `cvtui` processes, real engine over sshd"
        return [
            Row(
                f"run: submit a {count:,}-run grid",
                submit_s,
                "s",
                target=Target(SUBMIT_TARGET_S),
                note=note,
            ),
            Row(
                "run: submit peak RSS (the command)",
                submit_mb,
                "MB",
                target=Target(SUBMIT_RSS_TARGET_MB),
                note=f"ru_maxrss of `cvtui run`{with_engine}",
            ),
            Row(
                f"cancel --all-mine: {count:,} queued",
                cancel_s,
                "s",
                target=Target(CANCEL_TARGET_S),
                note=f"peak RSS {cancel_mb:.0f} MB; nothing left queued",
            ),
        ]
