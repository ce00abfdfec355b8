"""Checkpoint auto-resume over real sshd: a training process killed with SIGKILL is retried on
another host from its last synced checkpoint, its metrics going on from that step without a
duplicate; a low run that declared resume is preempted by a starving urgent run, saves on
SIGTERM, and resumes once the urgent run had its GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import cvtui
from cvtui.lab import Lab as LabHosts
from cvtui.lab import LabHostSpec

pytestmark = pytest.mark.sshd

TRAIN = """\
import argparse, json, os, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--resume")
a = p.parse_args()
start = 0
if a.resume:
    with open(a.resume) as f:
        start = json.load(f)["step"] + 1
    print("resumed from", os.path.relpath(a.resume), "at step", start, flush=True)
os.makedirs("checkpoints", exist_ok=True)

def save(step):
    with open("checkpoints/.partial", "w") as f:
        json.dump({"step": step}, f)
    os.replace("checkpoints/.partial", "checkpoints/step_%04d.pt" % step)

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with open("metrics.csv", "w") as log:
    log.write("step,loss,start\\n")
    for step in range(start, a.steps):
        log.write("%d,%f,%d\\n" % (step, 1.0 / (step + 1), start))
        log.flush()
        print("step", step, flush=True)
        if step % 3 == 2:
            save(step)
        if stop:
            save(step)
            print("saved at", step, "on SIGTERM", flush=True)
            sys.exit(0)
        time.sleep(0.15)
"""


def write_project(base: Path, steps: int, **settings: Any) -> Path:
    code = base / "project"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(TRAIN)
    config = {
        "name": "train",
        "command": ["python3", "train.py", "--steps", str(steps)],
        "resources": {"gpus": 1},
        "resume": {"checkpoint": "checkpoints/*.pt", "arg": "--resume {checkpoint}"},
        **settings,
    }
    path = code / f"train-{steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tune_policy(lab: LabHosts, **policy: Any) -> None:
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"].update({"interval": "0.5s", **policy})
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))


def wait_until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s")


def synced_checkpoints(api: Any, run_id: str) -> list[str]:
    return sorted(
        f["path"]
        for f in api.catalog.files_of(run_id)
        if f["path"].startswith("checkpoints/") and f["sync_status"] == "synced"
    )


def stopped_past_a_checkpoint(pid: int, work: Path) -> bool:
    """Stop the training process; True (left stopped) when its last logged step is past its
    newest checkpoint, else it goes on."""
    os.kill(pid, signal.SIGSTOP)
    lines = (work / "metrics.csv").read_text().split("\n")[1:-1]  # whole lines only
    saved = [int(p.name[len("step_") : -len(".pt")]) for p in (work / "checkpoints").glob("*.pt")]
    if lines and saved and int(lines[-1].split(",")[0]) > max(saved):
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def attempts_of(api: Any, run_id: str) -> list[dict[str, Any]]:
    return api.catalog.run_attempts(api.get(run_id))


def details(api: Any, run_id: str) -> list[str]:
    return [e["detail"] or "" for e in api.catalog.run_events(run_id)]


def test_a_run_killed_with_sigkill_resumes_on_another_host_from_its_last_checkpoint(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("gpu-02", gpus=1))
    tune_policy(lab)
    api = cvtui.Lab(lab.inventory_path, home)
    [run] = api.submit(write_project(tmp_path, 40, retries=1))
    first = wait_until(lambda: api.get(run.id)["host"], 30, "a placement")
    other = "gpu-02" if first == "gpu-01" else "gpu-01"
    # Two checkpoints are synced, training goes on: then its host is drained and the
    # training process (not its supervisor) is killed with SIGKILL.
    wait_until(lambda: len(synced_checkpoints(api, run.id)) >= 2, 60, "two synced checkpoints")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    drain = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    drain += ["--inventory", str(lab.inventory_path), "hosts", "drain", first]
    assert subprocess.run(drain, capture_output=True, env=env).returncode == 0
    run_dir = lab.host_dir(first) / "root" / "runs" / run.id
    pid = json.loads((run_dir / "status.json").read_text())["pid"]
    # Killed once it has gone past its newest checkpoint (stopped while that is checked), so
    # that attempt 2 has steps of attempt 1 to replace whatever the machine's load.
    wait_until(lambda: stopped_past_a_checkpoint(pid, run_dir / "work"), 30, "a step past")
    os.kill(pid, signal.SIGKILL)

    [last] = api.wait([run], timeout=180)
    one, two = attempts_of(api, run.id)
    assert (one["id"], one["state"], one["host"]) == (run.id, "failed", first)
    assert "signal 9" in (one["reason"] or "") or one["exit_code"] in (-9, 137)
    assert (last["id"], two["state"], two["host"], two["attempt"]) == (
        two["id"],
        "succeeded",
        other,
        2,
    )

    # The newest checkpoint attempt 1 wrote on its host is the one synced and used.
    work_one = Path(one["work_dir"])
    newest = sorted(p.name for p in (work_one / "checkpoints").glob("*.pt"))[-1]
    assert synced_checkpoints(api, run.id)[-1] == f"checkpoints/{newest}"
    step = int(newest[len("step_") : -len(".pt")])
    [resume] = api.catalog.run_inputs(two["id"])
    assert (resume.kind, resume.path) == ("resume", f"checkpoints/{newest}")
    assert resume.source == f"run:{run.id}:checkpoints/{newest}"
    staged = Path(two["work_dir"]) / "checkpoints" / newest
    assert (
        not staged.is_symlink()
        and staged.read_bytes() == (work_one / "checkpoints" / newest).read_bytes()
    )
    command = api.catalog.run_provenance(two["id"])["command"]
    assert command[-2:] == ["--resume", str(staged)]
    said = details(api, two["id"])
    assert any(d.startswith(f"attempt 2 of at most 2: {run.id} ") for d in said), said
    assert any(
        d.startswith(f"resumes from checkpoints/{newest} of attempt 1 ({run.id})") for d in said
    )
    assert api.logs(two["id"]).startswith(f"resumed from checkpoints/{newest} at step {step + 1}\n")
    # The copy it was given is no output of its own; the checkpoints it wrote are.
    assert f"checkpoints/{newest}" not in synced_checkpoints(api, two["id"])
    assert synced_checkpoints(api, two["id"])[-1] == "checkpoints/step_0038.pt"

    # Metrics go on from the checkpoint's step: attempt 2 starts after it, and the run as a
    # whole has every step once (attempt 1's steps past the checkpoint replaced).
    own = api.metric_rows(two["id"], ["start"], attempts=False)
    assert min(r.step for r in own) == step + 1 and {r.value for r in own} == {step + 1}
    merged = api.metric_rows(run, ["loss", "start"])
    loss = [r for r in merged if r.key == "loss"]
    assert [r.step for r in loss] == list(range(40))
    assert all(r.run_id == run.id for r in merged)
    starts = {r.step: r.value for r in merged if r.key == "start"}
    assert all(starts[s] == (0 if s <= step else step + 1) for s in range(40))
    assert len(api.metric_rows(one["id"], ["loss"], attempts=False)) > step + 1  # it went past


def test_an_urgent_run_preempts_a_low_run_that_resumes_after_it(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    tune_policy(lab, preempt=True, preempt_grace="10s")
    api = cvtui.Lab(lab.inventory_path, home)
    [low] = api.submit(write_project(tmp_path, 50), priority="low")
    wait_until(lambda: len(synced_checkpoints(api, low.id)) >= 1, 60, "a synced checkpoint")
    (tmp_path / "project" / "urgent.yaml").write_text("name: urgent\ncommand: echo urgent work\n")
    [urgent] = api.submit(tmp_path / "project" / "urgent.yaml", priority="urgent")
    assert urgent.host is None  # the GPU is low's: it waits, and low is asked to make way

    rows = api.wait([low, urgent], timeout=180)
    assert [r["state"] for r in rows] == ["succeeded", "succeeded"]
    one, two = attempts_of(api, low.id)
    assert one["state"] == "cancelled"
    assert one["reason"].startswith(f"cancelled by preemption for {urgent.id}")
    assert any(d.startswith(f"preempted for urgent run {urgent.id}") for d in details(api, low.id))
    saved = [line for line in api.logs(low).splitlines() if line.startswith("saved at")]
    step = int(saved[0].split()[2])  # it saved on SIGTERM, within the grace period
    [resume] = api.catalog.run_inputs(two["id"])
    assert resume.path == f"checkpoints/step_{step:04d}.pt"
    assert two["retries"] == 1 and two["attempt"] == 2  # preemption used no retry of its own
    urgent_row = api.get(urgent)
    assert urgent_row["started"] <= two["started"]  # the urgent run had the GPU first
    loss = [r for r in api.metric_rows(low, ["loss"])]
    assert [r.step for r in loss] == list(range(50))
