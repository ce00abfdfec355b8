"""Garbage collection of the content store: the only code that deletes blobs, after asking.

A blob is referenced when a catalog row names it (REFERENCES) or when some run's mirror holds
a file with the same content: a checkpoint registered as a model and then unregistered is
still the output of its run while the run's mirror file has those bytes. Mirror files are
compared by size first; only same-size files are hashed.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvtui.catalog.components import blobs_among
from cvtui.repro.blobstore import BlobStore, hash_file
from cvtui.repro.models import MODEL_KIND

if TYPE_CHECKING:
    import sqlite3

    from cvtui.catalog import Catalog

# Every (table, column) that names a blob. A new one must be added here, or gc deletes its blobs.
REFERENCES: tuple[tuple[str, str], ...] = (
    ("components", "hash"),
    ("snapshot_files", "hash"),
    ("run_manifests", "hash"),
    ("models", "hash"),
    ("run_inputs", "hash"),
    ("run_provenance", "git_diff_hash"),
    ("run_provenance", "pip_freeze_hash"),
    ("host_environments", "pip_freeze_hash"),
)
TEMP_PREFIX = ".tmp."  # BlobStore writes here first, then renames into place
TEMP_MAX_AGE_S = 3600.0  # a temp file older than this was left by a writer that died
# Scans, submits and provenance write a blob, then its blobs row, then the rows naming it, in
# separate steps: a blob younger than this (file or row) is left to its writer. Model blobs are
# exempt: `models register` commits the blob row with the model row naming it.
WRITER_GRACE_S = TEMP_MAX_AGE_S
UNINDEXED = "unindexed"  # the kind shown for a blob file without a blobs row
CHUNK = 500  # hashes per IN (...) query


@dataclass(frozen=True)
class Garbage:
    """A blob nothing references: its file, its blobs row, or both."""

    hash: str
    size: int  # bytes
    kind: str  # blobs.kind, or UNINDEXED
    on_disk: bool
    indexed: bool
    age_s: float  # since the file or its blobs row was written, whichever is later


@dataclass(frozen=True)
class TempFile:
    """A temp file of the store left by an interrupted write."""

    name: str
    size: int  # bytes
    age_s: float


@dataclass(frozen=True)
class MirrorCopy:
    """A blob kept because a run's mirror file has its content."""

    hash: str
    run_id: str
    path: str


@dataclass(frozen=True)
class GcPlan:
    """What `gc --unreferenced` would remove, and what it keeps that looked unreferenced."""

    blobs: tuple[Garbage, ...]
    temp_files: tuple[TempFile, ...]
    kept_by_runs: tuple[MirrorCopy, ...]
    kept_recent: tuple[Garbage, ...]  # younger than WRITER_GRACE_S: a writer may name it soon
    missing: tuple[str, ...]  # referenced blobs absent from disk (reported, not repaired)
    examined: int  # blobs looked at, on disk or indexed

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.on_disk) + sum(t.size for t in self.temp_files)

    @property
    def empty(self) -> bool:
        return not self.blobs and not self.temp_files

    def as_json(self) -> dict[str, object]:
        return {
            "blobs": [
                {
                    "hash": b.hash,
                    "size": b.size,
                    "kind": b.kind,
                    "on_disk": b.on_disk,
                    "indexed": b.indexed,
                }
                for b in self.blobs
            ],
            "temp_files": [
                {"name": t.name, "size": t.size, "age_s": round(t.age_s, 1)}
                for t in self.temp_files
            ],
            "kept_by_runs": [
                {"hash": k.hash, "run_id": k.run_id, "path": k.path} for k in self.kept_by_runs
            ],
            "kept_recent": [b.hash for b in self.kept_recent],
            "missing": list(self.missing),
            "examined": self.examined,
            "total_bytes": self.total_bytes,
        }


@dataclass(frozen=True)
class GcResult:
    removed: tuple[Garbage, ...]
    removed_temp: tuple[TempFile, ...]
    kept: tuple[Garbage, ...]  # referenced or indexed by the time of deletion
    failed: tuple[tuple[str, str], ...]  # (blob hash or temp name, why)

    @property
    def freed_bytes(self) -> int:
        return sum(b.size for b in self.removed if b.on_disk) + sum(
            t.size for t in self.removed_temp
        )


def referenced_hashes(conn: sqlite3.Connection) -> set[str]:
    """Every blob hash some catalog row names."""
    found: set[str] = set()
    for table, column in REFERENCES:
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
        for table, column in REFERENCES:
            found.update(
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({marks})",  # noqa: S608
                    chunk,
                )
            )
    return found


def plan_gc(catalog: Catalog, home: str | os.PathLike[str], *, now: float | None = None) -> GcPlan:
    """Find the blobs and temp files `gc --unreferenced` would remove; nothing is changed."""
    now = time.time() if now is None else now
    store = BlobStore.in_home(home)
    with catalog._read() as conn:
        rows = {
            h: (int(size), str(kind), float(created))
            for h, size, kind, created in conn.execute(
                "SELECT hash, size, kind, created FROM blobs"
            )
        }
        referenced = referenced_hashes(conn)
    on_disk = set(store.hashes())
    candidates: list[Garbage] = []
    recent: list[Garbage] = []
    for hash_ in sorted((on_disk | set(rows)) - referenced):
        row = rows.get(hash_)
        st = _stat(store.path(hash_)) if hash_ in on_disk else None
        if st is not None:
            size, written = st.st_size, max(st.st_mtime, row[2] if row is not None else 0.0)
        elif row is not None:
            size, written = row[0], row[2]
        else:
            continue  # removed since it was listed
        garbage = Garbage(
            hash=hash_,
            size=size,
            kind=row[1] if row is not None else UNINDEXED,
            on_disk=st is not None,
            indexed=row is not None,
            age_s=max(0.0, now - written),
        )
        if garbage.kind != MODEL_KIND and garbage.age_s < WRITER_GRACE_S:
            recent.append(garbage)
        else:
            candidates.append(garbage)
    copies = mirror_copies(catalog, home, [g for g in candidates if g.on_disk])
    kept = {c.hash for c in copies}
    return GcPlan(
        blobs=tuple(g for g in candidates if g.hash not in kept),
        temp_files=tuple(stale_temp_files(store, now)),
        kept_by_runs=tuple(copies),
        kept_recent=tuple(recent),
        missing=tuple(sorted(referenced - on_disk)),
        examined=len(on_disk | set(rows)),
    )


def mirror_copies(
    catalog: Catalog, home: str | os.PathLike[str], blobs: Iterable[Garbage]
) -> list[MirrorCopy]:
    """Run mirror files whose content is one of these blobs (the first file found per blob)."""
    from cvtui.engine.mirror import Mirror, UnsafePathError

    by_size: dict[int, set[str]] = {}
    for blob in blobs:
        by_size.setdefault(blob.size, set()).add(blob.hash)
    if not by_size:
        return []
    sizes = json.dumps(sorted(by_size))
    with catalog._read() as conn:
        files = conn.execute(
            "SELECT run_id, path FROM files"
            " WHERE synced_size IN (SELECT value FROM json_each(?))"
            " OR size IN (SELECT value FROM json_each(?)) ORDER BY run_id, path",
            (sizes, sizes),
        ).fetchall()
    found: dict[str, MirrorCopy] = {}
    for run_id, path in files:
        try:
            local = Mirror(Path(home), run_id).path(path)
        except UnsafePathError:
            continue
        st = _stat(local)
        if st is None or st.st_size not in by_size:
            continue
        if not by_size[st.st_size] - set(found):
            continue  # every blob of this size already has a copy
        try:
            hash_, _size = hash_file(local)
        except OSError:
            continue
        if hash_ in by_size[st.st_size] and hash_ not in found:
            found[hash_] = MirrorCopy(hash_, run_id, path)
    return list(found.values())


def stale_temp_files(store: BlobStore, now: float) -> Iterator[TempFile]:
    """Temp files at the top of the store older than TEMP_MAX_AGE_S."""
    try:
        entries = sorted(os.scandir(store.root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= TEMP_MAX_AGE_S:
            yield TempFile(entry.name, st.st_size, now - st.st_mtime)


def collect_garbage(
    catalog: Catalog, home: str | os.PathLike[str], plan: GcPlan, *, now: float | None = None
) -> GcResult:
    """Delete what plan lists, except what became referenced or indexed since it was made.

    The final reference check, the unlinks and the row deletes share one write transaction,
    so a reference committed before it is always seen.
    """
    now = time.time() if now is None else now
    store = BlobStore.in_home(home)
    removed_temp: list[TempFile] = []
    failed: list[tuple[str, str]] = []
    for temp in plan.temp_files:
        path = store.root / temp.name
        st = _stat(path)
        if st is None or now - st.st_mtime < TEMP_MAX_AGE_S:
            continue  # gone, or written again since it was listed
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append((temp.name, exc.strerror or str(exc)))
            continue
        removed_temp.append(temp)
    removed: list[Garbage] = []
    kept: list[Garbage] = []
    with catalog._write() as conn:
        hashes = [b.hash for b in plan.blobs]
        now_referenced = referenced_among(conn, hashes)
        now_indexed = blobs_among(conn, hashes)
        for blob in plan.blobs:
            if blob.hash in now_referenced or (not blob.indexed and blob.hash in now_indexed):
                kept.append(blob)
                continue
            try:
                store.remove(blob.hash)
            except OSError as exc:
                failed.append((blob.hash, exc.strerror or str(exc)))
                continue
            removed.append(blob)
        gone = [b.hash for b in removed if b.indexed]
        for start in range(0, len(gone), CHUNK):
            chunk = gone[start : start + CHUNK]
            conn.execute(
                f"DELETE FROM blobs WHERE hash IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk,
            )
    return GcResult(tuple(removed), tuple(removed_temp), tuple(kept), tuple(failed))


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None
