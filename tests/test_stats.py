"""`cvtui stats` on a hand-built catalog: counts, durations, GPU-hours, the --since window."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from catalog.samples import InventoryHost, gpu, telemetry
from click.testing import CliRunner

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.stats import compute_stats, format_stats, parse_since, stats_json

NOW = 100_000.0
H = 3600.0


def add_run(
    catalog: Catalog,
    run_id: str,
    *,
    user: str,
    submitted: float,
    end_state: str | None = None,
    host: str | None = None,
    gpus: list[int] | None = None,
    started: float | None = None,
    ended: float | None = None,
) -> None:
    """Queue a run, then walk it through the states its times say, as the engine would."""
    row: dict[str, Any] = {
        "id": run_id,
        "name": f"train-{run_id}",
        "project": "vision",
        "user": user,
        "priority": "normal",
        "command": ["python", "train.py"],
        "params": {},
        "config": {},
        "spec": {},
        "resources": {"gpus": len(gpus or [])},
        "retries": 0,
        "submitted": submitted,
    }
    catalog.insert_runs([row], now=submitted)
    if started is not None:
        assert catalog.transition_run(
            run_id, "running", host=host, gpus=gpus, started=started, now=started
        )
    if end_state is not None:
        assert catalog.transition_run(run_id, end_state, ended=ended, now=ended)


@pytest.fixture
def lab_catalog(tmp_path: Path) -> Catalog:
    """Three hosts: gpu-01 with A100s, gpu-02 with RTX 3090s, gpu-03 never reported."""
    catalog = Catalog.open_home(tmp_path / "home")
    rtx = tuple(dataclasses.replace(gpu(i), name="RTX-3090-24GB") for i in range(2))
    catalog.sync_hosts([InventoryHost("gpu-01"), InventoryHost("gpu-02")])
    catalog.record_telemetry([("gpu-01", telemetry()), ("gpu-02", telemetry(gpus=rtx))])
    add_run(catalog, "a", user="alice", submitted=900, end_state="succeeded", host="gpu-01",
            gpus=[0], started=1_000, ended=1_000 + H)  # fmt: skip
    add_run(catalog, "b", user="bob", submitted=1_900, end_state="failed", host="gpu-01",
            gpus=[0, 1], started=2_000, ended=2_000 + H / 2)  # fmt: skip
    add_run(catalog, "c", user="alice", submitted=NOW - 1_900, host="gpu-02", gpus=[1],
            started=NOW - H / 2)  # fmt: skip
    add_run(catalog, "d", user="bob", submitted=NOW - 100)  # still queued
    add_run(catalog, "e", user="carol", submitted=50, end_state="cancelled", ended=60)
    add_run(catalog, "f", user="alice", submitted=4_900, end_state="succeeded", host="gpu-03",
            gpus=[0], started=5_000, ended=5_000 + H / 4)  # fmt: skip
    add_run(catalog, "g", user="dave", submitted=0, end_state="succeeded", host="gpu-01",
            gpus=[1], started=10, ended=20)  # fmt: skip
    return catalog


def test_every_run_counts_without_a_window(lab_catalog: Catalog) -> None:
    stats = compute_stats(
        lab_catalog.run_usage(None, NOW), lab_catalog.gpu_models(), since=None, now=NOW
    )
    assert stats.runs == 7
    assert stats.by_state == {
        "queued": 1, "dispatching": 0, "running": 1, "succeeded": 3, "failed": 1,
        "cancelled": 1, "lost": 0,
    }  # fmt: skip
    succeeded = stats.durations_by_state["succeeded"]
    assert (succeeded.count, succeeded.median_s) == (3, H / 4)
    assert succeeded.avg_s == pytest.approx((H + H / 4 + 10) / 3)
    assert stats.durations_by_state["failed"].avg_s == H / 2
    assert set(stats.durations_by_state) == {"succeeded", "failed"}  # c runs, e never started
    assert stats.durations.count == 4
    assert stats.durations.median_s == pytest.approx((H / 4 + H / 2) / 2)
    g = 10 / H
    assert stats.gpu_hours_by_user == pytest.approx({"alice": 1.75, "bob": 1.0, "dave": g})
    assert list(stats.gpu_hours_by_user) == ["alice", "bob", "dave"]  # largest first
    assert stats.gpu_hours_by_host == pytest.approx(
        {"gpu-01": 2 + g, "gpu-02": 0.5, "gpu-03": 0.25}
    )
    assert stats.gpu_hours_by_model == pytest.approx(
        {"A100-SXM4-80GB": 2 + g, "RTX-3090-24GB": 0.5, "?": 0.25}
    )
    assert stats.gpu_hours == pytest.approx(2.75 + g)
    assert stats.gpu_uses == {"gpu-01:0": 2, "gpu-01:1": 2, "gpu-02:1": 1, "gpu-03:0": 1}


def test_since_keeps_runs_active_in_the_window_and_clips_their_hours(lab_catalog: Catalog) -> None:
    since = 3_000.0
    stats = compute_stats(
        lab_catalog.run_usage(since, NOW), lab_catalog.gpu_models(), since=since, now=NOW
    )
    assert stats.runs == 5  # e and g ended before the window
    assert stats.by_state["cancelled"] == 0 and stats.by_state["succeeded"] == 2
    # a ran 1000..4600 and b 2000..3800: only their time after 3000 counts.
    assert stats.gpu_hours_by_user == pytest.approx(
        {"alice": 1_600 / H + 0.5 + 0.25, "bob": 2 * 800 / H}
    )
    assert stats.gpu_hours_by_model["A100-SXM4-80GB"] == pytest.approx((1_600 + 2 * 800) / H)
    assert stats.durations_by_state["succeeded"].count == 2  # whole durations, not clipped


def test_report_and_json(lab_catalog: Catalog) -> None:
    stats = compute_stats(
        lab_catalog.run_usage(None, NOW), lab_catalog.gpu_models(), since=None, now=NOW
    )
    text = format_stats(stats)
    assert text.splitlines()[0] == "7 runs in the catalog"
    assert "  succeeded       3    25m03s    15m00s" in text
    assert "  failed          1    30m00s    30m00s" in text
    assert "  cancelled       1         -         -" in text
    assert "GPU-hours: 2.75" in text
    assert "    RTX-3090-24GB       0.50" in text
    assert "  gpu-01:0      2" in text
    data = stats_json(stats)
    assert json.loads(json.dumps(data)) == data
    assert data["durations"]["all"]["count"] == 4
    assert data["gpu_hours"]["by_host"]["gpu-03"] == pytest.approx(0.25)
    assert data["gpu_uses"]["gpu-02:1"] == 1


def test_cli_stats_reads_the_catalog(lab_catalog: Catalog, tmp_path: Path) -> None:
    lab_catalog.close()
    runner = CliRunner()
    home = str(tmp_path / "home")
    done = runner.invoke(main, ["--home", home, "stats", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["runs"] == 7 and data["since"] is None
    # The runs of this catalog are from 1970: a week back holds only the active ones.
    recent = runner.invoke(main, ["--home", home, "stats", "--json", "--since", "7d"])
    assert json.loads(recent.output)["runs"] == 2
    bad = runner.invoke(main, ["--home", home, "stats", "--since", "7 days"])
    assert bad.exit_code == 2 and "expected a span such as 12h, 7d or 2w" in bad.output


def test_parse_since() -> None:
    assert [parse_since(t) for t in ("90s", "30m", "12h", "7d", "2w", "1.5h")] == [
        90, 1_800, 43_200, 604_800, 1_209_600, 5_400,
    ]  # fmt: skip
    for bad in ("7", "0d", "-1d", "7days", ""):
        with pytest.raises(ValueError, match="expected a span"):
            parse_since(bad)


def test_energy_idle_and_host_usage_from_the_catalog(tmp_path: Path) -> None:
    from catalog.samples import InventoryHost, telemetry

    from cvtui.history_policy import DEFAULT_HISTORY
    from cvtui.stats import format_usage, read_usage_stats, usage_json

    hour = 1_700_002_800.0  # a whole hour, in unix seconds
    with Catalog(tmp_path / "catalog.db") as catalog:
        catalog.sync_hosts([InventoryHost("gpu-01")])
        # An hour at 1 Hz of 2 GPUs at 100 W and 101 W, then tiered.
        for first in range(0, 3600, 5):
            batch = [("gpu-01", telemetry(float(s))) for s in range(first, first + 5)]
            catalog.record_telemetry(batch, received=hour + first + 4)
        catalog.compact_history(hour + 2 * 3600, DEFAULT_HISTORY)
        catalog.record_usage(
            energy_by_user={(hour, "alice", False): 7.2e6, (hour, "bob", True): 3.6e6},
            energy_by_run={"r1": (7.2e6, False)},
            now=hour + 3600,
        )
        episode = catalog.open_idle_episode(
            "gpu-01", 1, user="bob", run_id=None, simulated=True, since=hour, until=hour
        )
        catalog.record_usage(idle=[(episode, hour + 1800, False)], now=hour + 3600)
        usage = read_usage_stats(catalog, None, hour + 3 * 3600)
        assert catalog.run_energy(["r1", "r2"]) == {"r1": (2.0, False)}
        windowed = read_usage_stats(catalog, hour + 1200, hour + 3 * 3600)
    assert usage.energy_kwh_by_user == {"alice": 2.0}
    assert usage.simulated_kwh_by_user == {"bob": 1.0}
    assert usage.idle_gpu_hours_by_user == {"bob": 0.5}
    assert windowed.idle_gpu_hours_by_user == {"bob": pytest.approx(600 / 3600)}
    host = usage.hosts["gpu-01"]
    assert host["util_mean"] == pytest.approx(50.0)
    assert host["gpu_hours"] == pytest.approx(2.0, rel=0.01)
    assert host["energy_kwh"] == pytest.approx(0.201, rel=0.01)  # (100 W + 101 W) x 1 h
    assert usage.telemetry_step_s == 3600.0
    data = usage_json(usage)
    assert json.loads(json.dumps(data)) == data
    assert data["energy_kwh"]["total"] == 2.0
    assert data["energy_kwh"]["simulated"] == {"total": 1.0, "by_user": {"bob": 1.0}}
    assert data["idle_gpu_hours"] == {"total": 0.5, "by_user": {"bob": 0.5}}
    text = format_usage(usage)
    assert "Energy (GPU power per user): 2.00 kWh" in text
    assert "Energy on simulated GPUs (not real): 1.00 kWh" in text
    assert "Idle-held GPU-hours: 0.50" in text
