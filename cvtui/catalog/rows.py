"""Pure conversions: telemetry samples to table rows, and table rows to the hosts report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvtui.catalog.history_codec import encode_raw
from remote_agent.protocol import Telemetry

HOST_GPU_IDX = -1  # gpu_idx of the host-level telemetry rows


@dataclass(frozen=True)
class TelemetryRows:
    """One host's share of a telemetry batch, as parameter tuples for each table."""

    host: tuple[Any, ...]
    gpus: list[tuple[Any, ...]]
    processes: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]  # telemetry_raw rows: (host, start, until, samples, data)


def telemetry_rows(name: str, samples: list[Telemetry], received: float) -> TelemetryRows:
    """Rows for a host's samples: current state from the newest, history from all of them."""
    samples = sorted(samples, key=lambda t: t.time)  # stable: the last of equal times wins
    latest = samples[-1]
    h = latest.host
    host = (
        received,
        h.cpu_percent,
        h.load1,
        h.mem_used,
        h.mem_total,
        h.disk_free,
        h.disk_total,
        latest.backend,
        received,
        name,
    )
    gpus = [
        (
            name,
            g.index,
            g.uuid,
            g.name,
            g.util,
            g.mem_used,
            g.mem_total,
            g.temperature,
            g.power,
            g.power_limit,
            g.fan,
            latest.backend,
            received,
            g.pci_bus_id,
            g.leased_by,
        )
        for g in latest.gpus
    ]
    processes = [
        (name, g.index, p.pid, p.user, p.command, p.container, p.mem, p.run_id, received)
        for g in latest.gpus
        for p in g.processes
    ]
    times = [received - (latest.time - s.time) for s in samples]  # controller clock, agent spacing
    history = [raw_history_row(name, samples, times)]
    return TelemetryRows(host, gpus, processes, history)


def raw_history_row(
    name: str, samples: Sequence[Telemetry], times: Sequence[float]
) -> tuple[Any, ...]:
    """One telemetry_raw row holding samples of a host, oldest first, at these times
    (unix seconds, controller clock)."""
    series = sorted({HOST_GPU_IDX} | {g.index for s in samples for g in s.gpus})
    where = {index: i for i, index in enumerate(series)}
    values: list[list[list[Any]]] = [[[None] * len(samples) for _ in series] for _ in range(4)]
    util, mem, temp, power = values
    host_row = where[HOST_GPU_IDX]
    for at, sample in enumerate(samples):
        util[host_row][at] = sample.host.cpu_percent
        mem[host_row][at] = sample.host.mem_used
        for g in sample.gpus:
            row = where[g.index]
            util[row][at], mem[row][at] = g.util, g.mem_used
            temp[row][at], power[row][at] = g.temperature, g.power
    return (name, times[0], times[-1], len(samples), encode_raw(series, times, values))


def build_hosts_report(
    host_rows: Sequence[Sequence[Any]],
    gpu_rows: Sequence[Sequence[Any]],
    process_rows: Sequence[Sequence[Any]],
    *,
    now: float,
    stale_after_s: float,
    disconnected_after_s: float,
    idle: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Nest processes in GPUs in hosts, in the order the rows come (hosts by name).

    ``idle`` maps (host, GPU index) to its open idle-held episode (Catalog.idle_gpus).
    """
    idle = idle or {}
    processes: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for host, gpu_idx, pid, user, command, container, mem, run_id in process_rows:
        processes.setdefault((host, gpu_idx), []).append(
            {
                "pid": pid,
                "user": user,
                "command": command,
                "container": container,
                "mem": mem,
                "run_id": run_id,
            }
        )
    gpus: dict[str, list[dict[str, Any]]] = {}
    for row in gpu_rows:
        host, idx, uuid, name, util, mem_used, mem_total, temperature, power, bus, leased = row
        gpus.setdefault(host, []).append(
            {
                "index": idx,
                "uuid": uuid,
                "pci_bus_id": bus,
                "name": name,
                "util": util,
                "mem_used": mem_used,
                "mem_total": mem_total,
                "temperature": temperature,
                "power": power,
                "processes": processes.get((host, idx), []),
                "leased_by": leased,  # run id holding the GPU's lease on the host ("?": unknown)
                # Held (run or process) with memory but under policy.idle_util for idle_after.
                "idle_held": (host, idx) in idle,
                "idle_since": idle[(host, idx)]["since"] if (host, idx) in idle else None,
            }
        )
    report = []
    for row in host_rows:
        name, state, reason, backend, last_seen, cpu, mem_used, mem_total, disk, drained = row
        state, reason = derive_state(
            state, reason, last_seen, now, stale_after_s, disconnected_after_s
        )
        report.append(
            {
                "name": name,
                "state": state,
                "reason": reason,
                "drained": bool(drained),  # `cvtui hosts drain`: takes no new runs
                "backend": backend,
                "last_seen": last_seen,
                "cpu_percent": cpu,
                "mem_used": mem_used,
                "mem_total": mem_total,
                "disk_free": disk,
                "gpus": gpus.get(name, []),
            }
        )
    return report


def gpu_is_free(gpu: dict[str, Any]) -> bool:
    """Whether a GPU of the hosts report could take a new run: no process, no lease."""
    return not gpu["processes"] and gpu.get("leased_by") is None


def derive_state(
    state: str,
    reason: str | None,
    last_seen: float | None,
    now: float,
    stale_after_s: float,
    disconnected_after_s: float,
) -> tuple[str, str | None]:
    """The state a reader should show: a healthy host whose telemetry stopped ages out."""
    if state != "healthy" or last_seen is None:
        return state, reason
    age_s = now - last_seen
    if age_s > disconnected_after_s:
        return "disconnected", f"no telemetry for {int(age_s)} s"
    if age_s > stale_after_s:
        return "stale", f"no telemetry for {int(age_s)} s"
    return state, reason
