"""A Slurm cluster in the Hosts table: its row, and below it its partitions and nodes.

GPUs are Slurm's: idle (free for a new job) out of total, and a bar of the share allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text

from cvtui import units
from cvtui.tui import cells

# Row keys: part:HOST:PARTITION and node:HOST:NODE, under host:HOST.
PARTITION_PREFIX = "part"
NODE_PREFIX = "node"


def allocated(gpus: int, alloc: int) -> Text:
    return cells.bar(alloc / gpus if gpus else None, 4).append(f" {alloc}/{gpus}")


def cluster_gpus(cluster: Mapping[str, Any]) -> tuple[int, int, int]:
    """(total, allocated, idle) GPUs over the cluster's nodes."""
    nodes = cluster.get("nodes") or []
    return (
        sum(n["gpus"] for n in nodes),
        sum(n["gpus_alloc"] for n in nodes),
        sum(n["gpus_idle"] for n in nodes),
    )


def cluster_note(host: Mapping[str, Any]) -> Text:
    cluster = host.get("cluster") or {}
    if host.get("reason"):
        return Text(host["reason"], style="red" if host["state"] != "stale" else "yellow")
    parts, nodes = cluster.get("partitions") or [], cluster.get("nodes") or []
    note = Text("slurm", style="italic")
    note.append(f" · {len(parts)} partitions · {len(nodes)} nodes", style="dim")
    note.append(f" · you: {cluster.get('running', 0)} running, {cluster.get('pending', 0)} pending")
    if host.get("tags"):
        note.append(" #" + " #".join(host["tags"]), style="blue")
    return note


def cluster_cells(host: Mapping[str, Any], expanded: bool, wide: bool) -> list[Any]:
    """The cluster's own row: idle GPUs, the share allocated, the login node's CPU."""
    cluster = host.get("cluster") or {}
    up = host["state"] in ("healthy", "stale")
    total, alloc, idle = cluster_gpus(cluster)
    row: list[Any] = [
        Text.assemble("▾ " if expanded else "▸ ", (host["name"], "bold")),
        cells.host_state(host["state"], host.get("drained", False), width=12 if wide else 10),
        f"{idle}/{total}" if up and total else "-",
        allocated(total, alloc) if up and total else "",
        "",
        cells.percent(host.get("cpu_percent")) if up else "",
    ]
    if wide:
        row += ["", units.short_size(host.get("disk_free")) if up else ""]
    row += [str(host.get("runs") or "") or Text("-", style="dim"), cluster_note(host)]
    return row


def partition_cells(partition: Mapping[str, Any], wide: bool) -> list[Any]:
    name = partition["name"] + ("*" if partition.get("default") else "")
    available = partition.get("available") or "?"
    row: list[Any] = [
        Text(f"  ▪ {name}", style="bold"),
        Text(available, style="green" if available == "up" else "red"),
        f"{partition['gpus_idle']}/{partition['gpus']}",
        allocated(partition["gpus"], partition["gpus_alloc"]),
        "",
        "",
    ]
    if wide:
        row += ["", ""]
    row += ["", Text(f"partition · {partition['nodes']} nodes", style="dim")]
    return row


def node_cells(node: Mapping[str, Any], wide: bool, jobs: list[Mapping[str, Any]]) -> list[Any]:
    state = node.get("state") or "?"
    usable = node["gpus_idle"] > 0 or state.startswith(("alloc", "mixed", "idle"))
    note = Text(",".join(node.get("partitions") or []), style="dim")
    for job in jobs[:3]:
        gpus = job.get("gpu_ids") or []
        note.append(f" job {job['job_id']}", style="cyan")
        if gpus:
            note.append(f" (GPUs {','.join(str(g) for g in gpus)})", style="cyan")
    row: list[Any] = [
        Text(f"    {node['name']}", style="dim"),
        Text(cells.fit(state, 10), style="" if usable else "red"),
        f"{node['gpus_idle']}/{node['gpus']}",
        allocated(node["gpus"], node["gpus_alloc"]),
        "",
        "",
    ]
    if wide:
        row += ["", ""]
    row += [str(len(jobs) or "") or Text("-", style="dim"), note]
    return row


def cluster_rows(host: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(key, data) rows below an expanded cluster: partitions, then nodes with our jobs."""
    name = host["name"]
    cluster = host.get("cluster") or {}
    rows: list[tuple[str, Any]] = [
        (f"{PARTITION_PREFIX}:{name}:{p['name']}", p) for p in cluster.get("partitions") or []
    ]
    jobs = [j for j in cluster.get("jobs") or [] if j.get("nodes")]
    for node in cluster.get("nodes") or []:
        # A job's node list may be a range (gpu[01-04]): its own name, or the whole list.
        on_node = [j for j in jobs if node["name"] in j["nodes"]]
        rows.append((f"{NODE_PREFIX}:{name}:{node['name']}", (node, on_node)))
    return rows
