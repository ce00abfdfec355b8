"""The demo's run configs ship their own folder, wherever the checkout that holds it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvtui.demo import DEMO_PROJECT
from cvtui.repro.snapshot import take_snapshot
from cvtui.run_config import load_run_config

# A config's code dir defaults to the git work tree around it: for the demo in a checkout,
# the whole repo, without train.py at its top. Each config names its own folder.
CONFIGS = sorted(DEMO_PROJECT.glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_demo_config_ships_train_py_at_the_top(config: Path) -> None:
    specs = load_run_config(config)
    assert specs
    for spec in specs:
        assert Path(spec.code_dir) == DEMO_PROJECT.resolve()
    files = {f.path for f in take_snapshot(specs[0].code_dir).files}
    assert "train.py" in files
