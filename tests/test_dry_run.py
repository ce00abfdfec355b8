"""`cvtui run --dry-run`: GPU counts, JSON, placement wording, and a script that is not shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from catalog.samples import InventoryHost, telemetry

from cvtui.catalog import Catalog

INVENTORY = """\
policy: {interval: 1s, stale_after: 5s, disconnected_after: 30s}
hosts:
  gpu-01: {address: 127.0.0.1}
"""


def cvtui(home: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory", str(inventory)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, env=env)


def test_dry_run_json_says_gpus_stale_hosts_and_missing_scripts(tmp_path: Path, home: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "config" / "train.py").write_text("print(1)\n")
    config = project / "config" / "sweep.yaml"
    config.write_text(
        "command: python main.py --lr {lr} && bash scripts/after.sh\n"
        "params: {lr: [0.1, 0.01]}\nresources: {host: gpu-01}\n"
    )
    with Catalog.open_home(home) as catalog:  # gpu-01 last seen 10 s ago: stale
        catalog.sync_hosts([InventoryHost("gpu-01")])
        catalog.record_telemetry([("gpu-01", telemetry())], received=time.time() - 10)

    done = cvtui(home, inventory, "run", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [run["gpus"] for run in plan["runs"]] == [1, 1]  # no resources.gpus: one GPU
    assert plan["runs"][0]["waits"] == "host gpu-01 is stale"
    assert plan["runs"][1]["command"] == "python main.py --lr 0.01 && bash scripts/after.sh"
    assert plan["code"][0]["dir"] == str((project / "config").resolve())  # no work tree here
    assert plan["warnings"] == [
        f"the command runs main.py, which is not in the code snapshot of {project / 'config'} "
        "(set `code:` to the folder that holds it, or check `exclude:`)",
        f"the command runs scripts/after.sh, which is not in the code snapshot of "
        f"{project / 'config'} (set `code:` to the folder that holds it, or check `exclude:`)",
    ]

    text = cvtui(home, inventory, "run", str(config), "--dry-run", "--gpus", "0")
    assert text.returncode == 0, text.stderr
    assert "resources: 0 GPUs (CPU only)" in text.stdout
    assert "warning: the command runs main.py" in text.stdout


def test_dry_run_shows_where_inputs_go(tmp_path: Path, home: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    project = tmp_path / "project"
    project.mkdir()
    (project / "tune.py").write_text("print(1)\n")
    config = project / "tune.yaml"
    config.write_text(
        "command: [python, tune.py, --init, '{inputs.init}']\ninputs: {init: model:resnet}\n"
    )
    done = cvtui(home, inventory, "run", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)["runs"]
    assert run["command"] == ["python", "tune.py", "--init", "<inputs.init>"]


def test_a_grid_that_repeats_a_value_is_flagged_and_named_axes_are_shown(
    tmp_path: Path, home: Path
) -> None:
    """A LightningCLI-shaped config run under CVLab-Kit's rules: the patch size [96, 96, 96]
    becomes an axis of three equal values, so two thirds of the runs are copies."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    (tmp_path / "main.py").write_text("print(1)\n")
    config = tmp_path / "btcv.yaml"
    text = (
        "model:\n  roi_size: [96, 96, 96]\n  learning_rate: [1.0e-3, 3.0e-4]\n"
        "cvtui:\n  command: python main.py fit --config {config_file}\n"
    )
    config.write_text(text)
    shown = cvtui(home, inventory, "run", str(config), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("6 runs (dry run")
    assert "  axes: model.roi_size, model.learning_rate\n" in shown.stdout
    assert (
        "warning: 4 of the 6 runs are copies of another (model.roi_size: [96, 96, 96])"
        in shown.stdout
    )
    # Naming the axes: the patch size is data, two runs, no warning.
    config.write_text(text + "  axes: [model.learning_rate]\n")
    plan = json.loads(cvtui(home, inventory, "run", str(config), "--dry-run", "--json").stdout)
    assert len(plan["runs"]) == 2 and plan["axes"] == ["model.learning_rate"]
    assert plan["warnings"] == []
