"""Run inputs over real sshd: a registered model and another run's file given to a run, stored
on the host once under their content hash (verified there), reproduced with the same bytes after
the model name moved on; `cvtui infer` with a model; corrupt or unknown inputs refused."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import xxhash

import cvtui
from cvtui.lab import Lab as LabHosts
from cvtui.lab import LabHostSpec
from cvtui.repro.blobstore import BlobStore
from cvtui.repro.inputs import InputError

pytestmark = pytest.mark.sshd

TRAIN = """\
import os, sys
os.makedirs("checkpoints", exist_ok=True)
with open("checkpoints/best.pt", "wb") as f:
    f.write(os.urandom(int(sys.argv[1])))
with open("vocab.json", "w") as f:
    f.write('{"cat": 1}')
"""
USE = """\
import hashlib, os, sys
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    print(os.path.relpath(path), os.path.islink(path), hashlib.sha256(data).hexdigest())
"""
PREDICT = """\
import argparse, hashlib
p = argparse.ArgumentParser()
p.add_argument("--weights")
p.add_argument("--exit", type=int, default=0)
a = p.parse_args()
print("prediction from", hashlib.sha256(open(a.weights, "rb").read()).hexdigest(), flush=True)
raise SystemExit(a.exit)
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    (code / "use.py").write_text(USE)
    (code / "predict.py").write_text(PREDICT)
    (code / "train.yaml").write_text(
        "name: train\ncommand: [python3, train.py, '{size}']\nparams: {size: 300000}\n"
        "resources: {gpus: 0}\noutputs: ['*.pt', '*.json']\n"
    )
    return code


def cli(lab: LabHosts, home: Path, *args: str, cwd: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env["CVTUI_ENGINE_IDLE_EXIT"] = "60"
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=180)


def test_inputs_are_pinned_verified_on_the_host_and_reproduced_with_the_same_bytes(
    lab_factory: Any, home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    api = cvtui.Lab(lab.inventory_path, home)
    [first] = api.submit(project / "train.yaml")
    [second] = api.submit(project / "train.yaml", set={"size": 5000})
    api.wait([first, second], timeout=120)
    registered = cli(
        lab, home, "models", "register", first.id, "checkpoints/best.pt", "--name", "m"
    )
    assert registered.returncode == 0, registered.stderr
    best = home / "runs" / first.id / "checkpoints" / "best.pt"
    vocab = home / "runs" / first.id / "vocab.json"

    (project / "use.yaml").write_text(
        "name: use\ncommand: [python3, use.py, '{inputs.ckpt}', '{inputs.vocab}']\n"
        f"inputs: {{ckpt: 'model:m', vocab: 'run:{first.id[:14]}:vocab.json'}}\n"
        "resources: {gpus: 0}\n"
    )
    [use] = api.submit(project / "use.yaml")
    [done] = api.wait([use], timeout=120)
    assert done["state"] == "succeeded", api.logs(use)
    said = api.logs(use).splitlines()
    assert said == [
        f"inputs/ckpt/best.pt True {sha(best)}",
        f"inputs/vocab/vocab.json True {sha(vocab)}",
    ]
    # On the host: one read-only copy per content, named by its xxh3_128, the bytes intact.
    pinned = {i.name: i for i in api.catalog.run_inputs(use.id)}
    assert (
        pinned["ckpt"].source == "model:m"
        and pinned["vocab"].source == f"run:{first.id}:vocab.json"
    )
    stored = lab.host_dir("gpu-01") / "root" / "inputs"
    for item in pinned.values():
        on_host = stored / item.hash
        assert xxhash.xxh3_128_hexdigest(on_host.read_bytes()) == item.hash
        assert stat.S_IMODE(on_host.stat().st_mode) == 0o400
    assert sorted(p.name for p in stored.iterdir()) == sorted(i.hash for i in pinned.values())

    # The name moves on; a reproduction still gets the bytes the run had.
    moved = cli(
        lab, home, "models", "register", second.id, "checkpoints/best.pt", "--name", "m", "--force"
    )
    assert moved.returncode == 0, moved.stderr
    plan = cli(lab, home, "reproduce", use.id, "--dry-run")
    assert f"input     ckpt: model:m -> inputs/ckpt/best.pt  blob {pinned['ckpt'].hash}" in (
        plan.stdout
    )
    again = cli(lab, home, "reproduce", use.id, "--follow")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"inputs/ckpt/best.pt True {sha(best)}" in again.stdout

    # An inference with the model as it is now: streamed, its exit code returned.
    newer = home / "runs" / second.id / "checkpoints" / "best.pt"
    inferred = cli(
        lab, home, "infer", "m", "--host", "gpu-01", "--gpus", "0", "--",
        "python3", "predict.py", "--weights", "{model}", "--exit", "3", cwd=project,
    )  # fmt: skip
    assert inferred.returncode == 3, inferred.stderr
    assert inferred.stdout == f"prediction from {sha(newer)}\n"
    result = api.infer("m", ["python3", "predict.py", "--weights", "{model}"], host="gpu-01",
                       gpus=0, code=project)  # fmt: skip
    assert result.ok and result.exit_code == 0
    assert result.output == f"prediction from {sha(newer)}\n"
    assert api.get(result.run_id)["name"] == "infer[m]"


def test_unknown_and_corrupt_inputs_are_refused(
    lab_factory: Any, home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    api = cvtui.Lab(lab.inventory_path, home)
    (project / "nope.yaml").write_text("command: echo {inputs.w}\ninputs: {w: model:nope}\n")
    with pytest.raises(InputError, match="input model:nope: no model named 'nope'"):
        api.submit(project / "nope.yaml")
    assert api.ps(all=True) == []  # nothing queued

    [train] = api.submit(project / "train.yaml")
    api.wait([train], timeout=120)
    assert (
        cli(
            lab, home, "models", "register", train.id, "checkpoints/best.pt", "--name", "m"
        ).returncode
        == 0
    )
    blobs = BlobStore.in_home(home)
    [blob] = [h for h in blobs.hashes() if (blobs.path(h).stat().st_size == 300000)]
    path = blobs.path(blob)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    (project / "use.yaml").write_text("command: echo {inputs.w}\ninputs: {w: model:m}\n")
    [use] = api.submit(project / "use.yaml")
    [row] = api.wait([use], timeout=120)
    assert row["state"] == "failed" and row["started"] is None
    assert f"blob {blob}" in row["reason"] and "corrupt" in row["reason"]
    assert not (lab.host_dir("gpu-01") / "root" / "inputs" / blob).exists()  # never sent
    assert [i.hash for i in api.catalog.run_inputs(use.id)] == [blob]
