"""`cvtui run --dry-run`: the expanded runs, where they would go and what they would run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cvtui.catalog import Catalog
from cvtui.engine import scheduler
from cvtui.engine.snapshot import take_snapshot
from cvtui.inventory import Inventory
from cvtui.report import human_bytes
from cvtui.runspec import RunSpec


def host_states_from_report(
    report: Sequence[dict[str, Any]], inventory: Inventory
) -> list[scheduler.HostState]:
    """Scheduler input from the catalog's last known view (leases as last seen)."""
    states = []
    hosts = {h.name: h for h in inventory.hosts}
    for entry in report:
        host = hosts.get(entry["name"])
        if host is None:
            continue
        gpus = tuple(
            scheduler.GpuState(
                index=g["index"],
                mem_total=g["mem_total"],
                mem_used=g["mem_used"],
                util=g["util"],
                leased_by=g.get("leased_by"),
                foreign=any(p["run_id"] is None for p in g["processes"]),
                ours=any(p["run_id"] is not None for p in g["processes"]),
                telemetry_time=entry["last_seen"] or 0.0,
            )
            for g in entry["gpus"]
        )
        states.append(
            scheduler.HostState(
                name=host.name,
                healthy=entry["state"] == "healthy",
                tags=host.tags,
                max_runs=host.max_runs,
                allowed_gpus=host.gpus,
                gpu_order=host.gpu_order,
                gpus=gpus,
            )
        )
    return states


def describe_resources(spec: RunSpec) -> str:
    res = spec.resources
    parts = [f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}"]
    if res.min_free_mem:
        parts.append(f">= {human_bytes(res.min_free_mem)} free each")
    if res.hosts:
        parts.append("hosts " + ",".join(res.hosts))
    if res.tags:
        parts.append("tags " + ",".join(res.tags))
    return ", ".join(parts) + f" · priority {spec.priority}"


def describe_dry_run(specs: Sequence[RunSpec], inventory: Inventory, catalog: Catalog) -> str:
    now = time.time()
    policy = inventory.policy
    report = catalog.hosts_report(
        now=now,
        stale_after_s=policy.stale_after_s,
        disconnected_after_s=policy.disconnected_after_s,
        names=inventory.names(),
    )
    queue = [
        scheduler.QueuedRun(
            run_id=f"#{i}",
            priority=spec.priority,
            submitted=now + i * 1e-6,
            gpus=spec.resources.gpus,
            min_free_mem=spec.resources.min_free_mem,
            hosts=spec.resources.hosts,
            tags=spec.resources.tags,
        )
        for i, spec in enumerate(specs)
    ]
    plan = scheduler.plan(
        queue,
        host_states_from_report(report, inventory),
        foreign_processes=policy.foreign_processes,
    )
    placed = {p.run_id: p for p in plan.placements}
    seen = [h["last_seen"] for h in report if h["last_seen"]]
    basis = (
        f"placement from telemetry {now - max(seen):.0f}s old"
        if seen
        else "placement unknown: no telemetry yet (run `cvtui hosts` or start the daemon)"
    )
    lines = [
        f"{len(specs)} run{'s' if len(specs) != 1 else ''} (dry run: nothing started; {basis})"
    ]
    for i, spec in enumerate(specs):
        placement = placed.get(f"#{i}")
        where = (
            f"{placement.host} GPU {','.join(map(str, placement.gpus)) or '-'}"
            if placement
            else f"waits: {plan.waiting.get(f'#{i}', 'not placed')}"
        )
        gpus = placement.gpus if placement else ()
        command = spec.render_command(run_id="<run_id>", run_dir="<run_dir>", gpus=gpus)
        shown = command if isinstance(command, str) else " ".join(command)
        lines += [
            f"  {spec.name}",
            f"    command:   {shown}",
            f"    resources: {describe_resources(spec)}",
            f"    placement: {where}",
        ]
    for code_dir, exclude in dict.fromkeys((s.code_dir, s.exclude) for s in specs):
        snap = take_snapshot(code_dir, exclude)
        lines.append(
            f"  code: {code_dir} ({len(snap.files)} files, {human_bytes(snap.size)}, "
            f"snapshot {snap.hash[:12]})"
        )
    return "\n".join(lines)
