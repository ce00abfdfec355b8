"""Rebuilding a catalog (`cvtui reindex`): restored runs, their events and files, kept tables.

A rebuilt catalog is a fresh file filled from the hosts' run dirs and the local mirror; these
are the writes that put runs back as they were (any state, their own times), plus the copy of
what cannot be rebuilt (models, blobs, components, history ...) from the old file when SQLite
can still read it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog.metrics import FILE_COLUMNS
from cvtui.catalog.runs import JSON_COLUMNS, RUN_COLUMNS, priority_rank
from cvtui.states import RUN_STATES

# The columns of a run that its host keeps in <run_dir>/run.json (StartRequest.record): what no
# status.json says. The resolved config is the spec's own; it is not stored twice.
RECORD_COLUMNS = (
    "id",
    "name",
    "project",
    "user",
    "priority",
    "submitted",
    "command",
    "params",
    "spec",
    "code_hash",
    "resources",
    "attempt",
    "retries",
    "dispatched",
)
# Tables a reindex fills itself: from the hosts and the mirror.
REBUILT_TABLES = ("runs", "run_events", "files", "metric_series", "metric_chunks")
# Tables nothing outside the catalog holds: copied from the old file when it can be read, lost
# with it otherwise. (hosts keeps drains; gpus and processes come back with the next telemetry.)
KEPT_TABLES = (
    "hosts",
    "commands",
    "blobs",
    "components",
    "component_scan",
    "snapshots",
    "snapshot_files",
    "models",
    "run_inputs",
    "run_manifests",
    "run_provenance",
    "host_environments",
    "telemetry_raw",
    "telemetry_chunks",
    "gpu_idle",
    "energy_usage",
    "run_energy",
    "signatures",
)
_RESTORED_FILE_COLUMNS = tuple(c for c in FILE_COLUMNS if c not in ("parse_offset", "parse_state"))


# A record whose spec's config_text was left out: it is the run's config.yaml, beside it.
CONFIG_TEXT_IN_FILE = "config_text_in_config_yaml"


# The starting engine's home id (cvtui/paths.controller_id), set on the run it starts: which
# controller a run dir on a shared host root belongs to.
CONTROLLER_KEY = "controller"


def run_record(run: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a catalog run row its host keeps for a reindex (decoded JSON columns).

    The spec's config_text is what the host writes as config.yaml: it is not sent twice, so
    the start request grows by the spec's data alone.
    """
    record = {name: run.get(name) for name in RECORD_COLUMNS}
    if run.get(CONTROLLER_KEY):
        record[CONTROLLER_KEY] = run[CONTROLLER_KEY]
    spec = record.get("spec")
    if isinstance(spec, dict) and spec.get("config_text"):
        record["spec"] = {k: v for k, v in spec.items() if k != "config_text"}
        record[CONFIG_TEXT_IN_FILE] = True
    return record


def spec_from_record(record: Mapping[str, Any], config_yaml: str | None) -> dict[str, Any]:
    """The run's spec as the catalog held it, from its record and its config.yaml."""
    spec = dict(record.get("spec") or {})
    if record.get(CONFIG_TEXT_IN_FILE) and config_yaml is not None:
        spec["config_text"] = config_yaml
    return spec


class RebuildMixin:
    """Catalog methods a reindex writes the fresh catalog with (mixed into Catalog)."""

    if TYPE_CHECKING:
        path: Path
        _lock: threading.RLock
        _conn: sqlite3.Connection

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def restore_run(
        self,
        run: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Insert a run as it was (its state, times and every column given), its events in
        order, and its file rows with the parse positions cleared (metrics are parsed again).
        A run already in the catalog is replaced."""
        if run.get("state") not in RUN_STATES:
            raise ValueError(f"run {run.get('id')!r}: unknown state {run.get('state')!r}")
        row = {name: run[name] for name in RUN_COLUMNS if run.get(name) is not None}
        row["priority_rank"] = priority_rank(row.get("priority", "normal"))
        for name in JSON_COLUMNS & set(row):
            row[name] = json.dumps(row[name])
        names = list(row)
        file_names = ("run_id", *_RESTORED_FILE_COLUMNS)
        with self._write() as conn:
            conn.execute("DELETE FROM run_events WHERE run_id = ?", (row["id"],))
            conn.execute("DELETE FROM files WHERE run_id = ?", (row["id"],))
            conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(names)}) "  # noqa: S608 (fixed names)
                f"VALUES ({', '.join('?' * len(names))})",
                list(row.values()),
            )
            conn.executemany(
                "INSERT INTO run_events (run_id, time, state, detail) VALUES (?, ?, ?, ?)",
                [(row["id"], e["time"], e["state"], e.get("detail")) for e in events],
            )
            conn.executemany(
                f"INSERT INTO files ({', '.join(file_names)}) "  # noqa: S608 (fixed names)
                f"VALUES ({', '.join('?' * len(file_names))})",
                [(row["id"], *(f.get(c) for c in _RESTORED_FILE_COLUMNS)) for f in files],
            )

    def copy_kept_tables(
        self, old: Path, skip_runs: Sequence[str]
    ) -> tuple[dict[str, int], list[str]]:
        """Copy KEPT_TABLES, and the runs (with events) not in skip_runs, from the old catalog.

        Rows per table copied, and a problem per table SQLite could not read. Only columns both
        files have are copied, so an old file of an earlier schema still gives what it has.
        """
        copied: dict[str, int] = {}
        problems: list[str] = []
        with self._lock:
            try:
                self._conn.execute("ATTACH DATABASE ? AS old", (str(old),))
            except sqlite3.Error as exc:
                return copied, [f"cannot open {old}: {exc}"]
            try:
                try:  # a file that is no database at all fails here, said once
                    self._conn.execute("SELECT count(*) FROM old.sqlite_master").fetchone()
                except sqlite3.DatabaseError as exc:
                    return copied, [f"{old}: {exc}"]
                for table in (*KEPT_TABLES, "runs", "run_events"):
                    try:
                        copied[table] = self._copy_table(table, json.dumps(list(skip_runs)))
                    except sqlite3.Error as exc:
                        problems.append(f"{table}: {exc}")
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
            finally:
                self._conn.execute("DETACH DATABASE old")
        return copied, problems

    def _copy_table(self, table: str, skip: str) -> int:
        conn = self._conn
        here = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
        there = {r[1] for r in conn.execute(f"PRAGMA old.table_info({table})")}
        columns = [c for c in here if c in there and not (table == "run_events" and c == "id")]
        if not columns:
            return 0
        where = ""
        if table == "runs":
            where = " WHERE id NOT IN (SELECT value FROM json_each(?1))"
        elif table == "run_events":
            # Events of runs copied from the old file (not those rebuilt), in their order.
            where = (
                " WHERE run_id NOT IN (SELECT value FROM json_each(?1))"
                " AND run_id IN (SELECT id FROM main.runs) ORDER BY id"
            )
        names = ", ".join(columns)
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.execute(
                f"INSERT OR IGNORE INTO main.{table} ({names}) "  # noqa: S608 (schema names)
                f"SELECT {names} FROM old.{table}{where}",
                (skip,) if where else (),
            ).rowcount
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return int(count)

    def checkpoint_and_close(self) -> None:
        """Move the WAL into the file and close, so the file alone is the whole catalog."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("PRAGMA journal_mode = DELETE")
            self._conn.close()
