"""First contact: a lab's research code, in the shape of a public framework, runs unchanged.

The project here is our own code shaped like CVLab-Kit: `python main.py --config X` reads a
YAML config whose lists are grid axes (it expands them itself and refuses to run more than
one), needs a package that only its venv has, reads ./data, writes ./logs/*.csv and
./checkpoints/*.pt, and draws a progress bar that starts again every epoch. It is submitted
as it is, over a real sshd, with the run environment and data links set in the inventory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import metric_count

from cvtui.catalog import Catalog
from cvtui.lab import Lab, LabHostSpec
from cvtui.repro.blobstore import BlobStore

pytestmark = pytest.mark.sshd

# The framework's rules, as its main.py applies them: every list reached through mappings is
# an axis, an empty list is one value, a "[...]" string is a data list, a tuple is a value.
MAIN = r"""
import argparse, ast, itertools, json, os, sys, time
import yaml
import labdeps  # only the project's venv has it


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = prefix + "." + k if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def expand(config):
    flat = flatten(config)
    for k, v in list(flat.items()):
        if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
            flat[k] = ("data", ast.literal_eval(v))
    axes = [k for k, v in flat.items() if isinstance(v, list)]
    runs = []
    for combo in itertools.product(*[flat[k] or [flat[k]] for k in axes]):
        one = dict(flat)
        one.update(zip(axes, combo))
        runs.append({k: v[1] if isinstance(v, tuple) and v[:1] == ("data",) else v
                     for k, v in one.items()})
    return runs


p = argparse.ArgumentParser()
p.add_argument("--config", required=True)
args = p.parse_args()
with open(args.config) as f:
    configs = expand(yaml.load(f, Loader=yaml.FullLoader))
print("Grid search: %d configuration(s) found." % len(configs), flush=True)
if len(configs) != 1:
    sys.exit(2)
cfg = configs[0]
assert isinstance(cfg["mean"], tuple), cfg["mean"]
samples = open(os.path.join(cfg["data_root"], "train.txt")).read().split()
os.makedirs(cfg["log_dir"], exist_ok=True)
os.makedirs("checkpoints", exist_ok=True)
with open(os.path.join(cfg["log_dir"], "metrics.csv"), "w") as log:
    log.write("step,loss,acc\n")
    for epoch in range(cfg["epochs"]):
        for i in range(1, 11):
            pct = i * 10
            sys.stderr.write("\rEpoch %d/%d: %3d%%|%-10s| %d/10 [00:00<00:00]"
                             % (epoch + 1, cfg["epochs"], pct, "#" * (pct // 10), i))
            sys.stderr.flush()
            time.sleep(0.01)
        sys.stderr.write("\n")
        loss = cfg["optimizer.lr"] / (epoch + 1) + 0.01 * cfg["model.depth"]
        log.write("%d,%f,%f\n" % (epoch, loss, 0.5 + 0.1 * epoch))
        log.flush()
with open("checkpoints/last.pt", "wb") as f:
    f.write(os.urandom(4096))
print(json.dumps({"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "labdeps": labdeps.VERSION,
                  "python": sys.executable, "samples": len(samples)}))
"""

# A stock-shaped experiment config: the framework's own project/name/env keys, a tuple, a
# nested axis, a list of lists, a "[...]" data list, an empty list, relative data and log dirs.
CONFIG = """\
project: cifar_fake
name: supervised
env: {seed: 3}
model: {name: resnet, depth: [18, 34]}
optimizer: {name: sgd, lr: [0.1, 0.01]}
milestones: [[2, 4]]
layers: "[64, 128]"
augment: []
mean: !!python/tuple [0.5, 0.5, 0.5]
epochs: 3
data_root: ./data/mini
log_dir: ./logs/supervised
"""


def make_venv(base: Path) -> Path:
    """A venv with a package the system python lacks (labdeps) and PyYAML, made offline."""
    venv = base / "venvs" / "cv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shutil.copytree(Path(yaml.__file__).parent, site / "yaml")
    (site / "labdeps").mkdir()
    (site / "labdeps" / "__init__.py").write_text('VERSION = "1.2.3"\n')
    info = site / "labdeps-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labdeps\nVersion: 1.2.3\n")
    return venv


def make_project(base: Path) -> Path:
    project = base / "project"
    (project / "config").mkdir(parents=True)
    (project / "main.py").write_text(MAIN)
    (project / "config" / "supervised.yaml").write_text(CONFIG)
    for n in range(30):  # the framework ships many configs; none is an output of a run
        (project / "config" / f"other_{n}.yaml").write_text(f"epochs: {n}\n")
    (project / ".gitignore").write_text("data/\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    return project


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def set_hosts(lab: Lab, **top: Any) -> None:
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["interval"] = "0.5s"
    for name, extra in top.pop("hosts", {}).items():
        document["hosts"][name].update(extra)
    document.update(top)
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_a_framework_project_runs_unchanged_in_its_venv(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    venv = make_venv(tmp_path)
    project = make_project(tmp_path)
    datasets = tmp_path / "datasets"
    (datasets / "mini").mkdir(parents=True)
    (datasets / "mini" / "train.txt").write_text("a b c d e\n")
    set_hosts(
        lab,
        command_template="python main.py --config {config_file}",
        hosts={
            "gpu-01": {
                "run_env": {"setup": f"source {venv}/bin/activate"},
                "links": {"data": str(datasets)},
            }
        },
    )
    config = project / "config" / "supervised.yaml"

    dry = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert len(planned["runs"]) == 4 and {r["gpus"] for r in planned["runs"]} == {1}
    assert planned["code"][0]["dir"] == str(project)  # the work tree, not config/
    assert planned["warnings"] == []

    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    with Catalog.open_home(home) as catalog:
        runs = [r for r in catalog.list_runs() if r["name"].startswith("supervised")]
        assert sorted(r["state"] for r in runs) == ["succeeded"] * 4
        gpus = {(g["index"]): g["uuid"] for g in catalog.hosts_report(names=["gpu-01"])[0]["gpus"]}
        rows = {r["id"]: catalog.run_provenance(r["id"]) for r in runs}
        for run in runs:
            mirror = home / "runs" / run["id"]
            said = json.loads((mirror / ".cvtui" / "output.log").read_text().splitlines()[-1])
            # The run saw its leased GPU by UUID, used the venv, and found the linked data.
            assert said["gpus"] == gpus[run["gpus"][0]]
            assert said["labdeps"] == "1.2.3" and said["samples"] == 5
            assert Path(said["python"]).parent == venv / "bin"
            assert run["progress"] == 100.0
            # Metrics and the checkpoint came back; the shipped configs did not.
            assert metric_count(catalog, run["id"], "logs/supervised/metrics.csv") == 3 * 2
            remote = Path(run["work_dir"])
            assert (mirror / "checkpoints" / "last.pt").read_bytes() == (
                remote / "checkpoints" / "last.pt"
            ).read_bytes()
            files = {f["path"] for f in catalog.files_of(run["id"])}
            assert not any(path.startswith(("config/", "data")) for path in files), files
            row = rows[run["id"]]
            assert row is not None
            assert Path(row["python_executable"]).parent == venv / "bin"
            packages = BlobStore.in_home(home).read(row["pip_freeze_hash"]).decode()
            assert "labdeps==1.2.3" in packages.splitlines()
            assert row["git_dirty"] == 0
            assert [link["name"] for link in row["links"]] == ["data"]
            assert row["links"][0]["target"] == str(datasets)
            assert row["gpu_uuids"] == [gpus[run["gpus"][0]]]
        # The grid the framework itself would run, one point per run.
        points = {(r["params"]["model.depth"], r["params"]["optimizer.lr"]) for r in runs}
        assert points == {(18, 0.1), (18, 0.01), (34, 0.1), (34, 0.01)}
        assert all(r["config"]["project"] == "cifar_fake" for r in runs)  # not taken by cvtui


def test_a_failing_setup_and_a_missing_link_fail_clearly(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.yaml").write_text(
        "name: setup\ncommand: echo ran\nrun_env:\n  setup: |\n"
        "    echo preparing\n    echo 'no such env' >&2; exit 1\n"
    )
    (code / "link.yaml").write_text(
        f"name: link\ncommand: echo ran\nlinks: {{data: {tmp_path / 'nowhere'}}}\n"
    )
    set_hosts(lab)
    failed = cvtui(lab, home, "run", str(code / "run.yaml"), "--follow")
    assert failed.returncode != 0
    assert "preparing" in failed.stdout and "no such env" in failed.stdout
    # The command's own line; a run id printed there may hold "ran" by chance.
    assert "ran" not in failed.stdout.splitlines()
    missing = cvtui(lab, home, "run", str(code / "link.yaml"), "--follow")
    assert missing.returncode != 0
    with Catalog.open_home(home) as catalog:
        by_name = {r["name"]: r for r in catalog.list_runs()}
    assert by_name["setup"]["state"] == "failed"
    assert by_name["setup"]["reason"].startswith("run environment setup failed")
    link = by_name["link"]
    assert link["state"] == "failed" and link["started"] is None
    assert f"link data -> {tmp_path / 'nowhere'}: no such file or directory" in link["reason"]
    assert "gpu-01" in link["reason"]
    # Nothing of it exists on the host.
    assert not (lab.host_dir("gpu-01") / "root" / "runs" / link["id"]).exists()


def test_a_run_sees_exactly_its_leased_gpus(lab_factory: Any, home: Path, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=4))
    set_hosts(lab)
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.yaml").write_text(
        "name: pair\nresources: {gpus: 2}\n"
        'command: echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $CVTUI_GPUS"\n'
    )
    done = cvtui(lab, home, "run", str(code / "run.yaml"), "--follow")
    assert done.returncode == 0, done.stderr
    seen, order, indexes = done.stdout.strip().splitlines()[-1].split()
    with Catalog.open_home(home) as catalog:
        (run,) = catalog.list_runs()
        gpus = catalog.hosts_report(names=["gpu-01"])[0]["gpus"]
    uuid = {g["index"]: g["uuid"] for g in gpus}
    assert len(run["gpus"]) == 2 and indexes == ",".join(map(str, run["gpus"]))
    assert seen.split(",") == [uuid[i] for i in run["gpus"]]  # those GPUs, no other
    assert order == "PCI_BUS_ID"
    # Distinct PCI bus ids too, as NVML would give.
    buses = [g["pci_bus_id"] for g in gpus]
    assert len(set(buses)) == 4 and all(b.startswith("00000000:") for b in buses)


def test_a_run_that_wrote_outside_its_work_dir_says_so(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    set_hosts(lab)
    code = tmp_path / "code"
    code.mkdir()
    elsewhere = tmp_path / "abs_logs"
    (code / "run.yaml").write_text(
        f"name: away\ncommand: mkdir -p {elsewhere} && echo 'step,loss' > {elsewhere}/m.csv\n"
    )
    done = cvtui(lab, home, "run", str(code / "run.yaml"), "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    with Catalog.open_home(home) as catalog:
        (run,) = catalog.list_runs()
    files = cvtui(lab, home, "files", run["id"])
    assert files.returncode == 0, files.stderr
    assert "produced no output file: none of *.csv, *.jsonl, *.yaml" in files.stdout
    assert "absolute log_dir" in files.stdout
    metrics = cvtui(lab, home, "metrics", run["id"])
    assert metrics.returncode == 0
    assert "produced no output file" in metrics.stdout and "yet" not in metrics.stdout
