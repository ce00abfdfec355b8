"""`cvtui hosts`: read a running engine's view, or run a short-lived engine for one round.

With an engine running, `hosts` only reads the catalog: this module imports the engine (and
asyncssh, ~0.2 s) only for the round it runs itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog import Catalog

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine
    from cvtui.inventory import Inventory


def collect_hosts_report(
    inventory: Inventory, home: Path, timeout_s: float
) -> list[dict[str, Any]]:
    """The hosts report, from the engine that owns home's catalog or from a fresh round.

    Without a running engine, one runs here until every host sent its first telemetry or
    failed (at most timeout_s); hosts still connecting then are reported as timed out.
    """
    import asyncio

    from cvtui.local_engine import drive

    hosted = False

    def answered(engine: Engine | None) -> bool:
        nonlocal hosted
        if engine is None:
            return True  # another process runs the engine: read what it writes
        hosted = True
        return engine.all_answered()

    policy = inventory.policy
    with Catalog.open_home(home) as catalog:
        asyncio.run(drive(inventory, catalog, home, answered, timeout_s=timeout_s, poll_s=0.02))
        if hosted:
            for host in catalog.hosts_report(names=inventory.names()):
                if host["state"] == "connecting":
                    reason = f"timeout (no answer in {timeout_s:g} s)"
                    catalog.set_host_state(host["name"], "disconnected", reason)
        report = catalog.hosts_report(
            now=time.time(),
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
            names=inventory.names(),
        )
        add_host_details(catalog, report, inventory.names())
        return report


def add_host_details(
    catalog: Catalog, report: list[dict[str, Any]], names: Sequence[str]
) -> list[dict[str, Any]]:
    """What the hosts report shows beyond telemetry, whoever ran the engine: a Slurm host's
    cluster, and the latest scans of every host's `disk_usage:` paths."""
    clusters = catalog.clusters(names)
    disk = catalog.disk_usage_by_host(names)
    for host in report:
        # Per path: its top-level dirs with owner, bytes and files, and how old each figure is.
        host["disk_usage"] = disk.get(host["name"], [])
        if host["name"] in clusters:  # a Slurm host: partitions, nodes, the user's jobs
            host["cluster"] = clusters[host["name"]]
    return report
