"""Turn a run config into queued runs in the catalog, with their code snapshots saved."""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog, new_run_id
from cvtui.errors import UnknownHostError
from cvtui.inventory import Inventory
from cvtui.paths import snapshot_archive
from cvtui.repro.blobstore import BlobStore
from cvtui.repro.components import store_snapshot
from cvtui.repro.inputs import pin_run_inputs
from cvtui.repro.provenance import submit_half
from cvtui.repro.snapshot import Snapshot, take_snapshot
from cvtui.run_config import load_run_config
from cvtui.runspec import RunSpec, with_overrides


def prepare_runs(
    config: str | Path,
    inventory: Inventory,
    *,
    overrides: Sequence[str] = (),
    gpus: int | None = None,
    priority: str | None = None,
    hosts: Sequence[str] = (),
    max_runs: int | None = None,
) -> list[RunSpec]:
    """Expand a config with the CLI's overrides; unknown host names are an error here.

    A grid over max_runs (default: the inventory's policy.max_grid) is refused before any
    run is made."""
    known = inventory.names()
    for name in hosts:
        if name not in known:
            raise UnknownHostError(name, known)
    specs = load_run_config(
        str(config),
        overrides=overrides,
        command_template=inventory.command_template,
        max_runs=max_runs or inventory.policy.max_grid,
    )
    if gpus is not None or priority is not None or hosts:
        specs = [
            with_overrides(s, gpus=gpus, priority=priority, hosts=tuple(hosts) or None)
            for s in specs
        ]
    for spec in specs:
        for name in spec.resources.hosts:
            if name not in known:
                raise UnknownHostError(name, known)
    return specs


def repeated_runs(specs: Sequence[RunSpec]) -> list[str]:
    """Warnings for runs that are copies of another (same command, config and resources): an
    axis that lists a value twice ([96, 96, 96] read as three values of one axis) makes them,
    which is almost never what was meant."""
    distinct = {(spec.command, spec.config_yaml(), repr(spec.resources)) for spec in specs}
    copies = len(specs) - len(distinct)
    if not copies:
        return []
    axes = "; ".join(specs[0].repeats) or "an axis lists a value twice"
    return [
        f"{copies} of the {len(specs)} runs are copies of another ({axes}). A list that is "
        "one value (a shape, a list of callbacks) goes in keep_lists, or name the real axes "
        "with axes: [...]"
    ]


def save_snapshot(home: Path, snapshot: Snapshot) -> Path:
    """Keep the snapshot's tar under the home so any engine can ship it later."""
    path = snapshot_archive(home, snapshot.hash)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(snapshot.tar_bytes())
        tmp.replace(path)
    return path


def run_rows(
    specs: Sequence[RunSpec],
    home: Path,
    catalog: Catalog | None = None,
    snapshots: dict[tuple[str, tuple[str, ...]], Snapshot] | None = None,
) -> list[dict[str, Any]]:
    """Catalog rows for specs: one snapshot per distinct code dir, ids in grid order.

    With a catalog, each snapshot's files also go to the content store (`cvtui components`);
    snapshots, when given, gets each snapshot by (code dir, excludes).
    """
    if snapshots is None:
        snapshots = {}
    rows = []
    user = getpass.getuser()
    now = time.time()
    for spec in specs:
        key = (spec.code_dir, spec.exclude)
        if key not in snapshots:
            snapshots[key] = take_snapshot(spec.code_dir, spec.exclude)
            save_snapshot(home, snapshots[key])
            if catalog is not None:
                store_snapshot(catalog, BlobStore.in_home(home), snapshots[key])
        rows.append(
            {
                "id": new_run_id(now + spec.index * 1e-3),  # ids sort in grid order
                "name": spec.name,
                "project": spec.project,
                "user": user,
                "priority": spec.priority,
                "command": spec.command if isinstance(spec.command, str) else list(spec.command),
                "params": dict(spec.params),
                "config": dict(spec.config),
                "spec": spec.to_json(),
                "resources": spec.to_json()["resources"],
                "retries": spec.retries,
                "code_hash": snapshots[key].hash,
                "submitted": now,
            }
        )
    return rows


def submit(catalog: Catalog, home: Path, specs: Sequence[RunSpec]) -> list[str]:
    """Queue specs; each run's provenance (code, git state, command, config, env) is kept, and
    its inputs are pinned to their bytes (an input that cannot be found queues nothing)."""
    snapshots: dict[tuple[str, tuple[str, ...]], Snapshot] = {}
    rows = run_rows(specs, home, catalog, snapshots)
    inputs = pin_run_inputs(catalog, home, rows, specs)
    untracked = {code_dir: bool(snap.untracked) for (code_dir, _), snap in snapshots.items()}
    provenance = submit_half(catalog, BlobStore.in_home(home), rows, specs, untracked)
    run_ids = catalog.insert_runs(rows)
    catalog.record_run_inputs(inputs)
    catalog.write_submit_provenance(provenance)
    return run_ids
