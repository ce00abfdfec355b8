"""Catalog methods for Slurm hosts: each host's kind, a cluster's last sample, held runs."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from remote_agent.protocol import ClusterSample

if TYPE_CHECKING:
    from sqlite_utils import Database


def migration_10_slurm(db: Database) -> None:
    """Slurm hosts: the kind of each host, a cluster's partitions, nodes and jobs, and the Slurm
    job of each run there."""
    db.execute("ALTER TABLE hosts ADD COLUMN kind TEXT")  # ssh or slurm; NULL: not yet known
    # JSON of the last ClusterSample (partitions, nodes, the user's jobs); NULL on ssh hosts
    db.execute("ALTER TABLE hosts ADD COLUMN cluster TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN slurm_job TEXT")  # the job id sbatch gave ("1234")


class ClustersMixin:
    """Host kinds and cluster samples; mixed into Catalog next to RunsMixin."""

    if TYPE_CHECKING:
        # Provided by Catalog (store.py), which mixes this class in.
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def set_host_kinds(self, kinds: Mapping[str, str]) -> None:
        """Record each host's kind (ssh, slurm) as the inventory says."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE hosts SET kind = ? WHERE name = ?",
                [(kind, name) for name, kind in kinds.items()],
            )

    def record_cluster(self, name: str, sample: ClusterSample, *, now: float | None = None) -> None:
        """Keep a cluster's last sample (its partitions, nodes and the user's jobs)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE hosts SET cluster = ?, updated = ? WHERE name = ?",
                (json.dumps(asdict(sample)), now, name),
            )

    def clusters(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Host name -> its last cluster sample as JSON data, for the hosts that are clusters."""
        wanted = None if names is None else json.dumps(list(names))
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, cluster FROM hosts WHERE cluster IS NOT NULL "
                "AND (?1 IS NULL OR name IN (SELECT value FROM json_each(?1)))",
                (wanted,),
            ).fetchall()
        return {name: json.loads(data) for name, data in rows}

    def held_runs(self) -> set[str]:
        """Queued runs a host already holds in its own queue (Slurm jobs pending there)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id FROM runs WHERE state = 'queued' AND host IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}
