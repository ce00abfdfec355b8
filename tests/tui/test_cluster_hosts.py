"""A Slurm cluster on the dashboard: its row under Hosts with partitions and nodes, its runs in
the Queue with Slurm's pending reason. A real catalog, written as the engine writes it."""

from __future__ import annotations

from pathlib import Path

from support import wait_for

from cvtui.catalog import Catalog
from cvtui.inventory import parse_inventory
from cvtui.tui.app import DashboardApp
from cvtui.tui.screens.queue import QueueScreen
from cvtui.tui.widgets.hosts_table import HostsTable
from cvtui.tui.widgets.runs_table import QueueTable
from remote_agent.protocol import (
    BACKEND_SLURM,
    ClusterSample,
    HostSample,
    SlurmJob,
    SlurmNode,
    SlurmPartition,
    Telemetry,
)

NOW = 1_750_000_000.0
INVENTORY = "hosts:\n  cluster: {address: login.lab, kind: slurm, slurm: {partition: gpu}}\n"
RUNNING, PENDING = "01jxq3v7k2m8c4r9t6w1y5b0dn", "01jxq3x2p9f4h7j1m5q8s3v6zx"


def cluster_catalog(home: Path) -> Catalog:
    inventory = parse_inventory(INVENTORY)
    catalog = Catalog.open_home(home)
    catalog.sync_hosts(inventory.hosts, now=NOW)
    catalog.set_host_kinds({"cluster": "slurm"})
    sample = ClusterSample(
        partitions=(
            SlurmPartition("gpu", "up", True, nodes=2, gpus=8, gpus_alloc=6, gpus_idle=2),
            SlurmPartition("debug", "down", False, nodes=1, gpus=4, gpus_alloc=0, gpus_idle=0),
        ),
        nodes=(
            SlurmNode("node01", "mixed", ("gpu",), gpus=4, gpus_alloc=2, gpus_idle=2),
            SlurmNode("node02", "allocated", ("gpu", "debug"), gpus=4, gpus_alloc=4, gpus_idle=0),
        ),
        jobs=(
            SlurmJob("41", RUNNING, "RUNNING", "None", 2, "node01", (0, 1)),
            SlurmJob("42", PENDING, "PENDING", "Resources", 4, ""),
        ),
        pending=1,
        running=1,
    )
    host = HostSample(3.0, 0.1, 0.1, 0.1, 2 << 30, 16 << 30, 500 << 30, 1 << 40)
    catalog.record_telemetry([("cluster", Telemetry(NOW, BACKEND_SLURM, host, (), sample))])
    catalog.record_cluster("cluster", sample, now=NOW)
    base = {
        "project": "p",
        "user": "me",
        "priority": "normal",
        "command": "python train.py",
        "params": {},
        "config": {},
        "spec": {},
        "resources": {"gpus": 2, "hosts": ["cluster"]},
        "retries": 0,
        "submitted": NOW - 60,
    }
    catalog.insert_runs(
        [{**base, "id": RUNNING, "name": "train-a"}, {**base, "id": PENDING, "name": "train-b"}]
    )
    catalog.transition_run(
        RUNNING, "running", expect=["queued"], host="cluster", gpus=[0, 1], slurm_job="41"
    )
    # A job pending in Slurm's queue: queued, held by the cluster, with Slurm's reason.
    catalog.transition_run(PENDING, "dispatching", expect=["queued"], host="cluster")
    catalog.transition_run(
        PENDING, "queued", expect=["dispatching"], reason="PENDING (Resources)", slurm_job="42"
    )
    return catalog


async def test_a_cluster_under_hosts_and_its_pending_runs_in_the_queue(tmp_path: Path) -> None:
    catalog = cluster_catalog(tmp_path / "home")
    app = DashboardApp(
        parse_inventory(INVENTORY), catalog, clock=lambda: NOW, refresh_s=0.02, poll_s=0.02
    )
    async with app.run_test(size=(160, 30)) as pilot:
        await wait_for(lambda: app.view is not None)  # type: ignore[attr-defined]
        await pilot.pause()
        table = app.screen.query_one(HostsTable)
        await wait_for(lambda: table.row_count == 5)
        assert table.row_keys == [
            "host:cluster",
            "part:cluster:gpu",
            "part:cluster:debug",
            "node:cluster:node01",
            "node:cluster:node02",
        ]
        assert str(table.get_cell("host:cluster", "free")) == "2/8"  # idle of all nodes' GPUs
        assert "slurm · 2 partitions · 2 nodes" in str(table.get_cell("host:cluster", "note"))
        assert str(table.get_cell("part:cluster:gpu", "name")).strip() == "▪ gpu*"
        assert str(table.get_cell("part:cluster:debug", "state")) == "down"
        assert str(table.get_cell("node:cluster:node01", "util")).endswith("2/4")
        assert "job 41 (GPUs 0,1)" in str(table.get_cell("node:cluster:node01", "note"))
        assert "GPUs 2 idle, 6 allocated of 8" in str(app.screen.query_one("#info").render())
        await pilot.press("space")  # collapse: partitions and nodes fold under the cluster
        assert table.row_keys == ["host:cluster"]

        await pilot.press("2")
        assert isinstance(app.screen, QueueScreen)
        queue = app.screen.query_one(QueueTable)
        await wait_for(lambda: queue.row_count == 1)
        assert queue.row_keys == [PENDING]
        assert str(queue.get_cell(PENDING, "reason")) == "PENDING (Resources)"
        await pilot.press("q")
    catalog.close()
