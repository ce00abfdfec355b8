"""The catalog keeps up with a big lab: 1 Hz telemetry of hundreds of GPUs, cheap reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cvtui.catalog import Catalog
from remote_agent.protocol import GpuProcess, Telemetry

from .samples import GIB, InventoryHost, gpu, telemetry


def best_of(runs: int, action: Callable[[int], object]) -> float:
    """Fastest of several timed runs (seconds): noise on a busy CI box only adds time."""
    best = float("inf")
    for run in range(runs):
        start = time.perf_counter()
        action(run)
        best = min(best, time.perf_counter() - start)
    return best


def lab(catalog: Catalog, hosts: int, gpus_per_host: int) -> list[tuple[str, Telemetry]]:
    names = [f"gpu-{i:03d}" for i in range(hosts)]
    catalog.sync_hosts([InventoryHost(n) for n in names])
    proc = GpuProcess(
        pid=1234, user="alice", command="python train.py", container=None, mem=20 * GIB, run_id=None
    )
    sample = telemetry(gpus=tuple(gpu(i, processes=(proc,)) for i in range(gpus_per_host)))
    return [(n, sample) for n in names]


def test_recording_50_hosts_of_8_gpus_is_one_cheap_transaction(catalog: Catalog) -> None:
    batch = lab(catalog, 50, 8)
    catalog.record_telemetry(batch, received=1_000.0)  # warm the statement cache
    elapsed = best_of(10, lambda run: catalog.record_telemetry(batch, received=1_001.0 + run))
    # Measured at 5-10 ms on a shared 2-core VM, where load makes timings swing. The bound leaves
    # room for a loaded CI box yet fails for per-row commits (about 100 ms here).
    assert elapsed < 0.025, f"record_telemetry took {elapsed * 1000:.1f} ms"
    assert catalog.db.table("telemetry").count == 11 * 50 * 9
    assert catalog.db.table("gpu_processes").count == 50 * 8


def test_reporting_100_hosts_of_8_gpus_takes_under_20_ms(catalog: Catalog) -> None:
    catalog.record_telemetry(lab(catalog, 100, 8), received=1_000.0)
    report: list[dict[str, Any]] = []
    elapsed = best_of(10, lambda run: report.extend(catalog.hosts_report(now=1_001.0)))
    assert elapsed < 0.020, f"hosts_report took {elapsed * 1000:.1f} ms"
    assert len(report) == 10 * 100
    assert all(h["state"] == "healthy" and len(h["gpus"]) == 8 for h in report)
