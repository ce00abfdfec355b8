"""A run's end is the supervisor's record of its command's exit, whatever the command writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from cvtui.catalog import Catalog
from cvtui.lab import Lab

pytestmark = pytest.mark.sshd

# A training script that writes files named like cvtui's own, then fails.
LIAR = r"""
import json, sys
config = open(sys.argv[1]).read()
with open("status.json", "w") as f:
    json.dump({"state": "succeeded", "exit_code": 0, "writer": "cvtui-supervisor"}, f)
with open("config.yaml", "w") as f:
    f.write("mine: true\n")
with open("output.log", "w") as f:
    f.write("the script's own log\n")
print("read", config.strip())
sys.exit(3)
"""


def test_files_named_like_cvtuis_do_not_change_how_a_run_ended(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    from test_first_contact import cvtui, set_hosts

    set_hosts(lab)
    code = tmp_path / "code"
    code.mkdir()
    (code / "liar.py").write_text(LIAR)
    (code / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "liar",
                "command": "python3 liar.py {config_file}",
                "params": {"lr": 0.5},
                "outputs": ["*.yaml", "*.json", "*.log"],
                "resources": {"gpus": 0},
            }
        )
    )
    done = cvtui(lab, home, "run", str(code / "run.yaml"), "--follow")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "params:\n  lr: 0.5\n" in done.stdout  # {config_file}: the resolved config, still
    with Catalog.open_home(home) as catalog:
        (run,) = catalog.list_runs()
        assert (run["state"], run["exit_code"], run["final_by"]) == ("failed", 3, "supervisor")
        files = {f["path"] for f in catalog.files_of(run["id"])}
    # The script's files are outputs like any other; cvtui's sit beside them.
    assert {"status.json", "config.yaml", "output.log", ".cvtui/output.log"} <= files
    mirror = home / "runs" / run["id"]
    assert (mirror / "output.log").read_text() == "the script's own log\n"
    assert json.loads((mirror / "status.json").read_text())["state"] == "succeeded"
    assert "read" in (mirror / ".cvtui" / "output.log").read_text()


async def test_the_supervisors_record_corrects_an_inferred_end(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    from support import running, wait_for

    from cvtui.engine.engine import Engine
    from cvtui.inventory import load_inventory
    from cvtui.submit import prepare_runs, submit

    code = tmp_path / "code"
    code.mkdir()
    gate = tmp_path / "gate"
    (code / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "late",
                "command": [
                    sys.executable,
                    "-c",
                    f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
                    "raise SystemExit(3)",
                ],
                "resources": {"gpus": 0},
            }
        )
    )
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, prepare_runs(code / "run.yaml", inventory))
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "running", 20)
            # Something concluded the run was lost (a host that did not answer, say) ...
            assert catalog.transition_run(
                run_id, "lost", expect=["running"], reason="taken for lost", final_by="agent"
            )
            gate.write_text("")  # ... while it ran on, and now ends with exit code 3.
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "failed", 20)
        run = catalog.get_run(run_id)
        events = catalog.run_events(run_id)
    assert (run["exit_code"], run["final_by"], run["reason"]) == (3, "supervisor", "exit code 3")
    assert [e["state"] for e in events][-2:] == ["lost", "failed"]
    assert events[-1]["detail"].startswith("corrected from lost")
