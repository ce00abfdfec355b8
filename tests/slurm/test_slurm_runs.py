"""Runs on a real Slurm cluster through its login node: submit, pend, run, sync, cancel, fail.

The cluster has one node with 4 GPU devices; Slurm allocates them (CUDA_VISIBLE_DEVICES), cvtui
submits with sbatch and follows with squeue through the agent on the login node (a real sshd).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from pathlib import Path

import pytest
from support import running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.mirror import mirror_dir
from cvtui.slurm_lab import SlurmLab
from cvtui.stats import compute_stats
from cvtui.submit import prepare_runs, submit
from slurm.workload import FINAL, runs_of, write_config

pytestmark = [pytest.mark.sshd, pytest.mark.slurm]


async def test_grid_two_run_two_pend_and_all_succeed(cluster: SlurmLab, home: Path) -> None:
    config = write_config(home.parent, params={"lr": [0.1, 0.2], "seed": [1, 2], "steps": 3})
    inventory = load_inventory(cluster.inventory_path)
    engine_catalog, catalog = Catalog.open_home(home), Catalog.open_home(home)
    engine = Engine(inventory, engine_catalog)
    seen_pending: set[str] = set()
    seen_gpu_ids: dict[str, list[int]] = {}  # from the cluster's telemetry: our jobs' GPUs
    most_running = 0
    async with running(engine.run):
        await engine.wait_answered(20)
        ids = submit(catalog, home, prepare_runs(config, inventory))
        assert len(ids) == 4

        def watch() -> bool:
            nonlocal most_running
            runs = runs_of(catalog, ids)
            states = [r["state"] for r in runs]
            most_running = max(most_running, states.count("running"))
            for job in (catalog.clusters().get("cluster") or {}).get("jobs", []):
                if job["gpu_ids"]:
                    seen_gpu_ids[job["run_id"]] = job["gpu_ids"]
            seen_pending.update(
                r["reason"] for r in runs if r["state"] == "queued" and r["host"] == "cluster"
            )
            return all(state in FINAL for state in states)

        await wait_for(watch, timeout_s=90, step_s=0.1)
        await wait_for(lambda: all(r["sync_status"] == "synced" for r in runs_of(catalog, ids)))
    runs = runs_of(catalog, ids)
    assert [r["state"] for r in runs] == ["succeeded"] * 4, [r["reason"] for r in runs]
    assert most_running == 2  # 4 GPUs, 2 per job: two ran while two waited in Slurm's queue
    assert "PENDING (Resources)" in seen_pending or "PENDING (Priority)" in seen_pending
    # Slurm's allocation: each run saw 2 GPUs, the ones the catalog recorded, and no GPU was
    # in two runs at once.
    held = []
    for run in runs:
        ran = json.loads((mirror_dir(home, run["id"]) / "ran.json").read_text())
        assert ran["job"] == run["slurm_job"]
        assert ran["cvd"] == ran["gpus"] == ",".join(str(g) for g in run["gpus"])
        assert len(run["gpus"]) == 2
        held.append((set(run["gpus"]), ran["start"], ran["end"]))
    for i, (gpus_a, start_a, end_a) in enumerate(held):
        for gpus_b, start_b, end_b in held[i + 1 :]:
            if start_a < end_b and start_b < end_a:
                assert not gpus_a & gpus_b
    assert seen_gpu_ids  # the cluster row named the GPUs of the jobs it showed
    for run in runs:
        assert seen_gpu_ids.get(run["id"], run["gpus"]) == run["gpus"]
    # Outputs and metrics came back through the login node, as from any host.
    for run in runs:
        assert catalog.metric_keys(run["id"]) == ["loss"]
        assert run["progress"] == 100.0
    # The cluster row: its partition and node with their GPUs.
    cluster_row = catalog.clusters()["cluster"]
    assert [p["name"] for p in cluster_row["partitions"]] == ["gpu"]
    assert cluster_row["nodes"][0]["gpus"] == 4
    assert catalog.hosts_report()[0]["state"] == "healthy"
    # GPU-hours from Slurm's allocation: 2 GPUs x each run's time.
    now = time.time()
    stats = compute_stats(catalog.run_usage(None, now), catalog.gpu_models(), since=None, now=now)
    expected = sum(2 * (r["ended"] - r["started"]) for r in runs) / 3600
    assert stats.gpu_hours_by_host["cluster"] == pytest.approx(expected)
    assert expected > 4 * 2 * 2.5 / 3600  # each ran its ~3 s
    engine_catalog.close()
    catalog.close()


async def test_cancel_a_pending_and_a_running_job(cluster: SlurmLab, home: Path) -> None:
    config = write_config(
        home.parent, params={"steps": 60}, resources={"gpus": 4, "host": "cluster"}
    )
    inventory = load_inventory(cluster.inventory_path)
    engine_catalog, catalog = Catalog.open_home(home), Catalog.open_home(home)
    engine = Engine(inventory, engine_catalog)
    async with running(engine.run):
        await engine.wait_answered(20)
        [first] = submit(catalog, home, prepare_runs(config, inventory))
        [second] = submit(catalog, home, prepare_runs(config, inventory))
        # Running, and its command under way (it printed progress), before it is cancelled.
        await wait_for(lambda: (catalog.get_run(first) or {}).get("progress") is not None, 30)
        await wait_for(
            lambda: ((catalog.get_run(second) or {}).get("reason") or "").startswith("PENDING ("),
            30,
        )
        pending_job = (catalog.get_run(second) or {})["slurm_job"]
        for run_id in (second, first):
            catalog.submit_command("cancel", {"run_id": run_id, "by": "tester"})
        await wait_for(
            lambda: all(r["state"] in FINAL for r in runs_of(catalog, [first, second])), 30
        )
    ran, waited = runs_of(catalog, [first, second])
    by = f"CANCELLED by {getpass.getuser()}"  # the login node's user, as on an ssh host
    assert (ran["state"], ran["reason"]) == ("cancelled", by)
    assert ran["exit_code"] is not None  # it had started: its command was signalled
    assert (waited["state"], waited["reason"]) == ("cancelled", by)
    assert waited["started"] is None  # never ran
    listed = cluster.cluster.command(
        ["squeue", "--noheader", "--states=all", "--Format=JobID:|,State:|"]
    ).stdout.decode()
    assert f"{pending_job}|CANCELLED|" in listed
    engine_catalog.close()
    catalog.close()


async def test_time_limit_and_bad_partition(cluster: SlurmLab, home: Path) -> None:
    slow = write_config(
        home.parent,
        params={"steps": 300},
        resources={"gpus": 1, "host": "cluster", "slurm": {"time": "0:05"}},
    )
    inventory = load_inventory(cluster.inventory_path)
    engine_catalog, catalog = Catalog.open_home(home), Catalog.open_home(home)
    engine = Engine(inventory, engine_catalog)
    async with running(engine.run):
        await engine.wait_answered(20)
        [late] = submit(catalog, home, prepare_runs(slow, inventory))
        bad = write_config(
            home.parent, resources={"gpus": 1, "host": "cluster", "slurm": {"partition": "nope"}}
        )
        [refused] = submit(catalog, home, prepare_runs(bad, inventory))
        await wait_for(lambda: (catalog.get_run(refused) or {}).get("state") in FINAL, 30)
        # Slurm checks time limits on its own schedule (about every 30 s).
        await wait_for(lambda: (catalog.get_run(late) or {}).get("state") in FINAL, 100, 0.2)
    refused_run, late_run = runs_of(catalog, [refused, late])
    assert refused_run["state"] == "failed"
    assert refused_run["reason"].startswith("sbatch refused it on cluster: ")
    assert "Invalid partition name specified" in refused_run["reason"]
    assert refused_run["slurm_job"] is None and refused_run["started"] is None
    assert (late_run["state"], late_run["reason"]) == ("failed", "TIMEOUT")
    engine_catalog.close()
    catalog.close()


async def test_exec_runs_through_srun_with_the_gpus_asked(
    cluster: SlurmLab, tmp_path: Path
) -> None:
    from cvtui.engine.remote_exec import exec_on_host

    inventory = load_inventory(cluster.inventory_path)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        code = await exec_on_host(
            inventory.host("cluster"),
            inventory.policy,
            ["sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES job=$SLURM_JOB_ID; exit 3"],
            [0, 1],
            stdout=stdout,
            stderr=stderr,
        )
    assert code == 3, err.read_text()
    line = out.read_text().strip()
    assert line.startswith("gpus=0,1 job=") and line != "gpus=0,1 job="
    await asyncio.sleep(0)


async def test_exec_with_a_terminal_gets_a_pty_of_its_own_under_srun(
    cluster: SlurmLab, tmp_path: Path
) -> None:
    import io

    from cvtui.engine.remote_exec import exec_on_host
    from cvtui.exec_terminal import Term

    inventory = load_inventory(cluster.inventory_path)
    out = io.BytesIO()
    code = await exec_on_host(
        inventory.host("cluster"),
        inventory.policy,
        ["sh", "-c", "tty; stty size; echo job=$SLURM_JOB_ID; read x; echo got:$x"],
        [0],
        stdout=out,
        stdin=io.BytesIO(b"typed\n"),
        term=Term("xterm", 90, 30),
    )
    shown = out.getvalue().decode()
    assert code == 0, shown
    assert "/dev/pts/" in shown and "30 90" in shown and "got:typed" in shown
    assert "job=\r" not in shown  # inside a Slurm job step


def test_hosts_lists_the_clusters_partitions_and_nodes(cluster: SlurmLab, home: Path) -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(cluster.inventory_path), "hosts"]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("cluster        healthy      slurm: 4 GPUs (4 idle) on 1 nodes")
    assert lines[1].split()[:3] == ["partition", "gpu*", "up"]
    assert lines[2].split()[:3] == ["node", cluster.cluster.node, "idle"]
    as_json = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    [host] = json.loads(as_json.stdout)
    assert host["backend"] == "slurm" and host["gpus"] == []
    assert host["cluster"]["nodes"][0]["gpus"] == 4
    assert host["cluster"]["error"] is None
    doctor = subprocess.run([*argv[:-1], "doctor", "cluster"], capture_output=True, text=True)
    slurm_line = next(line for line in doctor.stdout.splitlines() if "slurm" in line.split())
    assert "squeue lists" in slurm_line and "FAIL" not in slurm_line, doctor.stdout


def test_the_cli_hands_a_run_to_slurm_and_cancels_it_there(cluster: SlurmLab, home: Path) -> None:
    """`cvtui run` returns once Slurm holds the run (pending), `ps` shows it with Slurm's
    reason, and `cvtui cancel` cancels the job in Slurm, not only in the catalog."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    base += ["--inventory", str(cluster.inventory_path)]
    blocker = (
        cluster.cluster.command(
            ["sbatch", "--parsable", "--gres=gpu:4", "--output=/dev/null", "--wrap", "sleep 60"]
        )
        .stdout.decode()
        .strip()
    )
    try:
        config = write_config(home.parent, params={"steps": 1})
        queued = subprocess.run(
            [*base, "run", str(config)], capture_output=True, text=True, timeout=60
        )
        assert queued.returncode == 0, queued.stderr
        catalog = Catalog.open_home(home)
        [run] = catalog.list_runs()
        assert (run["state"], run["host"]) == ("queued", "cluster")
        assert run["reason"].startswith("PENDING"), run["reason"]
        listed = subprocess.run([*base, "ps"], capture_output=True, text=True, timeout=60)
        assert "cluster" in listed.stdout and "queued" in listed.stdout
        cancelled = subprocess.run(
            [*base, "cancel", run["id"], "--wait"], capture_output=True, text=True, timeout=90
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert (catalog.get_run(run["id"]) or {})["state"] == "cancelled"
        jobs = cluster.cluster.command(
            ["squeue", "--noheader", "--states=all", "--Format=JobID:|,State:|"]
        ).stdout.decode()
        assert f"{run['slurm_job']}|CANCELLED|" in jobs
        catalog.close()
    finally:
        cluster.cluster.command(["scancel", blocker])


def test_a_run_on_the_cluster_gets_its_inputs(
    cluster: SlurmLab, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of an earlier run, pinned at submit, is staged on the login node's root (which
    the compute node shares) and linked into the job's work dir, its bytes intact."""
    import hashlib

    import cvtui

    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    api = cvtui.Lab(cluster.inventory_path, home)
    [first] = api.submit(write_config(home.parent, params={"steps": 1}))
    [ended] = api.wait([first], timeout=120)
    assert ended["state"] == "succeeded", api.logs(first)
    produced = (mirror_dir(home, first.id) / "ran.json").read_bytes()

    config = write_config(
        home.parent,
        name="use",
        command="python3 -c \"import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb')"
        '.read()).hexdigest())" {inputs.prev}',
        params={},
        inputs={"prev": f"run:{first.id}:ran.json"},
    )
    [use] = api.submit(config)
    [done] = api.wait([use], timeout=120)
    assert done["state"] == "succeeded", api.logs(use)
    assert api.logs(use).strip() == hashlib.sha256(produced).hexdigest()
    [pinned] = api.catalog.run_inputs(use.id)
    assert pinned.source == f"run:{first.id}:ran.json"
