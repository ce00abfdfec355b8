"""Component versions: every file of a code dir, recorded in the content store as it changes."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cvtui.catalog import Catalog
from cvtui.catalog.components import VersionEntry
from cvtui.engine.snapshot import Snapshot, code_files
from cvtui.errors import CvtuiError
from cvtui.repro.blobstore import BlobStore, hash_file


@dataclass(frozen=True)
class ScanResult:
    root: str
    files: int  # files of the code dir
    hashed: int  # files whose content was read (new, or size/mtime changed)
    new_versions: tuple[VersionEntry, ...]
    removed: tuple[str, ...]  # paths gone from the code dir since the last scan
    elapsed_s: float


def code_root(path: str | os.PathLike[str]) -> str:
    """The canonical name of a code dir: its absolute, resolved path."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CvtuiError(f"code dir {root} does not exist")
    return str(root)


def scan(
    catalog: Catalog,
    blobs: BlobStore,
    directory: str | os.PathLike[str],
    exclude: Sequence[str] = (),
) -> ScanResult:
    """Register every file of a code dir; only files whose size or mtime changed are hashed.

    Files are chosen as for a code snapshot (`git ls-files` in a work tree, else a filtered
    walk). New contents go to the blob store before the catalog names them.
    """
    started = time.perf_counter()
    root = code_root(directory)
    base = Path(root)
    cache = catalog.scan_cache(root)
    seen: set[str] = set()
    changed: list[VersionEntry] = []
    cache_rows: list[tuple[str, int, int, str]] = []
    for name in code_files(base, exclude):
        path = base / name
        try:
            st = path.stat()
        except OSError:
            continue  # removed since it was listed
        if not stat.S_ISREG(st.st_mode):
            continue
        seen.add(name)
        cached = cache.get(name)
        if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            continue
        try:
            hash_ = blobs.put_file(path)
        except OSError as exc:
            raise CvtuiError(f"cannot read {path}: {exc.strerror}") from None
        executable = bool(st.st_mode & stat.S_IXUSR)
        changed.append(VersionEntry(name, hash_, st.st_size, executable))
        cache_rows.append((name, st.st_size, st.st_mtime_ns, hash_))
    gone = sorted(set(cache) - seen)
    added: list[VersionEntry] = []
    if changed:
        catalog.record_blobs(((e.hash, e.size) for e in changed), "component")
        added = catalog.record_versions(root, changed, "scan", activate=True)
    if gone:
        catalog.deactivate_missing(root, seen)
    catalog.update_scan_cache(root, cache_rows, gone)
    return ScanResult(
        root=root,
        files=len(seen),
        hashed=len(changed),
        new_versions=tuple(added),
        removed=tuple(gone),
        elapsed_s=time.perf_counter() - started,
    )


def store_snapshot(catalog: Catalog, blobs: BlobStore, snapshot: Snapshot) -> None:
    """Put a code snapshot's files in the store and record its manifest and versions.

    Called at submit: what a run ships is then recoverable even if the code dir changes.
    """
    root = str(snapshot.root)
    entries = [VersionEntry(f.path, f.hash, f.size, f.executable) for f in snapshot.files]
    missing = {e.hash for e in entries} - catalog.known_blobs(e.hash for e in entries)
    for entry in entries:
        if entry.hash in missing and not blobs.has(entry.hash):
            blobs.put_file(snapshot.root / entry.path, expect=entry.hash)
    catalog.record_blobs(((e.hash, e.size) for e in entries if e.hash in missing), "snapshot")
    catalog.record_versions(root, entries, "submit", activate=True)
    catalog.record_snapshot(snapshot.hash, root, entries)


def resolve_component(
    catalog: Catalog, path: str, cwd: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """(code dir, relative path) for a path given on the command line.

    The path may be absolute or relative to cwd; the code dir is the longest recorded one
    that contains it.
    """
    target = Path(cwd or Path.cwd(), path).expanduser()
    target = target.parent.resolve() / target.name
    best = None
    for root in catalog.component_roots():
        try:
            rel = target.relative_to(root)
        except ValueError:
            continue
        if best is None or len(root) > len(best[0]):
            best = (root, rel.as_posix())
    if best is None:
        raise CvtuiError(f"{path} is not in a scanned code dir (run: cvtui components scan DIR)")
    return best


def hash_of(path: str | os.PathLike[str]) -> str:
    """xxh3_128 of a file, as the store names it."""
    return hash_file(path)[0]
