"""cvtui.actions: what the CLI and the dashboard do to runs, on a real catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui.sample_lab import NOW, RUN_IDS, build_catalog, inventory

from cvtui.actions import cancel_runs, plan_submission, set_priority, shift_priority, submit_runs
from cvtui.catalog import Catalog
from cvtui.errors import CvtuiError


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = build_catalog(tmp_path / "home")
    yield catalog
    catalog.close()


def test_cancel_ends_queued_runs_and_asks_the_engine_for_placed_ones(catalog: Catalog) -> None:
    runs = [catalog.get_run(RUN_IDS[k]) for k in ("big", "resnet", "baseline", "big")]
    outcomes = cancel_runs(catalog, runs, by="alice", grace_s=2.0, now=NOW)
    assert [(o.name, o.outcome) for o in outcomes] == [
        ("bigmodel", "cancelled (was queued)"),
        ("resnet[lr=0.1]", "cancel requested"),
        ("baseline", "already succeeded"),
    ]  # the run named twice is cancelled once
    assert catalog.get_run(RUN_IDS["big"])["state"] == "cancelled"
    assert catalog.run_events(RUN_IDS["big"])[-1]["detail"] == "by alice"
    assert catalog.get_run(RUN_IDS["resnet"])["state"] == "running"  # the engine ends it
    [command] = catalog.pending_commands()
    assert command["id"] == outcomes[1].command_id
    assert command["kind"] == "cancel"
    assert command["args"] == {"run_id": RUN_IDS["resnet"], "grace": 2.0, "by": "alice"}


def test_priority_changes_only_while_queued(catalog: Catalog) -> None:
    set_priority(catalog, RUN_IDS["ablation-low"], "high")
    assert catalog.get_run(RUN_IDS["ablation-low"])["priority"] == "high"
    assert shift_priority(catalog, RUN_IDS["ablation-low"], 1) == "urgent"
    assert shift_priority(catalog, RUN_IDS["ablation-low"], 5) == "urgent"  # stays at the top
    assert shift_priority(catalog, RUN_IDS["ablation-low"], -9) == "low"
    assert [r["id"] for r in catalog.queued_runs()][-1] == RUN_IDS["ablation-low"]
    with pytest.raises(CvtuiError, match="running, not queued"):
        set_priority(catalog, RUN_IDS["resnet"], "urgent")
    with pytest.raises(CvtuiError, match="unknown priority 'asap'"):
        set_priority(catalog, RUN_IDS["big"], "asap")


def test_plan_then_submit_a_config(catalog: Catalog, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    config = project / "sweep.yaml"
    config.write_text(
        "name: sweep\ncommand: python3 train.py --lr {lr}\nparams: {lr: [0.1, 0.01]}\n"
        "resources: {gpus: 1}\n"
    )
    plan = plan_submission(catalog, inventory(), config, priority="high")
    assert [s.name for s in plan.specs] == ["sweep[lr=0.1]", "sweep[lr=0.01]"]
    assert plan.dry_run.startswith("2 runs (dry run: nothing started")
    assert "python3 train.py --lr 0.01" in plan.dry_run
    before = len(catalog.queued_runs())
    ids = submit_runs(catalog, tmp_path / "home", plan)
    queued = {r["id"]: r for r in catalog.queued_runs()}
    assert len(queued) == before + 2 and set(ids) <= set(queued)
    assert {queued[i]["priority"] for i in ids} == {"high"}
    with pytest.raises(CvtuiError, match="no run config at"):
        plan_submission(catalog, inventory(), tmp_path / "missing.yaml")
