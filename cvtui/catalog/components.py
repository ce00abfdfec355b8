"""Catalog side of the reproducibility store: component versions, code snapshots, manifests."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

    from sqlite_utils import Database

ROOT_CATEGORY = "."  # the category of a file at the top of a code dir


def migration_5_reproducibility(db: Database) -> None:
    """Content store (blobs), component versions, code snapshots, run manifests, provenance."""
    # The sync's local block signatures were called `blobs`; the content store takes the name.
    db.execute("ALTER TABLE blobs RENAME TO signatures")
    db.execute(
        "CREATE TABLE blobs ("
        " hash TEXT PRIMARY KEY,"  # xxh3_128 hex of the content: <home>/blobs/<hash[:2]>/<hash>
        " size INTEGER NOT NULL,"  # bytes
        " kind TEXT NOT NULL,"  # what first stored it: component, snapshot, model, pip_freeze, diff
        " created REAL NOT NULL)"  # unix seconds
    )
    # One row per version of a file of a code dir; a version is never deleted.
    db.execute(
        "CREATE TABLE components ("
        " root TEXT NOT NULL,"  # absolute path of the code dir on this machine
        " path TEXT NOT NULL,"  # relative to root, '/'-separated
        " category TEXT NOT NULL,"  # first part of path, '.' for a top-level file
        " name TEXT NOT NULL,"  # file name without its last suffix
        " hash TEXT NOT NULL REFERENCES blobs(hash),"
        " size INTEGER NOT NULL,"  # bytes
        " executable INTEGER NOT NULL DEFAULT 0,"
        " created REAL NOT NULL,"  # unix seconds: when this version was first seen
        " source TEXT NOT NULL,"  # scan, submit, host:<name>, activate
        " active INTEGER NOT NULL DEFAULT 0,"  # 1: the version in the code dir, shipped next
        " PRIMARY KEY (root, path, hash))"
    )
    db.execute("CREATE UNIQUE INDEX components_active ON components (root, path) WHERE active = 1")
    db.execute("CREATE INDEX components_hash ON components (hash)")
    db.execute("CREATE INDEX components_category ON components (root, category)")
    # What the last scan saw, so a warm scan hashes only files whose size or mtime changed.
    db.execute(
        "CREATE TABLE component_scan ("
        " root TEXT NOT NULL,"
        " path TEXT NOT NULL,"
        " size INTEGER NOT NULL,"  # bytes
        " mtime_ns INTEGER NOT NULL,"
        " hash TEXT NOT NULL,"
        " PRIMARY KEY (root, path)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE snapshots ("
        " hash TEXT PRIMARY KEY,"  # runs.code_hash
        " root TEXT NOT NULL,"  # the code dir it was taken from
        " files INTEGER NOT NULL,"
        " size INTEGER NOT NULL,"  # bytes
        " created REAL NOT NULL)"  # unix seconds
    )
    db.execute(
        "CREATE TABLE snapshot_files ("
        " snapshot TEXT NOT NULL REFERENCES snapshots(hash),"
        " path TEXT NOT NULL,"
        " hash TEXT NOT NULL REFERENCES blobs(hash),"
        " size INTEGER NOT NULL,"  # bytes
        " executable INTEGER NOT NULL,"
        " PRIMARY KEY (snapshot, path)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX snapshot_files_hash ON snapshot_files (hash)")
    # Written when a run is dispatched: the exact file versions it ran with.
    db.execute(
        "CREATE TABLE run_manifests ("
        " run_id TEXT NOT NULL REFERENCES runs(id),"
        " path TEXT NOT NULL,"
        " hash TEXT NOT NULL REFERENCES blobs(hash),"
        " PRIMARY KEY (run_id, path)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX run_manifests_hash ON run_manifests (hash)")
    db.execute(
        "CREATE TABLE run_provenance ("
        " run_id TEXT PRIMARY KEY REFERENCES runs(id),"
        " code_hash TEXT,"  # the snapshot
        " code_root TEXT,"  # the code dir it was taken from
        " git_head TEXT,"  # `git rev-parse HEAD` when the code dir is a work tree
        " git_dirty INTEGER,"  # 1 when tracked files differed from HEAD
        " git_diff_hash TEXT,"  # blob of `git diff HEAD` when dirty
        " command TEXT,"  # JSON: as rendered for the host
        " config TEXT,"  # JSON: the resolved config
        " env TEXT,"  # JSON: the env the run config gave
        " host TEXT,"
        " gpus TEXT,"  # JSON list of indexes
        " gpu_models TEXT,"  # JSON list of names, one per GPU given
        " driver TEXT,"  # GPU driver version
        " python TEXT,"  # the host's python3 version
        " pip_freeze_hash TEXT,"  # blob of the host's `pip freeze`
        " submitted_at REAL,"  # unix seconds: the submit half was written
        " dispatched_at REAL)"  # unix seconds: the host half was written
    )
    # Installed packages (as `pip freeze` lists them) of each host's interpreter and its GPU
    # driver, read at most once per connection and hour.
    db.execute(
        "CREATE TABLE host_environments ("
        " host TEXT PRIMARY KEY,"
        " python TEXT,"
        " pip_freeze_hash TEXT,"  # blob, NULL when pip is missing
        " reason TEXT,"  # why there is no freeze
        " driver TEXT,"  # GPU driver version; NULL without NVIDIA GPUs ('simulated' in the lab)
        " taken REAL NOT NULL)"  # unix seconds
    )
    db.execute(
        "CREATE TABLE models ("
        " name TEXT PRIMARY KEY,"
        " tags TEXT NOT NULL DEFAULT '[]',"  # JSON list of strings
        " run_id TEXT NOT NULL,"
        " path TEXT NOT NULL,"  # relative to the run's mirror dir
        " hash TEXT NOT NULL REFERENCES blobs(hash),"
        " size INTEGER NOT NULL,"  # bytes
        " created REAL NOT NULL)"  # unix seconds
    )
    db.execute("CREATE INDEX models_hash ON models (hash)")
    db.execute("ALTER TABLE runs ADD COLUMN reproduces TEXT")  # the run this one reproduces


def split_component(path: str) -> tuple[str, str]:
    """(category, name) of a relative path: its first directory and its stem."""
    parts = path.split("/")
    category = parts[0] if len(parts) > 1 else ROOT_CATEGORY
    leaf = parts[-1]
    stem = leaf.rsplit(".", 1)[0] if "." in leaf.lstrip(".") else leaf
    return category, stem


@dataclass(frozen=True)
class VersionEntry:
    """One file version to record under a code dir."""

    path: str
    hash: str  # xxh3_128 hex, already in the blob store
    size: int  # bytes
    executable: bool = False


class ComponentsMixin:
    """Catalog methods for component versions, snapshots and manifests (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- components -----------------------------------------------------------------------
    def record_versions(
        self, root: str, entries: Sequence[VersionEntry], source: str, *, activate: bool
    ) -> list[VersionEntry]:
        """Add the versions the store lacks; with activate, make each entry its path's active one.

        Returns the entries that were new versions.
        """
        now = time.time()
        added: list[VersionEntry] = []
        with self._write() as conn:
            for entry in entries:
                category, name = split_component(entry.path)
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO components (root, path, category, name, hash, size,"
                    " executable, created, source, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        root,
                        entry.path,
                        category,
                        name,
                        entry.hash,
                        entry.size,
                        int(entry.executable),
                        now,
                        source,
                    ),
                )
                if cursor.rowcount:
                    added.append(entry)
                if activate:
                    _activate(conn, root, entry.path, entry.hash)
        return added

    def activate_version(self, root: str, path: str, hash_: str) -> bool:
        """Make a known version the active one; False when the store has no such version."""
        with self._write() as conn:
            known = conn.execute(
                "SELECT 1 FROM components WHERE root = ? AND path = ? AND hash = ?",
                (root, path, hash_),
            ).fetchone()
            if known is None:
                return False
            _activate(conn, root, path, hash_)
        return True

    def deactivate_missing(self, root: str, present: Iterable[str]) -> int:
        """Paths of root no longer in the code dir have no active version; how many changed."""
        keep = set(present)
        with self._write() as conn:
            active = [
                r[0]
                for r in conn.execute(
                    "SELECT path FROM components WHERE root = ? AND active = 1", (root,)
                )
            ]
            gone = [p for p in active if p not in keep]
            conn.executemany(
                "UPDATE components SET active = 0 WHERE root = ? AND path = ? AND active = 1",
                [(root, p) for p in gone],
            )
        return len(gone)

    def component_roots(self) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT root FROM components ORDER BY 1")]

    def active_versions(self, root: str) -> dict[str, dict[str, Any]]:
        """path -> the active version's row, for one code dir."""
        with self._read() as conn:
            cursor = conn.execute(
                "SELECT * FROM components WHERE root = ? AND active = 1 ORDER BY path", (root,)
            )
            names = [d[0] for d in cursor.description]
            return {row[1]: dict(zip(names, row, strict=True)) for row in cursor}

    def version_hashes(self, root: str) -> dict[str, set[str]]:
        """path -> every hash the store holds for it, for one code dir."""
        found: dict[str, set[str]] = {}
        with self._read() as conn:
            for path, hash_ in conn.execute(
                "SELECT path, hash FROM components WHERE root = ?", (root,)
            ):
                found.setdefault(path, set()).add(hash_)
        return found

    def component_versions(self, root: str, path: str) -> list[dict[str, Any]]:
        """Every version of one file, oldest first."""
        with self._read() as conn:
            cursor = conn.execute(
                "SELECT * FROM components WHERE root = ? AND path = ? ORDER BY created, hash",
                (root, path),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    def version_history(self, root: str) -> list[tuple[str, str, float, str]]:
        """(path, hash, created unix seconds, source) of every version of a code dir's files."""
        with self._read() as conn:
            return [
                (str(path), str(hash_), float(created), str(source))
                for path, hash_, created, source in conn.execute(
                    "SELECT path, hash, created, source FROM components WHERE root = ?", (root,)
                )
            ]

    # -- scan cache -----------------------------------------------------------------------
    def update_scan_cache(
        self, root: str, rows: Sequence[tuple[str, int, int, str]], gone: Sequence[str]
    ) -> None:
        """Store (path, size, mtime_ns, hash) of changed files and forget removed ones."""
        if not rows and not gone:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO component_scan (root, path, size, mtime_ns, hash)"
                " VALUES (?, ?, ?, ?, ?)",
                [(root, *row) for row in rows],
            )
            conn.executemany(
                "DELETE FROM component_scan WHERE root = ? AND path = ?",
                [(root, p) for p in gone],
            )

    def scan_state(self, root: str) -> tuple[dict[str, tuple[int, int, str]], dict[str, str]]:
        """(path -> (size bytes, mtime_ns, hash) as the last scan saw it, path -> active hash)
        of root, in one read."""
        with self._read() as conn:
            cache = {
                path: (size, mtime_ns, hash_)
                for path, size, mtime_ns, hash_ in conn.execute(
                    "SELECT path, size, mtime_ns, hash FROM component_scan WHERE root = ?", (root,)
                )
            }
            active = dict(
                conn.execute(
                    "SELECT path, hash FROM components WHERE root = ? AND active = 1", (root,)
                ).fetchall()
            )
        return cache, active

    # -- listings -------------------------------------------------------------------------
    def component_listing(self, root: str, category: str | None = None) -> list[dict[str, Any]]:
        """One row per path of root: its active version (None once removed), versions, last change.

        Keys: path, category, name, active (hash), size (bytes, of the active version),
        executable, versions, changed (unix seconds the newest version was first seen).
        """
        with self._read() as conn:
            cursor = conn.execute(
                "SELECT path, category, name,"
                " MAX(CASE WHEN active = 1 THEN hash END) AS active,"
                " MAX(CASE WHEN active = 1 THEN size END) AS size,"
                " MAX(CASE WHEN active = 1 THEN executable END) AS executable,"
                " COUNT(*) AS versions, MAX(created) AS changed"
                " FROM components WHERE root = ? AND (? IS NULL OR category = ?)"
                " GROUP BY path ORDER BY path",
                (root, category, category),
            )
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor]
        for row in rows:
            row["executable"] = None if row["executable"] is None else bool(row["executable"])
        return rows

    def component_categories(self, root: str) -> list[str]:
        with self._read() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT category FROM components WHERE root = ? ORDER BY 1", (root,)
                )
            ]

    def runs_using_version(self, root: str, path: str, hash_: str) -> list[dict[str, Any]]:
        """Runs (id, name, state) dispatched with this version of root/path, oldest first.

        The same content at another path, or in another code dir, does not count.
        """
        with self._read() as conn:
            return [
                {"id": run_id, "name": name, "state": state}
                for run_id, name, state in conn.execute(
                    "SELECT m.run_id, r.name, r.state FROM run_manifests m"
                    " JOIN runs r ON r.id = m.run_id"
                    " LEFT JOIN snapshots s ON s.hash = r.code_hash"
                    " WHERE m.hash = ? AND m.path = ? AND (s.root IS NULL OR s.root = ?)"
                    " ORDER BY m.run_id",
                    (hash_, path, root),
                )
            ]

    # -- snapshots and manifests ----------------------------------------------------------
    def record_snapshot(self, snapshot_hash: str, root: str, files: Sequence[VersionEntry]) -> None:
        """The per-file manifest of a code snapshot (once per snapshot hash)."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO snapshots (hash, root, files, size, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (snapshot_hash, root, len(files), sum(f.size for f in files), time.time()),
            )
            if cursor.rowcount:
                conn.executemany(
                    "INSERT OR IGNORE INTO snapshot_files (snapshot, path, hash, size, executable)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(snapshot_hash, f.path, f.hash, f.size, int(f.executable)) for f in files],
                )

    def snapshot_manifest(self, snapshot_hash: str) -> list[VersionEntry] | None:
        """The files of a snapshot, or None when the catalog never recorded it."""
        with self._read() as conn:
            if (
                conn.execute("SELECT 1 FROM snapshots WHERE hash = ?", (snapshot_hash,)).fetchone()
                is None
            ):
                return None
            return [
                VersionEntry(path, hash_, size, bool(executable))
                for path, hash_, size, executable in conn.execute(
                    "SELECT path, hash, size, executable FROM snapshot_files"
                    " WHERE snapshot = ? ORDER BY path",
                    (snapshot_hash,),
                )
            ]

    def snapshot_root(self, snapshot_hash: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT root FROM snapshots WHERE hash = ?", (snapshot_hash,))
            found = row.fetchone()
        return None if found is None else str(found[0])

    def write_run_manifest(self, run_id: str, snapshot_hash: str) -> int:
        """Record the file versions a dispatched run ships; rows written (0 if already done)."""
        with self._write() as conn:
            return conn.execute(
                "INSERT OR IGNORE INTO run_manifests (run_id, path, hash)"
                " SELECT ?, path, hash FROM snapshot_files WHERE snapshot = ?",
                (run_id, snapshot_hash),
            ).rowcount

    def run_manifest(self, run_id: str) -> dict[str, str]:
        """path -> hash of the files a run was dispatched with."""
        with self._read() as conn:
            return dict(
                conn.execute(
                    "SELECT path, hash FROM run_manifests WHERE run_id = ? ORDER BY path",
                    (run_id,),
                )
            )


def _activate(conn: sqlite3.Connection, root: str, path: str, hash_: str) -> None:
    conn.execute(
        "UPDATE components SET active = 0 WHERE root = ? AND path = ? AND active = 1 AND hash != ?",
        (root, path, hash_),
    )
    conn.execute(
        "UPDATE components SET active = 1 WHERE root = ? AND path = ? AND hash = ?",
        (root, path, hash_),
    )
