"""The catalog at lab scale: a whole lab's telemetry in one call, a report of every host.

Speed is measured by benchmarks/catalog_speed.py, not asserted here."""

from __future__ import annotations

from typing import Any

from cvtui.catalog import Catalog
from remote_agent.protocol import GpuProcess, Telemetry

from .samples import GIB, InventoryHost, gpu, telemetry


def lab(catalog: Catalog, hosts: int, gpus_per_host: int) -> list[tuple[str, Telemetry]]:
    names = [f"gpu-{i:03d}" for i in range(hosts)]
    catalog.sync_hosts([InventoryHost(n) for n in names])
    proc = GpuProcess(
        pid=1234, user="alice", command="python train.py", container=None, mem=20 * GIB, run_id=None
    )
    sample = telemetry(gpus=tuple(gpu(i, processes=(proc,)) for i in range(gpus_per_host)))
    return [(n, sample) for n in names]


def test_recording_50_hosts_of_8_gpus_keeps_history_and_replaces_processes(
    catalog: Catalog,
) -> None:
    batch = lab(catalog, 50, 8)
    for run in range(11):
        catalog.record_telemetry(batch, received=1_000.0 + run)
    # One raw history row per host and call, holding its host series and 8 GPUs.
    assert catalog.db.table("telemetry_raw").count == 11 * 50
    block = catalog.history("gpu-007", 0.0, 2_000.0, step=0)
    assert block.series.tolist() == [-1, *range(8)]
    assert block.times.tolist() == [1_000.0 + run for run in range(11)]
    assert catalog.db.table("gpu_processes").count == 50 * 8


def test_reporting_100_hosts_of_8_gpus(catalog: Catalog) -> None:
    catalog.record_telemetry(lab(catalog, 100, 8), received=1_000.0)
    report: list[dict[str, Any]] = catalog.hosts_report(now=1_001.0)
    assert len(report) == 100
    assert all(h["state"] == "healthy" and len(h["gpus"]) == 8 for h in report)
