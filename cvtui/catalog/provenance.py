"""Catalog side of run provenance: what a run was made of, written at submit and at dispatch."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

# The columns of run_provenance written when a run is queued, and when it starts on a host.
SUBMIT_COLUMNS = (
    "code_hash",
    "code_root",
    "git_head",
    "git_dirty",
    "git_diff_hash",
    "command",
    "config",
    "env",
    "submitted_at",
)
DISPATCH_COLUMNS = (
    "host",
    "gpus",
    "gpu_models",
    "driver",
    "command",
    "dispatched_at",
    "links",
    "gpu_uuids",
    "env_key",
)
_JSON_COLUMNS = ("command", "config", "env", "gpus", "gpu_models", "links", "gpu_uuids")
# What the dashboard's run detail shows of a run's provenance.
_SUMMARY_COLUMNS = (
    "code_root",
    "git_head",
    "git_dirty",
    "git_diff_hash",
    "host",
    "gpu_models",
    "driver",
    "python",
    "pip_freeze_hash",
)


class ProvenanceMixin:
    """run_provenance and host_environments rows (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def write_submit_provenance(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert the submit columns (SUBMIT_COLUMNS, JSON already encoded) of each run_id;
        a dispatch half already written (a fast engine) is kept, and so is its command."""
        if not rows:
            return
        names = ("run_id", *SUBMIT_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in SUBMIT_COLUMNS if c != "command")
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO run_provenance ({', '.join(names)})"  # noqa: S608 (fixed names)
                f" VALUES ({', '.join('?' * len(names))})"
                # The command rendered at dispatch is the more exact one: keep it if it is there.
                f" ON CONFLICT (run_id) DO UPDATE SET {updates},"
                " command = COALESCE(run_provenance.command, excluded.command)",
                [tuple(row.get(c) for c in names) for row in rows],
            )

    def write_dispatch_provenance(self, run: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        """Upsert the dispatch columns (DISPATCH_COLUMNS, JSON encoded) of a run that started.

        A run with no provenance row yet gets its submit columns too: a retry takes its first
        attempt's, else they are made from the run row (its snapshot's code dir, config, env).
        """
        names = ("run_id", *DISPATCH_COLUMNS, *(c for c in SUBMIT_COLUMNS if c != "command"))
        updates = ", ".join(f"{c} = excluded.{c}" for c in DISPATCH_COLUMNS)
        with self._write() as conn:
            submit_half = _submit_half_for(conn, run)
            values = [row.get(c, submit_half.get(c)) for c in names]
            conn.execute(
                f"INSERT INTO run_provenance ({', '.join(names)})"  # noqa: S608 (fixed names)
                f" VALUES ({', '.join('?' * len(names))})"
                f" ON CONFLICT (run_id) DO UPDATE SET {updates}",
                values,
            )

    def set_run_python(
        self, run_id: str, python: Any, executable: Any, freeze_hash: str | None
    ) -> None:
        """The interpreter a run's environment resolved: version, path, its packages' blob."""
        with self._write() as conn:
            conn.execute(
                "UPDATE run_provenance SET python = ?, python_executable = ?,"
                " pip_freeze_hash = ? WHERE run_id = ?",
                (python, executable, freeze_hash, run_id),
            )

    def run_provenance(self, run_id: str) -> dict[str, Any] | None:
        """A run's provenance row, JSON columns decoded; None when none was recorded."""
        with self._read() as conn:
            cursor = conn.execute("SELECT * FROM run_provenance WHERE run_id = ?", (run_id,))
            names = [d[0] for d in cursor.description]
            found = cursor.fetchone()
        if found is None:
            return None
        row = dict(zip(names, found, strict=True))
        for column in _JSON_COLUMNS:
            if row[column] is not None:
                row[column] = json.loads(row[column])
        return row

    def host_environment(self, host: str) -> dict[str, Any] | None:
        """The host_environments row of a host, or None."""
        with self._read() as conn:
            cursor = conn.execute("SELECT * FROM host_environments WHERE host = ?", (host,))
            names = [d[0] for d in cursor.description]
            found = cursor.fetchone()
        return None if found is None else dict(zip(names, found, strict=True))

    def store_host_environment(
        self,
        host: str,
        python: str | None,
        freeze_hash: str | None,
        reason: str | None,
        *,
        driver: str | None = None,
        taken: float,
        since: float,
    ) -> None:
        """Upsert a host's environment (the agent's python and the GPU driver); runs dispatched
        there since `since` get its driver (their python and packages are their own)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO host_environments"
                " (host, python, pip_freeze_hash, reason, driver, taken)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET"
                " python = excluded.python, pip_freeze_hash = excluded.pip_freeze_hash,"
                " reason = excluded.reason, driver = excluded.driver, taken = excluded.taken",
                (host, python, freeze_hash, reason, driver, taken),
            )
            # Runs started while the environment was being read (it is read in the background).
            conn.execute(
                "UPDATE run_provenance SET driver = coalesce(driver, ?)"
                " WHERE host = ? AND dispatched_at >= ?",
                (driver, host, since),
            )

    def set_run_reproduces(self, run_id: str, source_id: str) -> None:
        """Mark run_id as a reproduction of source_id (runs.reproduces)."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET reproduces = ? WHERE id = ?", (source_id, run_id))


def provenance_summary(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """What a run was made of (git state, host software) for a glance; None before it was
    recorded, or on a catalog from before reproducibility."""
    try:
        cursor = conn.execute(
            f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM run_provenance"  # noqa: S608 (fixed)
            " WHERE run_id = ?",
            (run_id,),
        )
    except sqlite3.OperationalError:  # no run_provenance table
        return None
    row = cursor.fetchone()
    if row is None:
        return None
    found = dict(zip(_SUMMARY_COLUMNS, row, strict=True))
    if isinstance(found["gpu_models"], str):
        found["gpu_models"] = json.loads(found["gpu_models"])
    return found


def _submit_half_for(conn: sqlite3.Connection, run: Mapping[str, Any]) -> dict[str, Any]:
    """Submit columns for a run that has no provenance row yet: a retry takes its first
    attempt's; {} when the row exists (it keeps what submit wrote)."""
    if conn.execute("SELECT 1 FROM run_provenance WHERE run_id = ?", (run["id"],)).fetchone():
        return {}
    cursor = conn.execute(
        "SELECT p.* FROM run_provenance p JOIN runs r ON r.id = p.run_id"
        " WHERE r.name = ? AND r.submitted = ? AND r.id != ? AND p.submitted_at IS NOT NULL"
        " ORDER BY r.attempt LIMIT 1",
        (run.get("name"), run.get("submitted"), run["id"]),
    )
    names = [d[0] for d in cursor.description]
    found = cursor.fetchone()
    if found is not None:
        earlier = dict(zip(names, found, strict=True))
        return {c: earlier[c] for c in SUBMIT_COLUMNS}
    root = None
    if run.get("code_hash"):
        hit = conn.execute("SELECT root FROM snapshots WHERE hash = ?", (run["code_hash"],))
        found_root = hit.fetchone()
        root = found_root[0] if found_root else None
    spec = run.get("spec") or {}
    return {
        "code_hash": run.get("code_hash"),
        "code_root": root,
        "config": json.dumps(run.get("config") or {}),
        "env": json.dumps(spec.get("env") or {}),
    }
