"""CatalogReader: one consistent view of the catalog, and notices for what changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_lab import HOSTS, NOW, RUN_IDS, build_catalog, sample

from cvtui.catalog import Catalog
from cvtui.tui.model import CatalogReader


@pytest.fixture
def lab_catalog(tmp_path: Path) -> Catalog:
    catalog = build_catalog(tmp_path / "home")
    yield catalog
    catalog.close()


def test_view_of_the_sample_lab(lab_catalog: Catalog) -> None:
    reader = CatalogReader(lab_catalog.path, clock=lambda: NOW)
    view, notices = reader.read()
    assert notices == []  # the first read only sets the baseline
    states = {h["name"]: h["state"] for h in view.hosts}
    assert states == {
        "gpu-01": "healthy",
        "gpu-02": "healthy",
        "gpu-03": "error",
        "gpu-04": "stale",
    }
    gpu01 = view.host("gpu-01")
    assert gpu01 is not None and gpu01["tags"] == ["a100"] and gpu01["runs"] == 1
    assert gpu01["drained"] is False and len(gpu01["gpus"]) == 4
    assert [r["name"] for r in view.queue] == ["ablation[seed=2]", "bigmodel", "ablation[seed=1]"]
    assert view.queue[1]["reason"].startswith("needs 8 GPUs")
    assert [r["name"] for r in view.runs][:3] == [
        "ablation[seed=2]",
        "ablation[seed=1]",
        "bigmodel",
    ]
    assert view.run(RUN_IDS["resnet"])["progress"] == 42.0
    assert view.features.metrics
    reader.close()


def test_changed_sees_other_connections_only(lab_catalog: Catalog) -> None:
    reader = CatalogReader(lab_catalog.path, clock=lambda: NOW)
    reader.read()
    assert not reader.changed()
    with reader.use() as own:
        own.set_run_priority(RUN_IDS["big"], "low")
    assert not reader.changed()  # our own commit: the app asks for a read itself
    lab_catalog.set_run_priority(RUN_IDS["big"], "urgent")
    assert reader.changed()
    view, _ = reader.read()
    assert view.queue[0]["id"] == RUN_IDS["big"]
    reader.close()


def test_notices_for_ended_runs_and_hosts_going_down_and_back(lab_catalog: Catalog) -> None:
    reader = CatalogReader(lab_catalog.path, clock=lambda: NOW)
    reader.read()
    lab_catalog.transition_run(RUN_IDS["vit"], "succeeded", exit_code=0, ended=NOW, now=NOW)
    lab_catalog.transition_run(RUN_IDS["resnet"], "failed", exit_code=3, ended=NOW, now=NOW)
    lab_catalog.set_host_state("gpu-01", "error", "host key changed", now=NOW)
    gpu03 = next(h for h in HOSTS if h.name == "gpu-03")
    lab_catalog.record_telemetry([("gpu-03", sample(gpu03, 5000))], received=NOW)
    _, notices = reader.read()
    by_title = {n.title: n for n in notices}
    assert set(by_title) == {
        "vit-sweep[lr=0.001] finished",
        "resnet[lr=0.1] failed",
        "gpu-01 is error",
        "gpu-03 is back",
    }
    assert by_title["resnet[lr=0.1] failed"].message == "exit code 3"
    assert by_title["resnet[lr=0.1] failed"].severity == "error"
    assert by_title["gpu-01 is error"].message == "host key changed"
    assert by_title["gpu-01 is error"].bell and not by_title["gpu-03 is back"].bell
    assert reader.read()[1] == []  # each change is told once
    reader.close()
