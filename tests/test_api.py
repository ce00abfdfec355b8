"""cvtui.Lab, the library under the CLI, as a notebook drives it: against a 2-host lab of real
sshd, submit a grid, follow it, wait, read metrics, logs, ps and hosts, run a command now and
cancel a run; errors carry the CLI's messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cvtui
from cvtui.errors import CvtuiError, UnknownHostError
from cvtui.lab import Lab as LabHosts
from cvtui.results import ExecFailed, ExecResult, MetricRow, Submitted

TRAIN = """\
import sys, time
lr = float(sys.argv[1])
print("starting", lr, flush=True)
with open("metrics.csv", "w") as f:
    f.write("step,loss\\n")
    for step in range(5):
        f.write("%d,%r\\n" % (step, lr / (step + 1)))
        f.flush()
        print("step", step, flush=True)
        time.sleep(0.05)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    (code / "sweep.yaml").write_text(
        "name: sweep\ncommand: [python3, train.py, '{lr}']\nparams: {lr: 1.0}\n"
        "resources: {gpus: 1}\n"
    )
    (code / "sleep.yaml").write_text("name: sleeper\ncommand: sleep 600\nresources: {gpus: 0}\n")
    return code


@pytest.fixture
def notebook(lab: LabHosts, home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    with cvtui.Lab(lab.inventory_path, home) as opened:
        yield opened


pytestmark = pytest.mark.sshd


def test_submit_follow_wait_and_metrics_on_two_hosts(notebook: Any, project: Path) -> None:
    lab = notebook
    first = lab.submit(project / "sweep.yaml", set={"lr": [0.5, 0.25]}, host="gpu-01")
    second = lab.submit(project / "sweep.yaml", set={"lr": [2.0, 4.0]}, host="gpu-02")
    runs = [*first, *second]
    assert all(isinstance(s, Submitted) for s in runs)
    assert {s.host for s in first} == {"gpu-01"}, first
    assert {s.host for s in second} == {"gpu-02"}, second

    events = list(lab.follow(runs, timeout=120))
    for run in runs:
        mine = [e for e in events if e.run_id == run.id]
        states = [e.state for e in mine if e.kind == "state"]
        assert states[0] == "queued" and states[-1] == "succeeded"
        assert states.index("dispatching") < states.index("running") < states.index("succeeded")
        lines = [e.line for e in mine if e.kind == "log"]
        assert lines == [f"starting {run.name[9:-1]}", *(f"step {n}" for n in range(5))]

    rows = lab.wait(runs, timeout=60)
    assert [r["id"] for r in rows] == [r.id for r in runs]
    assert {r["state"] for r in rows} == {"succeeded"}

    metrics = lab.metric_rows(runs)
    assert all(isinstance(m, MetricRow) for m in metrics)
    assert len(metrics) == 4 * 5  # every step once
    lrs = {run.id: float(run.name[len("sweep[lr=") : -1]) for run in runs}
    assert all(m.value == pytest.approx(lrs[m.run_id] / (int(m.step) + 1)) for m in metrics)
    frame = lab.metrics(runs[:1], ["loss"])
    assert frame == [m for m in metrics if m.run_id == runs[0].id]  # no pandas here: the rows

    assert lab.logs(runs[0], tail=2) == "step 3\nstep 4\n"
    listed = {r["id"]: r for r in lab.ps()}
    assert {r.id for r in runs} <= set(listed)
    assert listed[runs[2].id]["host"] == "gpu-02" and listed[runs[2].id]["state"] == "succeeded"
    hosts = {h["name"]: h for h in lab.hosts()}
    assert hosts["gpu-01"]["state"] == "healthy" and len(hosts["gpu-02"]["gpus"]) == 4


def test_exec_returns_output_and_exit_code(notebook: Any) -> None:
    lab = notebook
    done = lab.exec("gpu-01", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert isinstance(done, ExecResult)
    assert (done.exit_code, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert not done.ok
    with pytest.raises(ExecFailed, match="exited 3: err"):
        done.check()
    leased = lab.exec("gpu-02", 'echo "$CUDA_VISIBLE_DEVICES"', gpus=1, check=True)
    assert leased.ok and leased.stdout.strip().isdigit()
    # input= as subprocess.run takes it; without it the command reads end of file.
    assert lab.exec("gpu-01", "tr a-z A-Z", input="lr 0.1\n").stdout == "LR 0.1\n"
    assert lab.exec("gpu-01", "wc -c").stdout.strip() == "0"


def test_cancel_and_errors_say_what_the_cli_says(
    notebook: Any, project: Path, lab: LabHosts, home: Path
) -> None:
    lab_ = notebook
    [sleeper] = lab_.submit(project / "sleep.yaml")
    [outcome] = lab_.cancel(sleeper, grace_s=2)
    assert outcome.id == sleeper.id and outcome.outcome.startswith(("cancel", "cancelled"))
    [row] = lab_.wait([sleeper], timeout=60)
    assert row["state"] == "cancelled"

    with pytest.raises(UnknownHostError) as unknown:
        lab_.submit(project / "sweep.yaml", host="gpu-09")
    with pytest.raises(CvtuiError) as no_run:
        lab_.logs("no-such-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    base = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    base += ["--inventory", str(lab.inventory_path)]
    for args, error in (
        (["run", str(project / "sweep.yaml"), "--host", "gpu-09"], unknown.value),
        (["logs", "no-such-run"], no_run.value),
    ):
        done = subprocess.run([*base, *args], capture_output=True, text=True, env=env)
        assert done.returncode != 0
        assert done.stderr.strip() == f"cvtui: {error}"


def test_import_cvtui_is_cheap_and_lab_is_there() -> None:
    code = (
        "import json, sys, cvtui\n"
        "before = sorted(sys.modules)\n"
        "lab = cvtui.Lab\n"
        "print(json.dumps([before, sorted(sys.modules), lab.__module__]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, module = json.loads(done.stdout)
    heavy = {"asyncssh", "textual", "sqlite_utils", "yaml", "xxhash", "click"}
    assert not heavy & set(before)
    assert not {"asyncssh", "textual"} & set(after)  # the library's calls import what they use
    assert module == "cvtui.api"
