"""Hand-built inventory hosts and telemetry samples for catalog tests."""

from __future__ import annotations

from dataclasses import dataclass

from remote_agent.protocol import GpuProcess, GpuSample, HostSample, Telemetry

GIB = 1 << 30


@dataclass(frozen=True)
class InventoryHost:
    """Stands in for the inventory's Host: the fields sync_hosts reads."""

    name: str
    address: str = "127.0.0.1"
    port: int = 22
    user: str | None = "researcher"
    tags: tuple[str, ...] = ()


def gpu(
    index: int,
    *,
    util: float | None = 50.0,
    mem_used: int | None = 10 * GIB,
    processes: tuple[GpuProcess, ...] = (),
) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=f"GPU-{index:08x}",
        name="A100-SXM4-80GB",
        util=util,
        mem_used=mem_used,
        mem_total=80 * GIB,
        temperature=40.0 + index,
        power=100.0 + index,
        power_limit=400.0,
        fan=None,
        processes=processes,
    )


def telemetry(
    agent_time: float = 1_000.0,
    *,
    gpus: tuple[GpuSample, ...] | None = None,
    gpu_count: int = 2,
    cpu_percent: float | None = 12.5,
    backend: str = "simulated",
) -> Telemetry:
    if gpus is None:
        gpus = tuple(gpu(i) for i in range(gpu_count))
    return Telemetry(
        time=agent_time,
        backend=backend,
        host=HostSample(
            cpu_percent=cpu_percent,
            load1=1.5,
            load5=1.0,
            load15=0.5,
            mem_used=64 * GIB,
            mem_total=512 * GIB,
            disk_free=2_000 * GIB,
            disk_total=4_000 * GIB,
        ),
        gpus=gpus,
    )
