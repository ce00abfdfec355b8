"""The catalog at lab scale: telemetry of 50 hosts x 8 GPUs in one write, a report of 100 hosts."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import Options
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from remote_agent.protocol import GpuProcess, GpuSample, HostSample, Telemetry

GIB = 1 << 30


class _Host:
    def __init__(self, name: str) -> None:
        self.name, self.address, self.port, self.user, self.tags = name, "10.0.0.1", 22, None, ()


def sample(gpus: int) -> Telemetry:
    proc = GpuProcess(4242, "alice", "python train.py", None, 20 * GIB, None)
    return Telemetry(
        time=0.0,
        backend="simulated",
        host=HostSample(12.5, 1.0, 1.0, 1.0, 64 * GIB, 512 * GIB, 2000 * GIB, 4000 * GIB),
        gpus=tuple(
            GpuSample(
                i,
                f"GPU-{i}",
                "A100-SXM4-80GB",
                50.0,
                10 * GIB,
                80 * GIB,
                40.0,
                100.0,
                400.0,
                None,
                (proc,),
            )
            for i in range(gpus)
        ),
    )


def timed_ms(runs: int, action: Callable[[int], object]) -> float:
    times = []
    for run in range(runs):
        start = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run(options: Options) -> list[Row]:
    runs = 10 if options.quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.db")
        names = [f"gpu-{i:03d}" for i in range(100)]
        catalog.sync_hosts([_Host(n) for n in names])
        batch = [(n, sample(8)) for n in names[:50]]
        catalog.record_telemetry(batch, received=1.0)  # warm the statement cache
        record_ms = timed_ms(runs, lambda i: catalog.record_telemetry(batch, received=2.0 + i))
        catalog.record_telemetry([(n, sample(8)) for n in names], received=1000.0)
        report_ms = timed_ms(runs, lambda i: catalog.hosts_report(now=1001.0))
        catalog.close()
    return [
        Row("catalog write 50x8", record_ms, "ms", target=Target(10.0),
            note=f"median of {runs}; one transaction: hosts, gpus, processes, history"),
        Row("hosts report 100x8", report_ms, "ms", target=Target(20.0),
            note=f"median of {runs}; what `cvtui hosts` and the TUI read"),
    ]  # fmt: skip
