"""CVLab-Kit style configs (no `command:`) run with the inventory's command_template."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvtui.errors import InventoryError
from cvtui.inventory import parse_inventory
from cvtui.submit import prepare_runs

INVENTORY = """\
command_template: python main.py --config {config_file}
hosts:
  gpu-01: {address: 10.0.0.1}
"""


def test_experiment_config_takes_the_inventory_template(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("model: {name: resnet18, lr: [0.1, 0.01]}\nepochs: 3\n")
    specs = prepare_runs(config, parse_inventory(INVENTORY))
    assert len(specs) == 2
    assert [s.config["model"]["lr"] for s in specs] == [0.1, 0.01]
    rendered = specs[0].render_command(run_id="r1", run_dir="/runs/r1/work", gpus=[0])
    assert rendered == "python main.py --config /runs/r1/config.yaml"


def test_template_without_config_file_is_refused_with_its_location() -> None:
    text = "command_template: python main.py\nhosts:\n  gpu-01: {address: a}\n"
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "lab.yaml")
    assert str(caught.value).startswith("lab.yaml:1:19: command_template: expected a command")
