"""Plain-text renderings of catalog reports for the CLI (the TUI draws its own)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cvtui.catalog.rows import gpu_is_free
from cvtui.units import ago, duration, size

BAR_CELLS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float | None, width: int = 8) -> str:
    """A bar of width cells filled to fraction (0..1), eighths resolution."""
    if fraction is None:
        return "?" * width
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (BAR_CELLS[part] if part else "")
    return text.ljust(width)


def gpu_line(gpu: dict[str, Any]) -> str:
    util = gpu.get("util")
    used, total = gpu.get("mem_used"), gpu.get("mem_total")
    mem_fraction = used / total if used is not None and total else None
    util_text = "  ?%" if util is None else f"{util:3.0f}%"
    users = sorted({p["user"] or "?" for p in gpu.get("processes", [])})
    temp = gpu.get("temperature")
    temp_text = "" if temp is None else f" {temp:.0f}C"
    return (
        f"  [{gpu['index']}] {gpu['name'][:22]:22} util {bar((util or 0) / 100, 6)}{util_text}"
        f"  mem {bar(mem_fraction, 6)} {size(used)}/{size(total)}{temp_text}"
        + (f"  {','.join(users)}" if users else "")
        + (f"  leased by {leased}" if (leased := gpu.get("leased_by")) is not None else "")
        + (
            f"  IDLE-HELD {duration(time.time() - gpu['idle_since'])}"
            if gpu.get("idle_held")
            else ""
        )
    )


def cluster_lines(cluster: dict[str, Any]) -> list[str]:
    """A Slurm cluster's partitions and nodes, GPUs as Slurm allocates them."""
    lines = []
    for part in cluster.get("partitions") or []:
        name = part["name"] + ("*" if part.get("default") else "")
        lines.append(
            f"  partition {name:12} {part['available']:6} {part['nodes']} nodes  GPUs "
            f"{part['gpus_idle']} idle, {part['gpus_alloc']} allocated of {part['gpus']}"
        )
    for node in cluster.get("nodes") or []:
        lines.append(
            f"  node {node['name']:17} {node['state']:12} GPUs {node['gpus_idle']} idle, "
            f"{node['gpus_alloc']} allocated of {node['gpus']}  ({','.join(node['partitions'])})"
        )
    for job in cluster.get("jobs") or []:
        ids = ",".join(str(g) for g in job.get("gpu_ids") or [])
        where = f" on {job['nodes']}" + (f" GPUs {ids}" if ids else "") if job["nodes"] else ""
        why = f" ({job['reason']})" if job["state"] == "PENDING" and job["reason"] else ""
        lines.append(f"  job {job['job_id']:17} {job['state']}{why}{where}  run {job['run_id']}")
    return lines


def disk_lines(scans: Sequence[dict[str, Any]], now: float | None = None) -> list[str]:
    """Per scanned path: bytes per owner (summed over its top-level dirs), biggest first."""
    lines = []
    for scan in scans:
        if scan["error"]:
            lines.append(f"  disk {scan['path']}: {scan['error']}")
            continue
        owners: dict[str, int] = {}
        for entry in scan["entries"]:
            owners[entry["owner"]] = owners.get(entry["owner"], 0) + entry["bytes"]
        shown = sorted(owners.items(), key=lambda item: -item[1])
        text = ", ".join(f"{owner} {size(total)}" for owner, total in shown) or "empty"
        partial = " (partial)" if scan["partial"] else ""
        lines.append(
            f"  disk {scan['path']}: {text}{partial}  scanned {ago(scan['scanned_at'], now)}"
        )
    return lines


def format_hosts(report: Sequence[dict[str, Any]], *, now: float | None = None) -> str:
    """The `cvtui hosts` table: one line per host, then one per GPU."""
    lines = []
    for host in report:
        state = host["state"]
        gpus = host.get("gpus", [])
        free = sum(1 for g in gpus if gpu_is_free(g))
        backend = host.get("backend") or "-"
        head = f"{host['name']:14} {state:12}"
        cluster = host.get("cluster")
        if cluster is not None and state in ("healthy", "stale"):
            nodes = cluster.get("nodes") or []
            head += (
                f" slurm: {sum(n['gpus'] for n in nodes)} GPUs "
                f"({sum(n['gpus_idle'] for n in nodes)} idle) on {len(nodes)} nodes"
                f"  you: {cluster.get('running', 0)} running, {cluster.get('pending', 0)} pending"
                f"  seen {ago(host.get('last_seen'), now)}"
            )
        elif state in ("healthy", "stale"):
            cpu = host.get("cpu_percent")
            cpu_text = "-" if cpu is None else f"{cpu:.0f}%"
            head += (
                f" {len(gpus)} GPUs ({free} free, {backend})  cpu {cpu_text}"
                f"  mem {size(host.get('mem_used'))}/{size(host.get('mem_total'))}"
                f"  disk free {size(host.get('disk_free'))}"
                f"  seen {ago(host.get('last_seen'), now)}"
            )
        if host.get("drained"):
            head += "  drained (no new runs)"
        if host.get("reason"):
            head += f"  {host['reason']}"
        lines.append(head.rstrip())
        if cluster is not None and state in ("healthy", "stale"):
            lines.extend(cluster_lines(cluster))
        elif state in ("healthy", "stale"):
            lines.extend(gpu_line(g) for g in gpus)
        lines.extend(disk_lines(host.get("disk_usage") or [], now))
    return "\n".join(lines)
