"""Every CLI command at daemon speed: whole `cvtui` processes with a warm `cvtui daemon`.

Two simulated hosts behind real sshd; the daemon is the real one (`cvtui daemon`, its own
process); each command runs as a user runs it (the installed script, bytecode cached).
`exec` is compared with `ssh host true` measured in the same run, interleaved.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.cli_startup import bytecode_env
from benchmarks.sandbox import ssh_command, temporary_lab
from benchmarks.table import Row, Target
from cvtui.engine.client import EngineClient
from cvtui.lab import Lab, LabHostSpec

HOSTS = ("cli-01", "cli-02")
RUNS, QUICK_RUNS = 9, 5
READ_TARGET_MS = 200.0
RUN_TARGET_MS = 400.0
CANCEL_TARGET_MS = 300.0
EXEC_TARGET = 0.8  # ratio to `ssh host true`


def cvtui_argv(lab: Lab, home: Path) -> list[str]:
    script = Path(sys.executable).with_name("cvtui")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "cvtui.cli"]
    return [*base, "--home", str(home), "--inventory", str(lab.inventory_path)]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, done


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(options: Options) -> list[Row]:
    runs = QUICK_RUNS if options.quick else RUNS
    specs = [LabHostSpec(name, gpus=4) for name in HOSTS]
    with temporary_lab(*specs) as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        env = bytecode_env(work / "pycache")
        env = {k: v for k, v in env.items() if not k.startswith("CVTUI_")}
        project = work / "project"
        project.mkdir()
        (project / "job.py").write_text("import time; print('hi', flush=True); time.sleep(60)\n")
        config = project / "run.yaml"
        config.write_text(
            yaml.safe_dump({"name": "bench", "command": "python3 job.py", "resources": {"gpus": 0}})
        )
        cvtui = cvtui_argv(lab, home)
        daemon = subprocess.Popen(
            [*cvtui, "daemon"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(work / "daemon.log", "w"), env=env,  # noqa: SIM115 (closed with the dir)
        )  # fmt: skip
        try:
            # Measured only once this daemon answers: a command run before that would start
            # a detached engine of its own, which outlived the benchmark (and its lab).
            wait_until(
                lambda: daemon.poll() is None and EngineClient.find(home) is not None,
                30,
                "the daemon answering on its socket",
            )
            return measure(lab, home, cvtui, config, env, runs)
        finally:
            daemon.terminate()
            daemon.wait(30)


def measure(
    lab: Lab, home: Path, cvtui: list[str], config: Path, env: dict[str, str], runs: int
) -> list[Row]:
    def healthy() -> bool:
        _, done = timed([*cvtui, "hosts", "--json"], env)
        return done.returncode == 0 and all(
            h["state"] == "healthy" for h in json.loads(done.stdout or "[]")
        )

    wait_until(healthy, 60, "both hosts healthy through the daemon")
    _, first = timed([*cvtui, "run", str(config), "--json"], env)  # ships the code snapshot
    if first.returncode != 0:
        raise RuntimeError(f"cvtui run failed: {first.stderr.strip()}")
    run_id = json.loads(first.stdout)[0]["id"]
    samples: dict[str, list[float]] = {}
    commands = {
        "hosts": ["hosts"],
        "hosts --json": ["hosts", "--json"],
        "logs RUN": ["logs", run_id],
        "ps": ["ps"],
        "queue": ["queue"],
        "stats": ["stats"],
        "run --dry-run": ["run", str(config), "--dry-run"],
    }
    submitted: list[str] = []
    for _ in range(runs):
        for name, args in commands.items():
            seconds, done = timed([*cvtui, *args], env)
            if done.returncode != 0:
                raise RuntimeError(f"cvtui {name} failed: {done.stderr.strip()[:300]}")
            samples.setdefault(name, []).append(seconds)
        seconds, done = timed([*cvtui, "run", str(config), "--json"], env)
        if done.returncode != 0:
            raise RuntimeError(f"cvtui run failed: {done.stderr.strip()[:300]}")
        samples.setdefault("run (one run, snapshot cached)", []).append(seconds)
        submitted.append(json.loads(done.stdout)[0]["id"])
    for run_id in submitted:
        seconds, done = timed([*cvtui, "cancel", run_id], env)
        if done.returncode != 0:
            raise RuntimeError(f"cvtui cancel failed: {done.stderr.strip()[:300]}")
        samples.setdefault("cancel RUN", []).append(seconds)
    exec_s, ssh_s = [], []
    for _ in range(runs):  # interleaved so load drift hits both
        seconds, done = timed([*cvtui, "exec", "--host", HOSTS[0], "--", "true"], env)
        if done.returncode != 0:
            raise RuntimeError(f"cvtui exec failed: {done.stderr.strip()[:300]}")
        exec_s.append(seconds)
        ssh_s.append(timed(ssh_command(lab, HOSTS[0]), dict(os.environ))[0])
    rows = []
    for name, values in samples.items():
        target = READ_TARGET_MS
        if name.startswith("run"):
            target = RUN_TARGET_MS
        elif name.startswith("cancel"):
            target = CANCEL_TARGET_MS
        rows.append(
            Row(
                f"cli {name}",
                statistics.median(values) * 1000,
                "ms",
                target=Target(target),
                note=f"median of {len(values)}; whole process, warm `cvtui daemon`, 2 hosts",
            )
        )
    rows.append(
        Row(
            "cli exec --host h -- true",
            statistics.median(exec_s) * 1000,
            "ms",
            baseline=statistics.median(ssh_s) * 1000,
            baseline_name="ssh true",
            target=Target(EXEC_TARGET, on_ratio=True),
            note=f"median of {runs}, interleaved; through the daemon's open connection",
        )
    )
    return rows
