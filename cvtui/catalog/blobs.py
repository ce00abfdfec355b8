"""Catalog side of the content store: the blobs index, what names each blob, and its removal."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

# Every (table, column) that names a blob. A new one must be added here, or gc deletes its blobs.
BLOB_REFERENCES: tuple[tuple[str, str], ...] = (
    ("components", "hash"),
    ("snapshot_files", "hash"),
    ("run_manifests", "hash"),
    ("models", "hash"),
    ("run_inputs", "hash"),
    ("run_provenance", "git_diff_hash"),
    ("run_provenance", "pip_freeze_hash"),
    ("host_environments", "pip_freeze_hash"),
)
CHUNK = 500  # hashes per IN (...) query


def blobs_among(conn: sqlite3.Connection, hashes: Iterable[str]) -> set[str]:
    """The hashes the blobs table holds, out of these (queried CHUNK at a time)."""
    wanted = list(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT hash FROM blobs WHERE hash IN ({marks})"  # noqa: S608 (placeholders)
        found.update(r[0] for r in conn.execute(query, chunk))
    return found


def referenced_hashes(conn: sqlite3.Connection) -> set[str]:
    """Every blob hash some catalog row names."""
    found: set[str] = set()
    for table, column in BLOB_REFERENCES:
        found.update(
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608
            )
        )
    return found


def referenced_among(conn: sqlite3.Connection, hashes: Iterable[str]) -> set[str]:
    """Those of hashes that some catalog row names (indexed lookups, for a few hashes)."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        for table, column in BLOB_REFERENCES:
            found.update(
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({marks})",  # noqa: S608
                    chunk,
                )
            )
    return found


class BlobsMixin:
    """Catalog methods for the blobs index of the content store (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def record_blobs(self, rows: Iterable[tuple[str, int]], kind: str) -> None:
        """Index blobs (hash, size bytes) already written to the store; known ones are kept."""
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO blobs (hash, size, kind, created) VALUES (?, ?, ?, ?)",
                [(h, s, kind, now) for h, s in rows],
            )

    def known_blobs(self, hashes: Iterable[str]) -> set[str]:
        with self._read() as conn:
            return blobs_among(conn, hashes)

    def blobs_with_prefix(self, prefix: str, limit: int = 10) -> list[tuple[str, int]]:
        """(hash, size bytes) of indexed blobs whose hash starts with a lowercase hex prefix."""
        upper = prefix + "g"  # 'g' sorts after every hex digit: a range scan of the primary key
        with self._read() as conn:
            return [
                (str(h), int(s))
                for h, s in conn.execute(
                    "SELECT hash, size FROM blobs WHERE hash >= ? AND hash < ? ORDER BY hash"
                    " LIMIT ?",
                    (prefix, upper, limit),
                )
            ]

    def blobs_and_references(self) -> tuple[dict[str, tuple[int, str, float]], set[str]]:
        """In one read: every blobs row (hash -> size bytes, kind, created unix seconds), and
        every hash some catalog row names."""
        with self._read() as conn:
            rows = {
                h: (int(size), str(kind), float(created))
                for h, size, kind, created in conn.execute(
                    "SELECT hash, size, kind, created FROM blobs"
                )
            }
            return rows, referenced_hashes(conn)

    def synced_files_sized(self, sizes: Iterable[int]) -> list[tuple[str, str]]:
        """(run_id, path) of the files whose host or synced size is one of sizes (bytes)."""
        wanted = json.dumps(sorted(set(sizes)))
        with self._read() as conn:
            return [
                (str(run_id), str(path))
                for run_id, path in conn.execute(
                    "SELECT run_id, path FROM files"
                    " WHERE synced_size IN (SELECT value FROM json_each(?))"
                    " OR size IN (SELECT value FROM json_each(?)) ORDER BY run_id, path",
                    (wanted, wanted),
                )
            ]

    def remove_blobs(
        self, blobs: Sequence[tuple[str, bool]], remove_file: Callable[[str], bool]
    ) -> set[str]:
        """Remove blobs that are still unreferenced, in one write transaction; the hashes kept.

        blobs are (hash, whether it had a blobs row when it was listed). One that a row names
        now, or that gained a blobs row since, is kept. For each other, remove_file(hash)
        deletes its file; when it returns True the blob's row goes too. The write lock is
        held throughout, so no writer names a blob between the check and the removal.
        """
        with self._write() as conn:
            hashes = [h for h, _ in blobs]
            now_referenced = referenced_among(conn, hashes)
            now_indexed = blobs_among(conn, hashes)
            kept: set[str] = set()
            gone: list[str] = []
            for hash_, indexed in blobs:
                if hash_ in now_referenced or (not indexed and hash_ in now_indexed):
                    kept.add(hash_)
                    continue
                if remove_file(hash_) and indexed:
                    gone.append(hash_)
            for start in range(0, len(gone), CHUNK):
                chunk = gone[start : start + CHUNK]
                conn.execute(
                    f"DELETE FROM blobs WHERE hash IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk,
                )
        return kept
