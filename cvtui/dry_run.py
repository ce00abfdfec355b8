"""`cvtui run --dry-run`: the expanded runs, where they would go and what they would run."""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Sequence
from typing import Any

from cvtui.catalog import Catalog
from cvtui.engine import scheduler
from cvtui.inventory import Inventory
from cvtui.repro.snapshot import take_snapshot
from cvtui.runspec import RunSpec
from cvtui.submit import repeated_runs
from cvtui.units import size

SCRIPT_SUFFIXES = (".py", ".sh", ".bash")


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
                condition=entry["state"] or "unknown",
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
    if not res.gpus:
        parts[0] += " (CPU only)"
    if res.min_free_mem:
        parts.append(f">= {size(res.min_free_mem)} free each")
    if res.hosts:
        parts.append("hosts " + ",".join(res.hosts))
    if res.tags:
        parts.append("tags " + ",".join(res.tags))
    return ", ".join(parts) + f" · priority {spec.priority}"


def named_scripts(command: str | Sequence[str]) -> list[str]:
    """Relative paths of scripts a command names (`python main.py`, `./run.sh`, `bash x.sh`)."""
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError:
            return []
    else:
        words = list(command)
    found = []
    for word in words:
        if word.startswith(("-", "/", "~", "$")) or "{" in word or "=" in word:
            continue
        if word.endswith(SCRIPT_SUFFIXES):
            found.append(posixpath.normpath(word))
    return found


def plan_dry_run(
    specs: Sequence[RunSpec], inventory: Inventory, catalog: Catalog
) -> dict[str, Any]:
    """What a submit would do, as data: runs with placement, code snapshots, warnings."""
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
    runs = []
    for i, spec in enumerate(specs):
        placement = placed.get(f"#{i}")
        gpus = placement.gpus if placement else ()
        command = spec.render_command(
            run_id="<run_id>",
            run_dir="<run_dir>",
            config_file="<config_file>",
            gpus=gpus,
            inputs={name: f"<inputs.{name}>" for name in spec.inputs},
        )
        runs.append(
            {
                "name": spec.name,
                "command": command if isinstance(command, str) else list(command),
                "gpus": spec.resources.gpus,
                "resources": describe_resources(spec),
                "priority": spec.priority,
                "params": dict(spec.params),
                "placement": (
                    {"host": placement.host, "gpus": list(placement.gpus)} if placement else None
                ),
                "waits": None if placement else plan.waiting.get(f"#{i}", "not placed"),
            }
        )
    code = []
    warnings = repeated_runs(specs)
    for code_dir, exclude in dict.fromkeys((s.code_dir, s.exclude) for s in specs):
        snap = take_snapshot(code_dir, exclude)
        shipped = {f.path for f in snap.files}
        code.append(
            {"dir": code_dir, "files": len(snap.files), "size": snap.size, "snapshot": snap.hash}
        )
        mine = [s for s in specs if (s.code_dir, s.exclude) == (code_dir, exclude)]
        named = [script for s in mine for script in named_scripts(s.command)]
        linked = {name for s in mine for name in s.links}
        for script in dict.fromkeys(named):
            if script not in shipped and not any(script.startswith(f"{n}/") for n in linked):
                warnings.append(
                    f"the command runs {script}, which is not in the code snapshot of {code_dir} "
                    "(set `code:` to the folder that holds it, or check `exclude:`)"
                )
    return {
        "runs": runs,
        "axes": list(specs[0].axes) if specs else [],
        "code": code,
        "warnings": warnings,
        "telemetry_age_s": round(now - max(seen), 1) if seen else None,
    }


def describe_dry_run(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    runs = plan["runs"]
    age = plan["telemetry_age_s"]
    basis = (
        f"placement from telemetry {age:.0f}s old"
        if age is not None
        else "placement unknown: no telemetry yet (run `cvtui hosts` or start the daemon)"
    )
    lines = [f"{len(runs)} run{'s' if len(runs) != 1 else ''} (dry run: nothing started; {basis})"]
    if plan["axes"]:
        lines.append(f"  axes: {', '.join(plan['axes'])}")
    for run in runs:
        placement = run["placement"]
        where = (
            f"{placement['host']} GPU {','.join(map(str, placement['gpus'])) or '-'}"
            if placement
            else f"waits: {run['waits']}"
        )
        command = run["command"]
        shown = command if isinstance(command, str) else " ".join(command)
        lines += [
            f"  {run['name']}",
            f"    command:   {shown}",
            f"    resources: {run['resources']}",
            f"    placement: {where}",
        ]
    for snap in plan["code"]:
        lines.append(
            f"  code: {snap['dir']} ({snap['files']} files, {size(snap['size'])}, "
            f"snapshot {snap['snapshot'][:12]})"
        )
    lines += [f"  warning: {warning}" for warning in plan["warnings"]]
    return "\n".join(lines)
