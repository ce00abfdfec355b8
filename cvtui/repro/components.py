"""Component versions: every file of a code dir, recorded in the content store as it changes."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog
from cvtui.catalog.components import VersionEntry
from cvtui.errors import CvtuiError
from cvtui.repro.blobstore import HASH_HEX_CHARS, BlobError, BlobStore, hash_file
from cvtui.repro.snapshot import Snapshot, split_code_files

# A file whose mtime is this close to the scan (or later) may change again within the same
# timestamp tick without its mtime moving; the cache keeps it as "racy" so the next scan
# reads it again (git's racy-clean rule). 2 s covers the coarsest common filesystems.
RACY_WINDOW_NS = 2_000_000_000
RACY_MTIME = -1  # cache mtime of a racy file: never equal to a real one
MIN_PREFIX_CHARS = 6
HEX_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX_CHARS},{HASH_HEX_CHARS}}}")
SAVE_TRIES = 3  # a file rewritten while activate saves it is read again this many times


@dataclass(frozen=True)
class ScanResult:
    root: str
    files: int  # files of the code dir
    hashed: int  # files whose content was read (new, or size/mtime changed, or racy)
    new_versions: tuple[VersionEntry, ...]
    removed: tuple[str, ...]  # paths gone from the code dir since the last scan
    elapsed_s: float
    reactivated: tuple[VersionEntry, ...] = ()  # back to a version the store already had
    skipped: tuple[str, ...] = ()  # names that are not UTF-8 (escaped): not recorded


@dataclass(frozen=True)
class Activation:
    """What `activate` did to one file of a code dir."""

    root: str
    path: str  # relative to root
    hash: str  # the version now active and on disk
    previous: str | None  # hash of the file's content before; None when there was no file
    saved: bool  # the previous content was new to the store and is now a version of path
    written: bool  # False when the file already held that content


def code_root(path: str | os.PathLike[str]) -> str:
    """The canonical name of a code dir: its absolute, resolved path."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CvtuiError(f"code dir {root} does not exist")
    return str(root)


def _cache_mtime(st: os.stat_result, racy_after_ns: int) -> int:
    return RACY_MTIME if st.st_mtime_ns >= racy_after_ns else st.st_mtime_ns


def _executable(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IXUSR)


def scan(
    catalog: Catalog,
    blobs: BlobStore,
    directory: str | os.PathLike[str],
    exclude: Sequence[str] = (),
) -> ScanResult:
    """Register every file of a code dir; only files whose size or mtime changed are hashed.

    Files are chosen as for a code snapshot (`git ls-files` in a work tree, else a filtered
    walk). New contents go to the blob store before the catalog names them. Afterwards each
    present file's active version is its content on disk, and removed files have none.
    """
    started = time.perf_counter()
    racy_after_ns = time.time_ns() - RACY_WINDOW_NS
    root = code_root(directory)
    prefix = root.rstrip("/") + "/"  # plain string joins: Path objects cost 2x on 5,000 files
    names, odd_names = split_code_files(Path(root), exclude)
    cache, active = catalog.scan_state(root)
    seen: set[str] = set()
    stale: list[tuple[str, os.stat_result]] = []
    moved: list[VersionEntry] = []  # unchanged on disk, but another version is active
    for name in names:
        try:
            st = os.stat(prefix + name)  # noqa: PTH116 (hot loop, see prefix)
        except OSError:
            continue  # removed since it was listed
        if not stat.S_ISREG(st.st_mode):
            continue
        seen.add(name)
        cached = cache.get(name)
        if cached is None or cached[0] != st.st_size or cached[1] != st.st_mtime_ns:
            stale.append((name, st))
        elif active.get(name) != cached[2]:
            moved.append(VersionEntry(name, cached[2], st.st_size, _executable(st)))
    changed: list[VersionEntry] = []
    cache_rows: list[tuple[str, int, int, str]] = []
    with blobs.batch():
        for name, st in stale:
            try:
                hash_, size = blobs.store_file(prefix + name)
            except FileNotFoundError:
                seen.discard(name)
                continue
            except OSError as exc:
                raise CvtuiError(f"cannot read {prefix + name}: {exc.strerror}") from None
            # A file that grew after its stat is cached as racy: the next scan reads it again.
            mtime = _cache_mtime(st, racy_after_ns) if size == st.st_size else RACY_MTIME
            cache_rows.append((name, size, mtime, hash_))
            if active.get(name) != hash_:
                changed.append(VersionEntry(name, hash_, size, _executable(st)))
    added: list[VersionEntry] = []
    if changed:
        catalog.record_blobs(((e.hash, e.size) for e in changed), "component")
    if changed or moved:
        added = catalog.record_versions(root, [*changed, *moved], "scan", activate=True)
    gone = [p for p in cache if p not in seen]
    removed = sorted({p for p in active if p not in seen}.union(gone))
    if any(p not in seen for p in active):
        catalog.deactivate_missing(root, seen)
    catalog.update_scan_cache(root, cache_rows, gone)
    new_paths = {e.path for e in added}
    return ScanResult(
        root=root,
        files=len(seen),
        hashed=len(stale),
        new_versions=tuple(added),
        removed=tuple(removed),
        elapsed_s=time.perf_counter() - started,
        reactivated=tuple(e for e in [*changed, *moved] if e.path not in new_paths),
        skipped=tuple(odd_names),
    )


def store_snapshot(catalog: Catalog, blobs: BlobStore, snapshot: Snapshot) -> None:
    """Put a code snapshot's files in the store and record its manifest and versions.

    Called at submit: what a run ships is then recoverable even if the code dir changes.
    """
    root = str(snapshot.root)
    entries = [VersionEntry(f.path, f.hash, f.size, f.executable) for f in snapshot.files]
    missing = {e.hash for e in entries} - catalog.known_blobs(e.hash for e in entries)
    with blobs.batch():
        for entry in entries:
            if entry.hash in missing and not blobs.has(entry.hash):
                blobs.put_file(snapshot.root / entry.path, expect=entry.hash)
    catalog.record_blobs(((e.hash, e.size) for e in entries if e.hash in missing), "snapshot")
    # A re-submit of unchanged code finds most files already active: only the others are
    # written (about 90 -> 30 ms for 5,000 files).
    active = catalog.active_versions(root)
    changed = [e for e in entries if (row := active.get(e.path)) is None or row["hash"] != e.hash]
    catalog.record_versions(root, changed, "submit", activate=True)
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


def root_containing(catalog: Catalog, directory: str | os.PathLike[str]) -> str | None:
    """The longest scanned code dir that is directory or one of its parents."""
    here = Path(directory).resolve()
    best = None
    for root in catalog.component_roots():
        if (here == Path(root) or Path(root) in here.parents) and (
            best is None or len(root) > len(best)
        ):
            best = root
    return best


def check_prefix(prefix: str) -> str:
    """A hash or hash prefix as typed, lowercased; at least MIN_PREFIX_CHARS hex digits."""
    wanted = prefix.strip().lower()
    if not HEX_PREFIX.fullmatch(wanted):
        raise CvtuiError(
            f"{prefix!r} is not a hash: give {MIN_PREFIX_CHARS} to {HASH_HEX_CHARS} hex digits"
        )
    return wanted


def find_blob(catalog: Catalog, blobs: BlobStore, prefix: str) -> str:
    """The one blob whose hash starts with prefix (indexed in the catalog or on disk)."""
    wanted = check_prefix(prefix)
    found = {h for h, _size in catalog.blobs_with_prefix(wanted, limit=6)}
    shard = blobs.root / wanted[:2]
    if len(found) < 2 and shard.is_dir():
        found.update(
            item.name
            for item in shard.iterdir()
            if len(item.name) == HASH_HEX_CHARS and item.name.startswith(wanted)
        )
    if not found:
        raise CvtuiError(f"no blob in the store has a hash starting with {wanted}")
    if len(found) > 1:
        shown = ", ".join(h[:16] for h in sorted(found)[:5])
        raise CvtuiError(f"{wanted} is ambiguous: it starts {shown}, ...; give more digits")
    return found.pop()


def _describe_versions(versions: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"{v['hash'][:12]} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(v['created']))},"
        f" {v['source']}{', active' if v['active'] else ''})"
        for v in versions
    )


def match_version(versions: Sequence[dict[str, Any]], prefix: str, path: str) -> dict[str, Any]:
    """The version of path whose hash starts with prefix; the error lists the versions."""
    wanted = check_prefix(prefix)
    hits = [v for v in versions if v["hash"].startswith(wanted)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise CvtuiError(
            f"{wanted} is not a version of {path}; its versions: {_describe_versions(versions)}"
        )
    raise CvtuiError(f"{wanted} is ambiguous among {path}'s versions: {_describe_versions(hits)}")


def component_history(catalog: Catalog, root: str, path: str) -> list[dict[str, Any]]:
    """Every version of root/path, oldest first, each with the runs dispatched with it."""
    versions = catalog.component_versions(root, path)
    if not versions:
        raise CvtuiError(f"{path} has no versions in code dir {root}")
    return [
        {
            "hash": v["hash"],
            "created": v["created"],
            "size": v["size"],
            "executable": bool(v["executable"]),
            "source": v["source"],
            "active": bool(v["active"]),
            "runs": catalog.runs_using_version(root, path, v["hash"]),
        }
        for v in versions
    ]


def _file_mode(dest: Path, executable: bool) -> int:
    """dest's permission bits with x set where r is (or cleared); 0644/0755 for a new file."""
    try:
        current = stat.S_IMODE(dest.stat().st_mode)
    except FileNotFoundError:
        return 0o755 if executable else 0o644
    plain = current & ~0o111
    return plain | ((plain & 0o444) >> 2) if executable else plain


def _save_current(
    catalog: Catalog, blobs: BlobStore, root: str, path: str, known: set[str]
) -> tuple[str | None, bool]:
    """(hash of the file's content, whether it was new): its content is kept as a version."""
    dest = Path(root, path)
    for _ in range(SAVE_TRIES):
        try:
            before = dest.stat()
        except FileNotFoundError:
            return None, False
        if not stat.S_ISREG(before.st_mode):
            raise CvtuiError(f"{dest} is not a regular file; move it away first")
        hash_, size = hash_file(dest)
        saved = False
        if hash_ not in known or not blobs.has(hash_):
            try:
                blobs.put_file(dest, expect=hash_)
            except BlobError:
                continue  # rewritten while we read it: read it again
            catalog.record_blobs([(hash_, size)], "component")
            entry = VersionEntry(path, hash_, size, _executable(before))
            saved = bool(catalog.record_versions(root, [entry], "activate", activate=False))
        after = dest.stat()
        if (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            return hash_, saved
    raise CvtuiError(f"{dest} kept changing while it was being saved; try again")


def activate(
    catalog: Catalog,
    blobs: BlobStore,
    path: str,
    hash_prefix: str,
    cwd: str | os.PathLike[str] | None = None,
) -> Activation:
    """Make a version of a file the active one and write it into the code dir atomically.

    The file's current content is saved as a version first when the store lacks it, so an
    unsaved edit is never lost. The scan cache learns the new file, so the next scan sees
    no change.
    """
    root, rel = resolve_component(catalog, path, cwd)
    versions = catalog.component_versions(root, rel)
    if not versions:
        raise CvtuiError(f"{rel} has no versions in code dir {root}")
    version = match_version(versions, hash_prefix, rel)
    hash_ = str(version["hash"])
    if not blobs.verify(hash_):
        state = "corrupt" if blobs.has(hash_) else "missing"
        raise BlobError(f"version {hash_[:12]} of {rel}: its blob is {state} in {blobs.root}")
    if not Path(root).is_dir():
        raise CvtuiError(f"code dir {root} no longer exists; recreate it or restore elsewhere")
    dest = Path(root, rel)
    previous, saved = _save_current(catalog, blobs, root, rel, {v["hash"] for v in versions})
    written = previous != hash_
    if written:
        dest.parent.mkdir(parents=True, exist_ok=True)
        blobs.copy_to(hash_, dest, _file_mode(dest, bool(version["executable"])))
    catalog.activate_version(root, rel, hash_)
    st = dest.stat()
    cache_row = (rel, st.st_size, _cache_mtime(st, time.time_ns() - RACY_WINDOW_NS), hash_)
    catalog.update_scan_cache(root, [cache_row], [])
    return Activation(root, rel, hash_, previous, saved, written)
