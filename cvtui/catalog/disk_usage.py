"""Catalog tables of disk usage per host, path and top-level dir owner (the agent's scans).

The engine stores each host's latest scan of each `disk_usage:` path as the agent reported it
(remote_agent/disk_usage.py); these methods replace it, read it per host, and sum it per user.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from remote_agent.disk_usage import PathUsage

if TYPE_CHECKING:
    from sqlite_utils import Database


def migration_12_disk_usage(db: Database) -> None:
    """disk_scans (one row per host and path) and disk_usage (one per top-level entry)."""
    db.execute(
        "CREATE TABLE disk_scans ("
        " host TEXT NOT NULL,"
        " path TEXT NOT NULL,"  # absolute, on the host
        " scanned_at REAL NOT NULL,"  # unix seconds (the host's clock) the scan ended
        " partial INTEGER NOT NULL,"  # 1: some entry is partial or kept from an older scan
        " error TEXT NOT NULL DEFAULT '',"  # why the path itself was unreadable
        " PRIMARY KEY (host, path))"
    )
    db.execute(
        "CREATE TABLE disk_usage ("
        " host TEXT NOT NULL,"
        " path TEXT NOT NULL,"
        " entry TEXT NOT NULL,"  # the top-level name under path
        " uid INTEGER NOT NULL,"
        " owner TEXT NOT NULL,"  # user name on the host, or the uid as text
        " bytes INTEGER NOT NULL,"  # allocated (st_blocks * 512), hard links once
        " files INTEGER NOT NULL,"
        " scanned_at REAL NOT NULL,"  # when this entry's figure was taken
        " partial INTEGER NOT NULL,"
        " reason TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (host, path, entry))"
    )
    db.execute("CREATE INDEX disk_usage_owner ON disk_usage (owner)")


class DiskUsageMixin:
    """Catalog methods for the agents' disk usage scans; mixed into Catalog."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def record_disk_usage(
        self, host: str, scans: Iterable[PathUsage], configured: Sequence[str]
    ) -> int:
        """Store a host's scans where newer than the stored ones; forget paths no longer
        configured for it. Returns how many paths were replaced."""
        replaced = 0
        with self._write() as conn:
            conn.execute(
                "DELETE FROM disk_usage WHERE host = ? AND path NOT IN "
                "(SELECT value FROM json_each(?))",
                (host, _json_list(configured)),
            )
            conn.execute(
                "DELETE FROM disk_scans WHERE host = ? AND path NOT IN "
                "(SELECT value FROM json_each(?))",
                (host, _json_list(configured)),
            )
            for scan in scans:
                if scan.path not in configured:
                    continue
                stored = conn.execute(
                    "SELECT scanned_at FROM disk_scans WHERE host = ? AND path = ?",
                    (host, scan.path),
                ).fetchone()
                if stored is not None and stored[0] >= scan.scanned_at:
                    continue  # the same scan polled again: nothing to write
                conn.execute(
                    "INSERT OR REPLACE INTO disk_scans (host, path, scanned_at, partial, error) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (host, scan.path, scan.scanned_at, int(scan.partial), scan.error),
                )
                conn.execute(
                    "DELETE FROM disk_usage WHERE host = ? AND path = ?", (host, scan.path)
                )
                conn.executemany(
                    "INSERT INTO disk_usage (host, path, entry, uid, owner, bytes, files, "
                    "scanned_at, partial, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (host, scan.path, e.name, e.uid, e.owner, e.bytes, e.files,
                         e.scanned_at, int(e.partial), e.reason)
                        for e in scan.entries
                    ],
                )  # fmt: skip
                replaced += 1
        return replaced

    def disk_usage_by_host(self, names: Sequence[str] | None = None) -> dict[str, list[Any]]:
        """Host -> its paths' latest scans, each with its entries biggest first (JSON-ready)."""
        with self._read() as conn:
            return read_disk_usage(conn, names)

    def disk_usage_by_user(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per owner: bytes and files summed over hosts and paths, biggest first."""
        wanted = None if names is None else _json_list(names)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT owner, sum(bytes), sum(files), count(DISTINCT host), max(partial), "
                "min(scanned_at) FROM disk_usage "
                "WHERE ?1 IS NULL OR host IN (SELECT value FROM json_each(?1)) "
                "GROUP BY owner ORDER BY sum(bytes) DESC, owner",
                (wanted,),
            ).fetchall()
        return [
            {
                "user": owner,
                "bytes": int(size),
                "files": int(files),
                "hosts": int(hosts),
                "partial": bool(partial),  # some figure is partial or from an older scan
                "oldest_scan": oldest,
            }
            for owner, size, files, hosts, partial, oldest in rows
        ]


def read_disk_usage(
    conn: sqlite3.Connection, names: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """Host -> its paths' latest scans, each with its entries biggest first (JSON-ready);
    shared by Catalog and the dashboard's read-only connection."""
    wanted = None if names is None else _json_list(names)
    scans = conn.execute(
        "SELECT host, path, scanned_at, partial, error FROM disk_scans "
        "WHERE ?1 IS NULL OR host IN (SELECT value FROM json_each(?1)) "
        "ORDER BY host, path",
        (wanted,),
    ).fetchall()
    entries = conn.execute(
        "SELECT host, path, entry, uid, owner, bytes, files, scanned_at, partial, reason "
        "FROM disk_usage WHERE ?1 IS NULL OR host IN (SELECT value FROM json_each(?1)) "
        "ORDER BY bytes DESC, entry",
        (wanted,),
    ).fetchall()
    by_path: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for host, path, entry, uid, owner, size, files, scanned_at, partial, reason in entries:
        by_path.setdefault((host, path), []).append(
            {
                "entry": entry,
                "uid": uid,
                "owner": owner,
                "bytes": size,
                "files": files,
                "scanned_at": scanned_at,
                "partial": bool(partial),
                "reason": reason,
            }
        )
    report: dict[str, list[Any]] = {}
    for host, path, scanned_at, partial, error in scans:
        report.setdefault(host, []).append(
            {
                "path": path,
                "scanned_at": scanned_at,
                "partial": bool(partial),
                "error": error,
                "entries": by_path.get((host, path), []),
            }
        )
    return report


def _json_list(items: Sequence[str]) -> str:
    return json.dumps(list(items))
