"""Migrations: applied once, recorded with their time, refused when the file is newer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from cvtui.catalog import Catalog, CatalogError
from cvtui.catalog.schema import MIGRATIONS, migrate

TABLES = {
    "migrations",
    "hosts",
    "gpus",
    "gpu_processes",
    "telemetry_raw",
    "telemetry_chunks",
    "gpu_idle",
    "energy_usage",
    "run_energy",
    "commands",
    "blobs",
    "signatures",
    "components",
    "component_scan",
    "snapshots",
    "snapshot_files",
    "run_manifests",
    "run_provenance",
    "host_environments",
    "models",
    "metric_series",
    "metric_chunks",
    "runs",
    "run_events",
    "run_inputs",
}
LATEST = len(MIGRATIONS)


def migration_rows(path: Path) -> list[tuple[int, str, float]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version, name, applied FROM migrations").fetchall()
    finally:
        conn.close()


def test_fresh_catalog_has_every_table_and_records_version(catalog_path: Path) -> None:
    with Catalog(catalog_path) as cat:
        assert cat.schema_version() == LATEST == 13
        assert set(cat.db.table_names()) >= TABLES
        assert "telemetry" not in cat.db.table_names()  # moved into telemetry_raw by 7
        assert {"telemetry_chunks_series", "gpu_processes_host"} <= {
            i.name for t in ("telemetry_chunks", "gpu_processes") for i in cat.db.table(t).indexes
        }
        assert cat.db.table("gpus").pks == ["host", "idx"]
    rows = migration_rows(catalog_path)
    assert [(version, name) for version, name, _ in rows] == [
        (1, "migration_1_monitoring"),
        (2, "migration_2_runs"),
        (3, "migration_3_queue"),
        (4, "migration_4_sync"),
        (5, "migration_5_reproducibility"),
        (6, "migration_6_metric_series"),
        (7, "migration_7_work_dirs"),
        (8, "migration_8_gpu_leases"),
        (9, "migration_9_operations"),
        (10, "migration_10_slurm"),
        (11, "migration_11_run_inputs"),
        (12, "migration_12_disk_usage"),
        (13, "migration_13_energy_by_user"),
    ]
    assert all(applied > 1.6e9 for _, _, applied in rows)  # unix seconds, not a counter


def test_reopening_applies_nothing_again(catalog_path: Path) -> None:
    Catalog(catalog_path).close()
    before = migration_rows(catalog_path)
    with Catalog(catalog_path) as cat:
        assert cat.schema_version() == LATEST
        assert migrate(cat.db) == []
    assert migration_rows(catalog_path) == before


def test_database_at_version_zero_is_brought_up_to_date(catalog_path: Path) -> None:
    # An older cvtui's file: the migrations table exists but records nothing, plus a table
    # of the user's own that the migration must leave alone.
    conn = sqlite3.connect(catalog_path)
    conn.executescript(
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied REAL NOT NULL);"
        "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('keep me');"
    )
    conn.close()
    with Catalog(catalog_path) as cat:
        assert cat.schema_version() == LATEST
        assert set(cat.db.table_names()) >= TABLES
        assert [r["text"] for r in cat.db.table("notes").rows] == ["keep me"]
    assert [r[0] for r in migration_rows(catalog_path)] == list(range(1, LATEST + 1))


def test_a_new_migration_runs_once_and_older_code_refuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    Catalog(path).close()
    calls: list[int] = []

    def migration_n_add_notes(db: Database) -> None:
        calls.append(1)
        db.table("notes").create({"id": int, "text": str}, pk="id")

    db = Database(sqlite3.connect(path, isolation_level=None))
    assert migrate(db, (*MIGRATIONS, migration_n_add_notes), now=123.0) == [LATEST + 1]
    assert migrate(db, (*MIGRATIONS, migration_n_add_notes)) == []
    db.close()
    assert calls == [1]
    assert migration_rows(path)[LATEST] == (LATEST + 1, "migration_n_add_notes", 123.0)
    # This cvtui knows LATEST migrations; it must not write to a file from a newer one.
    newer = rf"schema version {LATEST + 1}, newer than the {LATEST}"
    with pytest.raises(CatalogError, match=newer):
        Catalog(path)


def test_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    Catalog(path).close()

    def migration_n_broken(db: Database) -> None:
        db.table("half_done").create({"id": int}, pk="id")
        raise RuntimeError("disk on fire")

    db = Database(sqlite3.connect(path, isolation_level=None))
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(db, (*MIGRATIONS, migration_n_broken))
    assert "half_done" not in db.table_names()
    db.close()
    assert [r[0] for r in migration_rows(path)] == list(range(1, LATEST + 1))


def test_a_file_that_is_not_sqlite_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(CatalogError, match=r"garbage\.bin"):
        Catalog(path)


def test_catalog_never_imports_textual_and_defers_sqlite_utils() -> None:
    code = (
        "import sys, cvtui.catalog\n"
        "print('sqlite_utils' in sys.modules)\n"
        "cvtui.catalog.Catalog(sys.argv[1]).close()\n"
        "print('textual' in sys.modules)\n"
    )
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(home) / "catalog.db")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    assert out.split() == ["False", "False"]


def test_many_connections_opening_a_fresh_file_at_once_migrate_it_once(
    catalog_path: Path,
) -> None:
    start = threading.Barrier(6)
    versions: list[int] = []
    errors: list[BaseException] = []

    def open_catalog() -> None:
        try:
            start.wait()
            with Catalog(catalog_path) as cat:
                versions.append(cat.schema_version())
        except BaseException as exc:  # handed to the main thread's assert
            errors.append(exc)

    threads = [threading.Thread(target=open_catalog) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert versions == [LATEST] * 6
    assert [r[0] for r in migration_rows(catalog_path)] == list(range(1, LATEST + 1))


def test_migration_7_keeps_an_older_catalogs_gpus_and_adds_their_leases(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(path, isolation_level=None))
    migrate(db, MIGRATIONS[:6])
    db.execute("INSERT INTO gpus (host, idx, uuid, name) VALUES ('h', 0, 'GPU-0', 'A100')")
    db.conn.close()
    with Catalog(path) as catalog:
        row = catalog.db.table("gpus").get(("h", 0))
        assert (row["uuid"], row["leased_by"]) == ("GPU-0", None)
