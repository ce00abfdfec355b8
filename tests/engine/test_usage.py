"""UsageTracker on a real catalog: energy shared among holders, idle-held episodes, gaps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from catalog.samples import GIB, InventoryHost, gpu, telemetry

from cvtui.catalog import Catalog
from cvtui.engine.usage import IdleGpu, UsageTracker
from cvtui.inventory import Policy
from remote_agent.protocol import GpuProcess

T0 = 1_700_002_800.0  # a whole hour


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog.db")
    cat.sync_hosts([InventoryHost("gpu-01")])
    cat.insert_runs(
        [
            {
                "id": "run-1",
                "name": "train",
                "project": "p",
                "user": "alice",
                "priority": "normal",
                "command": "python3 train.py",
                "params": {},
                "config": {},
                "spec": {},
                "resources": {},
                "retries": 0,
            }
        ]
    )
    cat.transition_run("run-1", "running", expect=["queued"], host="gpu-01", gpus=[0])
    return cat


def sample(util0: float, util1: float, *, foreign: bool = True, backend: str = "simulated"):  # type: ignore[no-untyped-def]
    ours = GpuProcess(11, "svc", "python3 train.py", None, 4 * GIB, "run-1")
    bob = GpuProcess(22, "bob", "jupyter", None, 2 * GIB, None)
    carol = GpuProcess(33, "carol", "python", None, 1 * GIB, None)
    gpus = (
        replace(gpu(0, util=util0, mem_used=4 * GIB), power=100.0, processes=(ours,)),
        replace(
            gpu(1, util=util1, mem_used=3 * GIB),
            power=60.0,
            processes=(bob, carol) if foreign else (),
        ),
    )
    return telemetry(gpus=gpus, backend=backend)


def test_energy_goes_to_holders_and_gaps_count_nothing(catalog: Catalog) -> None:
    idle: list[IdleGpu] = []
    tracker = UsageTracker(catalog, Policy, idle.append)
    for second in range(11):  # 10 intervals of 1 s
        tracker.observe("gpu-01", sample(90.0, 90.0), T0 + second)
    tracker.observe("gpu-01", sample(90.0, 90.0), T0 + 100)  # after a gap: 3 s at most
    tracker.flush(now=T0 + 101)
    # GPU 0: 100 W x 13 s for run-1 (alice, from the run, not the process owner svc);
    # GPU 1: 60 W x 13 s split between bob and carol.
    assert catalog.run_energy(["run-1"]) == {"run-1": (pytest.approx(1300 / 3.6e6), True)}
    by_user = catalog.energy_by_user(None, T0 + 3600)
    assert by_user == {
        ("alice", True): pytest.approx(1300 / 3.6e6),
        ("bob", True): pytest.approx(390 / 3.6e6),
        ("carol", True): pytest.approx(390 / 3.6e6),
    }
    assert idle == []
    catalog.close()


def test_a_held_gpu_idle_long_enough_is_one_episode_until_it_works_again(
    catalog: Catalog,
) -> None:
    idle: list[IdleGpu] = []
    policy = Policy(idle_util=5.0, idle_after_s=30.0)
    tracker = UsageTracker(catalog, lambda: policy, idle.append)
    for second in range(40):
        tracker.observe("gpu-01", sample(1.0, 2.0, foreign=second < 25), T0 + second)
    # GPU 0 (run-1) became idle-held at 30 s; GPU 1 lost its holders at 25 s, before.
    assert [(i.host, i.gpu, i.holder.user, i.holder.run_id, i.since) for i in idle] == [
        ("gpu-01", 0, "alice", "run-1", T0)
    ]
    assert idle[0].simulated and idle[0].mem_used == 4 * GIB
    tracker.flush(now=T0 + 40)
    open_now = catalog.idle_gpus(now=T0 + 40, max_age_s=30)
    assert set(open_now) == {("gpu-01", 0)} and open_now[("gpu-01", 0)]["since"] == T0
    for second in range(40, 50):  # still idle: no second notification
        tracker.observe("gpu-01", sample(1.0, 2.0, foreign=False), T0 + second)
    tracker.observe("gpu-01", sample(60.0, 2.0, foreign=False), T0 + 50)  # works again
    tracker.flush(now=T0 + 51)
    assert len(idle) == 1
    assert catalog.idle_gpus(now=T0 + 51, max_age_s=30) == {}
    assert catalog.idle_hours_by_user(None, T0 + 60) == {"alice": pytest.approx(49 / 3600)}
    catalog.close()
