"""A Slurm cluster as a host: submit->RUNNING against sbatch, and the status poll of 1,000 jobs.

Runs on a real single-node cluster started here (cvtui/slurm_lab.py: munged, slurmctld,
slurmd from the system's packages, GPUs as mknod'ed devices) behind a real sshd login node.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks import Options
from benchmarks.sandbox import ssh_to_port
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog, new_run_id
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.slurm_lab import SlurmLab, slurm_missing, start_slurm_lab
from cvtui.submit import prepare_runs, submit
from remote_agent.slurm import COMMENT_PREFIX
from remote_agent.slurm_runs import SLURM_RECORD, SlurmRunOps

RUNS, QUICK_RUNS = 8, 4
JOBS, QUICK_JOBS = 1000, 1000
SUBMIT_TARGET = 1.2  # ratio to ssh + `sbatch --wrap true` + Slurm's own start
# The baseline, on the login node in one ssh session: submit, then ask Slurm every 20 ms
# (cvtui asks every 50 ms after a submit) until the job has left PENDING (running, or done).
# A loop without a pause would keep slurmctld busy answering it and delay the very start.
SBATCH_AND_WAIT = (
    "jid=$(sbatch --parsable --output=/dev/null --wrap true) && "
    'while [ "$(squeue --noheader --jobs="$jid" --Format=State 2>/dev/null | tr -d " ")" '
    "= PENDING ]; do sleep 0.02; done"
)


def ssh_argv(lab: SlurmLab, command: str) -> list[str]:
    """Plain OpenSSH to the login node, as a user would type it."""
    return ssh_to_port(lab.login.port, lab.client_key, lab.known_hosts, command)


def wait_idle(lab: SlurmLab, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lab.cluster.command(["squeue", "--noheader"]).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("the cluster did not become idle")


async def submit_to_running(
    lab: SlurmLab, home: Path, config: Path, runs: int
) -> tuple[list[float], list[float]]:
    """Seconds from `submit()` (a second catalog connection, as the CLI's) to `running`, and to
    the Slurm job id being recorded (sbatch answered), with the engine connected and the code
    snapshot already on the cluster."""
    inventory = load_inventory(lab.inventory_path)
    specs = prepare_runs(config, inventory)
    engine_catalog, client = Catalog.open_home(home), Catalog.open_home(home)
    engine = Engine(inventory, engine_catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await engine.wait_answered(20)
    samples: list[float] = []
    submitted: list[float] = []
    try:
        for i in range(runs + 1):  # the first one ships the code snapshot: not timed
            await asyncio.to_thread(wait_idle, lab)
            start = time.perf_counter()
            [run_id] = submit(client, home, specs)
            job_at = None
            while True:
                run = client.get_run(run_id) or {}
                if job_at is None and run.get("slurm_job"):
                    job_at = time.perf_counter()
                if run.get("state") in ("running", "succeeded"):
                    break
                await asyncio.sleep(0.001)
            if i:
                samples.append(time.perf_counter() - start)
                submitted.append((job_at or time.perf_counter()) - start)
    finally:
        stop.set()
        await task
        engine_catalog.close()
        client.close()
    return samples, submitted


def sbatch_baseline(lab: SlurmLab, runs: int, command: str, *, ssh: bool = True) -> list[float]:
    """Seconds of the command over a fresh ssh to the login node (or on it, without ssh)."""
    argv = ssh_argv(lab, command) if ssh else ["sh", "-c", command]
    samples = []
    for _ in range(runs):
        wait_idle(lab)
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=lab.cluster.env)
        samples.append(time.perf_counter() - start)
    return samples


def counting_squeue(directory: Path) -> tuple[Path, Path]:
    """A PATH dir whose squeue logs each call and runs the real one; (dir, log)."""
    bin_dir, log = directory / "bin", directory / "squeue-calls"
    bin_dir.mkdir()
    real = shutil.which("squeue") or "/usr/bin/squeue"
    shim = bin_dir / "squeue"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return bin_dir, log


def poll_of_many_jobs(lab: SlurmLab, directory: Path, jobs: int) -> tuple[float, float, int]:
    """(median seconds of one agent tick over `jobs` watched held jobs, median seconds of one
    bare squeue listing them, squeue calls per tick)."""
    root = directory / "root"
    run_ids = [new_run_id() for _ in range(jobs)]

    def hold(run_id: str) -> str:
        done = lab.cluster.command(
            [
                "sbatch",
                "--parsable",
                "--hold",
                f"--comment={COMMENT_PREFIX}{run_id}",
                "--job-name=cvtui-bench",
                "--output=/dev/null",
                "--wrap",
                "true",
            ]
        )
        return done.stdout.decode().strip()

    with ThreadPoolExecutor(4) as pool:
        job_ids = list(pool.map(hold, run_ids))
    for run_id, job_id in zip(run_ids, job_ids, strict=True):
        run_dir = root / "runs" / run_id
        run_dir.mkdir(parents=True)
        record = {"job_id": job_id, "submitted": time.time() - 60}
        (run_dir / SLURM_RECORD).write_text(json.dumps(record))
    bin_dir, log = counting_squeue(directory)
    before = os.environ.copy()
    os.environ["SLURM_CONF"] = str(lab.cluster.conf)
    os.environ["PATH"] = f"{bin_dir}:{before.get('PATH', '')}"
    try:
        ops = SlurmRunOps(str(root), "/tmp/unused", getpass.getuser(), 1.0, lambda m: True)
        ops.watch(run_ids)
        ops.watch_events()  # the first tick tells every run once
        ticks, calls = [], []
        for _ in range(5):
            log.write_text("")
            ops.polled_at = 0.0  # due: this tick polls
            start = time.perf_counter()
            events = ops.watch_events()
            ticks.append(time.perf_counter() - start)
            calls.append(len(log.read_text().splitlines()))
            assert not events  # nothing changed: held jobs stay pending
        bare = []
        argv = ["squeue", f"--user={getpass.getuser()}", "--states=all", "--noheader"]
        argv.append("--Format=JobID:|,State:|,Reason:|,Comment:|")
        for _ in range(5):
            start = time.perf_counter()
            listed = subprocess.run(argv, check=True, capture_output=True).stdout
            bare.append(time.perf_counter() - start)
        assert len(listed.splitlines()) >= jobs
    finally:
        os.environ.clear()
        os.environ.update(before)
        lab.cluster.command(["scancel", f"--user={getpass.getuser()}"], check=False)
    return statistics.median(ticks), statistics.median(bare), max(calls)


def run(options: Options) -> list[Row]:
    why = slurm_missing()
    if why is not None:
        return [Row("slurm", None, "", note=f"not run: {why}")]
    runs = QUICK_RUNS if options.quick else RUNS
    jobs = QUICK_JOBS if options.quick else JOBS
    directory = Path(tempfile.mkdtemp(prefix="cvtui-bench-slurm-"))
    try:
        lab = start_slurm_lab(directory / "lab")
        try:
            project = directory / "project"
            project.mkdir()
            config = project / "run.yaml"
            config.write_text(
                yaml.safe_dump(
                    {"name": "bench", "command": "true", "resources": {"host": "cluster"}}
                )
            )
            home = directory / "home"
            submit_s, sbatch_s = asyncio.run(submit_to_running(lab, home, config, runs))
            baseline_s = sbatch_baseline(lab, runs, SBATCH_AND_WAIT)
            local_s = sbatch_baseline(lab, runs, SBATCH_AND_WAIT, ssh=False)
            bare = "sbatch --parsable --output=/dev/null --wrap true"
            bare_sbatch_s = sbatch_baseline(lab, runs, bare)
            tick_s, bare_s, calls = poll_of_many_jobs(lab, directory / "poll", jobs)
        finally:
            lab.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return [
        Row(
            "slurm submit->RUNNING",
            statistics.median(submit_s) * 1000,
            "ms",
            baseline=statistics.median(baseline_s) * 1000,
            baseline_name="ssh 'sbatch --wrap true' + wait for Slurm's start",
            target=Target(SUBMIT_TARGET, on_ratio=True),
            note=f"median of {runs}, idle 1-node cluster, warm engine, snapshot on the cluster; "
            f"cvtui min {min(submit_s) * 1000:.0f} ms, baseline min "
            f"{min(baseline_s) * 1000:.0f} ms; the same on the login node without ssh: "
            f"{statistics.median(local_s) * 1000:.0f} ms",
        ),
        Row(
            "slurm submit (job id back)",
            statistics.median(sbatch_s) * 1000,
            "ms",
            baseline=statistics.median(bare_sbatch_s) * 1000,
            baseline_name="ssh 'sbatch --wrap true'",
            note=f"median of {runs}: submit() to the run's Slurm job id in the catalog "
            "(dispatch, run dir, sbatch through the agent)",
        ),
        Row(
            f"slurm status poll, {jobs} jobs",
            float(calls),
            "squeue calls",
            target=Target(1),
            note=f"one agent tick over {jobs} watched pending jobs: "
            f"{tick_s * 1000:.0f} ms (a bare squeue listing them: {bare_s * 1000:.0f} ms)",
        ),
    ]
