"""Synced files, their metrics and block signatures in the catalog: migration 4 and its queries."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from cvtui.catalog.metric_store import append_points, by_step, delete_file_points, series_points

if TYPE_CHECKING:
    from sqlite_utils import Database

    from cvtui.metrics_parse import MetricRow

# A file's sync state: synced (the local copy matches the host's last listing), syncing (a
# transfer runs), outdated (the host has changes not yet here), skipped (not synced on purpose:
# a symlink out of the run dir, a name that is not UTF-8 ...), vanished (gone from the host;
# the local copy is kept), error (the host refused it; see reason).
FILE_STATES = ("synced", "syncing", "outdated", "skipped", "vanished", "error")
RUN_SYNC_STATES = ("synced", "syncing", "outdated")

FILE_COLUMNS = (
    "run_id",
    "path",
    "size",
    "synced_size",
    "sync_status",
    "strategy",
    "hash",
    "reason",
    "mtime",
    "synced_at",
    "mtime_ns",
    "ino",
    "synced_mtime_ns",
    "synced_ino",
    "local_mtime_ns",
    "local_ino",
    "parse_offset",
    "parse_state",
    "updated",
)
_SETTABLE = frozenset(FILE_COLUMNS) - {"run_id", "path", "updated", "parse_offset", "parse_state"}
_SELECT_FILES = f"SELECT {', '.join(FILE_COLUMNS)} FROM files"  # noqa: S608 (fixed names)


def migration_4_sync(db: Database) -> None:
    """Synced files with their sync state, metrics parsed from them, local block signatures."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS files ("
        " run_id TEXT NOT NULL REFERENCES runs(id),"
        " path TEXT NOT NULL,"  # relative to the run dir, '/'-separated, as on the host
        " size INTEGER,"  # bytes on the host, as last listed
        " synced_size INTEGER NOT NULL DEFAULT 0,"  # bytes of the local copy that match the host
        " sync_status TEXT NOT NULL,"  # one of FILE_STATES
        " strategy TEXT,"  # append, whole or delta: how it was last synced
        " hash TEXT,"  # 'algo:hex' block-tree digest of the synced version, once verified
        " reason TEXT,"  # why skipped, outdated or in error
        " mtime REAL,"  # unix seconds, host clock, as last listed
        " synced_at REAL,"  # unix seconds, controller clock
        " mtime_ns INTEGER,"  # host stat as last listed (ns) ...
        " ino INTEGER,"  # ... and inode: a new inode means the file was replaced
        " synced_mtime_ns INTEGER,"  # the host version the local copy matches
        " synced_ino INTEGER,"
        " local_mtime_ns INTEGER,"  # the local copy as synced: a different one is re-hashed
        " local_ino INTEGER,"
        " parse_offset INTEGER,"  # bytes of the local copy parsed into metrics
        " parse_state TEXT,"  # JSON of metrics_parse.ParseState
        " updated REAL,"  # unix seconds of the last write
        " PRIMARY KEY (run_id, path))"
    )
    # No primary key on metrics: rows are only appended and deleted per file, and an index on
    # (run_id, key, step) serves every read (plots, tables, last and best values).
    db.execute(
        "CREATE TABLE IF NOT EXISTS metrics ("
        " run_id TEXT NOT NULL,"
        " file TEXT NOT NULL,"  # the files.path it was parsed from
        " step NUMERIC,"  # the step column (or JSON key), else the row number from 0
        " key TEXT NOT NULL,"
        " value REAL,"  # NULL when the cell is not a number
        " text TEXT)"  # the cell as written when it is not a plain number
    )
    db.execute("CREATE INDEX IF NOT EXISTS metrics_run_key_step ON metrics (run_id, key, step)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS blobs ("
        " hash TEXT PRIMARY KEY,"  # 'algo:hex' block-tree digest of a file's content
        " algo TEXT NOT NULL,"
        " size INTEGER NOT NULL,"  # bytes
        " block_size INTEGER NOT NULL,"  # bytes per leaf
        " leaves BLOB NOT NULL,"  # 16-byte leaf digests, so a local copy is never re-hashed
        " created REAL NOT NULL)"  # unix seconds
    )
    db.execute("CREATE INDEX IF NOT EXISTS files_hash ON files (hash)")


def blob_key(algo: str, digest: bytes) -> str:
    return f"{algo}:{digest.hex()}"


class SyncMixin:
    """Catalog methods for synced files, metrics and local block signatures (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def update_run(self, run_id: str, *, now: float | None = None, **fields: Any) -> None: ...

    # -- files ------------------------------------------------------------------------

    def files_of(self, run_id: str) -> list[dict[str, Any]]:
        """Every file row of a run, by path."""
        with self._read() as conn:
            rows = conn.execute(f"{_SELECT_FILES} WHERE run_id = ? ORDER BY path", (run_id,))
            return [dict(zip(FILE_COLUMNS, r, strict=True)) for r in rows.fetchall()]

    def file_row(self, run_id: str, path: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                f"{_SELECT_FILES} WHERE run_id = ? AND path = ?", (run_id, path)
            ).fetchone()
        return None if row is None else dict(zip(FILE_COLUMNS, row, strict=True))

    def set_file(self, run_id: str, path: str, *, now: float | None = None, **fields: Any) -> None:
        """Create or update one file row; a new row starts 'outdated' unless a status is given."""
        self.set_files(run_id, [(path, fields)], now=now)

    def set_files(
        self,
        run_id: str,
        changes: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        now: float | None = None,
    ) -> None:
        """set_file for many (path, fields) of one run, in one transaction."""
        now = time.time() if now is None else now
        statements = []
        for path, fields in changes:
            for name in fields:
                if name not in _SETTABLE:
                    raise ValueError(f"cannot set file column {name!r}")
            status = fields.get("sync_status")
            if status is not None and status not in FILE_STATES:
                raise ValueError(f"unknown file state {status!r}; expected one of {FILE_STATES}")
            names = list(fields)
            insert_names = ["run_id", "path", "updated", *names]
            values = [run_id, path, now, *fields.values()]
            if "sync_status" not in fields:
                insert_names.append("sync_status")
                values.append("outdated")
            update = ", ".join(f"{n} = excluded.{n}" for n in ["updated", *names])
            sql = (
                f"INSERT INTO files ({', '.join(insert_names)}) "  # noqa: S608 (checked names)
                f"VALUES ({', '.join('?' * len(insert_names))}) "
                f"ON CONFLICT (run_id, path) DO UPDATE SET {update}"
            )
            statements.append((sql, values))
        if not statements:
            return
        with self._write() as conn:
            for sql, values in statements:
                conn.execute(sql, values)

    def file_states(self, run_id: str) -> dict[str, int]:
        """How many files of a run are in each state."""
        with self._read() as conn:
            counts = dict(
                conn.execute(
                    "SELECT sync_status, count(*) FROM files WHERE run_id = ? GROUP BY sync_status",
                    (run_id,),
                ).fetchall()
            )
        return {state: int(counts.get(state, 0)) for state in FILE_STATES}

    def forget_missing_files(
        self, run_id: str, present: Iterable[str], *, now: float | None = None
    ) -> list[str]:
        """Mark 'vanished' the files of a run that a complete listing no longer shows."""
        now = time.time() if now is None else now
        keep = json.dumps(sorted(set(present)))
        with self._write() as conn:
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT path FROM files WHERE run_id = ? AND sync_status != 'vanished' "
                    "AND path NOT IN (SELECT value FROM json_each(?))",
                    (run_id, keep),
                ).fetchall()
            ]
            conn.executemany(
                "UPDATE files SET sync_status = 'vanished', reason = 'gone from the host; "
                "the local copy is kept', updated = ? WHERE run_id = ? AND path = ?",
                [(now, run_id, path) for path in gone],
            )
        return gone

    # -- signatures ------------------------------------------------------------------------

    def store_signature(
        self,
        key: str,
        algo: str,
        size: int,
        block_size: int,
        leaves: bytes,
        *,
        now: float | None = None,
    ) -> None:
        """Remember the leaf digests of a content version (kept while a file row names it)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO signatures (hash, algo, size, block_size, leaves, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, algo, size, block_size, leaves, now),
            )

    def load_signature(self, key: str) -> tuple[str, int, int, bytes] | None:
        """(algo, size, block_size, leaves) of a stored content version."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT algo, size, block_size, leaves FROM signatures WHERE hash = ?", (key,)
            ).fetchone()
        return None if row is None else (row[0], int(row[1]), int(row[2]), bytes(row[3]))

    def drop_unused_signatures(self) -> int:
        """Delete signatures that no file row names any more; how many were deleted."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM signatures "
                "WHERE hash NOT IN (SELECT hash FROM files WHERE hash IS NOT NULL)"
            ).rowcount

    # -- metrics ----------------------------------------------------------------------

    def parse_position(self, run_id: str, path: str) -> tuple[int, str | None]:
        """(bytes parsed, ParseState JSON) of a file; (0, None) before its first parse."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT parse_offset, parse_state FROM files WHERE run_id = ? AND path = ?",
                (run_id, path),
            ).fetchone()
        if row is None or row[0] is None:
            return 0, None
        return int(row[0]), row[1]

    def store_metrics(
        self,
        run_id: str,
        path: str,
        rows: Sequence[MetricRow],
        *,
        expect_offset: int,
        offset: int,
        state_json: str,
        replace: bool = False,
    ) -> bool:
        """Append a file's new metric rows and its parse position in one transaction.

        Compare-and-set on the parse position: when it is no longer ``expect_offset``
        (another writer got there first) nothing is written and False comes back, so a row is
        never stored twice. ``replace`` first deletes the file's rows (a rewritten file).
        A value at a step its key already has replaces the earlier one; ``state_json`` (a JSON
        object) is stored with a ``replaced`` member: how many values of the file were replaced
        so since it was last parsed from the start.
        """
        with self._write() as conn:
            found = conn.execute(
                "SELECT coalesce(parse_offset, 0), parse_state FROM files"
                " WHERE run_id = ? AND path = ?",
                (run_id, path),
            ).fetchone()
            if found is None or (int(found[0]) != expect_offset and not replace):
                return False
            if replace:
                delete_file_points(conn, run_id, path)
            replaced = append_points(conn, run_id, path, rows)
            earlier = 0 if replace else replaced_count(found[1])
            if replaced or earlier:
                record = json.loads(state_json)
                record["replaced"] = earlier + replaced
                state_json = json.dumps(record)
            conn.execute(
                "UPDATE files SET parse_offset = ?, parse_state = ?, updated = ? "
                "WHERE run_id = ? AND path = ?",
                (offset, state_json, time.time(), run_id, path),
            )
        return True

    def metric_keys(self, run_id: str) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT key FROM metric_series WHERE run_id = ? ORDER BY key", (run_id,)
            ).fetchall()
        return [r[0] for r in rows]

    def metric_rows(
        self, run_id: str, keys: Sequence[str] | None = None
    ) -> list[tuple[Any, str, str, float | None, str | None]]:
        """(step, key, file, value, text) of a run, by key then step; keys None means all."""
        with self._read() as conn:
            found = series_points(conn, run_id, keys)
        out: list[tuple[Any, str, str, float | None, str | None]] = []
        for key, files in found.items():
            merged = by_step([(s, f, v, t) for f, points in files for s, v, t in points])
            out.extend((s, key, f, v, t) for s, f, v, t in merged)
        return out

    def metric_summary(
        self, run_id: str, keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Per numeric key: last value (at the highest step), min, max, and how many values."""
        with self._read() as conn:
            found = series_points(conn, run_id, keys)
        summary: dict[str, dict[str, Any]] = {}
        for key, files in sorted(found.items()):
            numbers = [(s, v) for _f, points in files for s, v, _t in points if v is not None]
            if not numbers:
                continue
            values = [v for _s, v in numbers]
            last_step, last = numbers[0]
            for step, value in numbers:  # the highest step; on a tie the last written
                if step is not None and (last_step is None or step >= last_step):
                    last_step, last = step, value
            summary[key] = {
                "count": len(values),
                "min": min(values),
                "max": max(values),
                "last": last,
                "last_step": last_step,
            }
        return summary


def parse_record_warnings(state_json: str | None) -> list[str]:
    """Warnings about how a file was parsed into metrics, from its stored parse state."""
    from cvtui.metrics_parse import ParseState, parse_warnings

    if not state_json:
        return []
    try:
        state = ParseState.from_json(json.dumps(json.loads(state_json)["parse"]))
    except (ValueError, TypeError, KeyError):
        return []
    return parse_warnings(state, replaced_count(state_json))


def replaced_count(state_json: str | None) -> int:
    """The ``replaced`` member of a stored parse state (0 when absent or unreadable)."""
    try:
        return int(json.loads(state_json or "{}").get("replaced") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


def file_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """What `cvtui files --json` shows of a file row."""
    return {
        "path": row["path"],
        "size": row["size"],
        "synced_size": row["synced_size"],
        "state": row["sync_status"],
        "strategy": row["strategy"],
        "hash": row["hash"],
        "reason": row["reason"],
        "mtime": row["mtime"],
        "synced_at": row["synced_at"],
        "warnings": parse_record_warnings(row.get("parse_state")),
    }
