"""Catalog schema: numbered migrations, each a function, applied once and recorded."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cvtui.catalog.clusters import migration_10_slurm
from cvtui.catalog.components import migration_5_reproducibility
from cvtui.catalog.disk_usage import migration_12_disk_usage
from cvtui.catalog.history import migration_7_history
from cvtui.catalog.metric_store import migration_6_metric_series
from cvtui.catalog.metrics import migration_4_sync
from cvtui.catalog.run_inputs import migration_11_run_inputs
from cvtui.catalog.runs import migration_7_work_dirs
from cvtui.catalog.usage import create_usage_tables, migration_13_energy_by_user
from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from sqlite_utils import Database

Migration = Callable[["Database"], None]

MIGRATIONS_TABLE = "migrations"


class CatalogError(CvtuiError):
    """The catalog file cannot be used: not SQLite, locked too long, or from a newer cvtui."""


def migration_1_monitoring(db: Database) -> None:
    """Hosts, their GPUs and GPU processes, telemetry history, and the command queue."""
    db.table("hosts").create(
        {
            "name": str,
            "address": str,
            "port": int,
            "user": str,
            "tags": str,  # JSON list of strings
            "state": str,  # one of HOST_STATES
            "reason": str,  # why the state is what it is (error text, "no telemetry for 31 s")
            "backend": str,  # nvml, nvidia-smi, simulated, none
            "hostname": str,  # the host's own name, from its hello
            "python": str,  # version of the host's interpreter
            "agent_hash": str,
            "gpu_count": int,
            "last_seen": float,  # unix seconds, controller clock, of the last telemetry
            "connected_at": float,  # unix seconds, controller clock, of the last hello
            "cpu_percent": float,
            "load1": float,
            "mem_used": int,  # bytes
            "mem_total": int,  # bytes
            "disk_free": int,  # bytes
            "disk_total": int,  # bytes
            "updated": float,  # unix seconds of the last write to this row
        },
        pk="name",
    )
    db.table("gpus").create(
        {
            "host": str,
            "idx": int,
            "uuid": str,
            "name": str,
            "util": float,  # percent
            "mem_used": int,  # bytes
            "mem_total": int,  # bytes
            "temperature": float,  # Celsius
            "power": float,  # watts
            "power_limit": float,  # watts
            "fan": float,  # percent
            "backend": str,
            "updated": float,  # unix seconds, controller clock
        },
        pk=("host", "idx"),
    )
    db.table("gpu_processes").create(
        {
            "host": str,
            "gpu_idx": int,
            "pid": int,
            "user": str,
            "command": str,
            "container": str,
            "mem": int,  # bytes of GPU memory
            "run_id": str,
            "seen": float,  # unix seconds, controller clock
        }
    )
    db.table("gpu_processes").create_index(["host"], index_name="gpu_processes_host")
    db.table("telemetry").create(
        {
            "host": str,
            "gpu_idx": int,  # -1 for the host-level row
            "time": float,  # unix seconds, controller clock
            "util": float,  # percent
            "mem_used": int,  # bytes
            "temperature": float,  # Celsius
            "power": float,  # watts
            "cpu_percent": float,  # host rows only
        }
    )
    db.table("telemetry").create_index(
        ["host", "gpu_idx", "time"], index_name="telemetry_host_gpu_time"
    )
    # Compaction and retention select by time alone; appends at the end of it are cheap.
    db.table("telemetry").create_index(["time"], index_name="telemetry_time")
    db.table("telemetry_compaction").create(
        {
            "bucket_s": float,
            "done_before": float,  # history older than this is thinned to one row per bucket
        },
        pk="bucket_s",
    )
    db.table("commands").create(
        {
            "id": int,
            "created": float,  # unix seconds
            "kind": str,
            "args": str,  # JSON object
            "state": str,
            "result": str,
        },
        pk="id",
        defaults={"state": "pending"},
        not_null=["state"],
    )


def migration_2_runs(db: Database) -> None:
    """Runs, the events of their lifecycle, and what the engine needs to poll commands."""
    db.table("runs").create(
        {
            "id": str,  # 26 Crockford base32 chars; sorts by creation time (runs.new_run_id)
            "name": str,
            "project": str,
            "user": str,  # local login that submitted the run
            "state": str,  # one of runs.RUN_STATES
            "priority": str,  # urgent, high, normal, low
            "priority_rank": int,  # 0 for urgent .. 3 for low: the queue sorts ascending
            "submitted": float,  # unix seconds
            "host": str,  # where it was placed; NULL while queued
            "gpus": str,  # JSON list of GPU indexes on that host
            "command": str,  # JSON: a list of arguments or one shell string
            "params": str,  # JSON object: this grid point's parameters
            "config": str,  # JSON object: the resolved config
            "spec": str,  # JSON object: the whole RunSpec, to reproduce the run
            "code_hash": str,  # xxh3 of the code snapshot
            "resources": str,  # JSON object: gpus, min_free_mem, host, tags ...
            "attempt": int,  # 1 for the first start, +1 per retry
            "retries": int,  # retries allowed after a failure
            "dispatched": float,  # unix seconds, controller clock
            "started": float,  # unix seconds
            "ended": float,  # unix seconds
            "exit_code": int,
            "progress": float,  # percent, 0..100
            "progress_msg": str,
            "reason": str,  # why it failed, was cancelled or lost
            "supervisor_pid": int,  # on the host
            "pgid": int,  # process group of the command, on the host
            "run_dir": str,  # on the host
            "log_size": int,  # bytes of output.log synced so far
            "sync_status": str,
            "updated": float,  # unix seconds of the last write to this row
        },
        pk="id",
        defaults={"attempt": 1, "retries": 0, "log_size": 0},
        not_null=["state", "priority", "priority_rank", "submitted"],
    )
    runs = db.table("runs")
    runs.create_index(["state", "priority_rank", "submitted"], index_name="runs_queue")
    runs.create_index(["host", "state"], index_name="runs_host_state")
    runs.create_index(["project"], index_name="runs_project")
    runs.create_index(["submitted"], index_name="runs_submitted")
    runs.create_index(["name"], index_name="runs_name")  # find_runs by name
    # AUTOINCREMENT: event ids never repeat, so readers can follow the table by id.
    db.execute(
        "CREATE TABLE run_events ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " run_id TEXT NOT NULL REFERENCES runs(id),"
        " time REAL NOT NULL,"  # unix seconds
        " state TEXT NOT NULL,"  # the state the run entered
        " detail TEXT)"
    )
    db.execute("CREATE INDEX run_events_run ON run_events (run_id, id)")
    db.execute("ALTER TABLE commands ADD COLUMN finished REAL")  # unix seconds
    # The engine polls for pending commands while the table keeps every finished one.
    db.execute("CREATE INDEX commands_state ON commands (state, id)")


def migration_3_queue(db: Database) -> None:
    """Drained hosts (`cvtui hosts drain`): running runs finish there, no new run is placed."""
    db.execute("ALTER TABLE hosts ADD COLUMN drained INTEGER NOT NULL DEFAULT 0")  # 0 or 1
    db.execute("ALTER TABLE hosts ADD COLUMN drained_at REAL")  # unix seconds; NULL: not drained
    # `cvtui stats --since` reads the runs that ended in a window.
    db.execute("CREATE INDEX runs_ended ON runs (ended)")


def migration_8_gpu_leases(db: Database) -> None:
    """Who holds each GPU's lease on its host, so `hosts` never shows a leased GPU as free."""
    # run id written in the held lease file, "?" when unreadable; NULL: not leased
    db.execute("ALTER TABLE gpus ADD COLUMN leased_by TEXT")


def migration_9_operations(db: Database) -> None:
    """Months of operation: tiered telemetry history, idle-held GPU episodes, energy."""
    migration_7_history(db)
    create_usage_tables(db)


# Migration N is MIGRATIONS[N - 1]. Append only: never edit or reorder an applied migration.
MIGRATIONS: tuple[Migration, ...] = (
    migration_1_monitoring,
    migration_2_runs,
    migration_3_queue,
    migration_4_sync,  # cvtui/catalog/metrics.py (its `blobs` became `signatures` in 5)
    migration_5_reproducibility,  # cvtui/catalog/components.py
    migration_6_metric_series,  # cvtui/catalog/metric_store.py (metrics became a view)
    migration_7_work_dirs,  # cvtui/catalog/runs.py
    migration_8_gpu_leases,
    migration_9_operations,  # history tiers (history.py), idle GPUs and energy (usage.py)
    migration_10_slurm,  # cvtui/catalog/clusters.py
    migration_11_run_inputs,  # cvtui/catalog/run_inputs.py
    migration_12_disk_usage,  # cvtui/catalog/disk_usage.py
    migration_13_energy_by_user,  # cvtui/catalog/usage.py
)


def schema_version(db: Database) -> int:
    """The highest migration applied to this database, 0 for a fresh file."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [MIGRATIONS_TABLE]
    ).fetchone()
    if exists is None:
        return 0
    row = db.execute("SELECT max(version) FROM migrations").fetchone()
    return int(row[0] or 0)


def migrate(
    db: Database, migrations: Sequence[Migration] = MIGRATIONS, *, now: float | None = None
) -> list[int]:
    """Apply the migrations this database lacks, in one transaction; return their versions.

    The connection must be in autocommit mode (``isolation_level=None``). Opening an
    up-to-date catalog takes no write lock, so readers never wait on the engine here.
    """
    current = schema_version(db)
    _refuse_newer(db, current, len(migrations))
    if current == len(migrations):
        return []
    conn = db.conn
    try:
        # IMMEDIATE: two processes opening a fresh catalog at once must not both migrate.
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise CatalogError(f"cannot migrate the catalog: {exc}") from exc
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
        )
        current = schema_version(db)  # again, under the lock
        _refuse_newer(db, current, len(migrations))
        applied: list[int] = []
        for version in range(current + 1, len(migrations) + 1):
            step = migrations[version - 1]
            step(db)
            conn.execute(
                "INSERT INTO migrations (version, name, applied) VALUES (?, ?, ?)",
                (version, step.__name__, time.time() if now is None else now),
            )
            applied.append(version)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def _refuse_newer(db: Database, current: int, known: int) -> None:
    if current > known:
        raise CatalogError(
            f"{db.conn.execute('PRAGMA database_list').fetchone()[2]} has schema version "
            f"{current}, newer than the {known} this cvtui knows; upgrade cvtui"
        )
