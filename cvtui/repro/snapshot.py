"""Code snapshots: the files of a run's `code` dir, content-addressed, uploaded once per host."""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import xxhash

from cvtui.errors import CvtuiError
from cvtui.units import size

log = logging.getLogger("cvtui.snapshot")

# Directories never worth shipping; virtualenvs are also recognised by their pyvenv.cfg.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".ipynb_checkpoints",
        ".hypothesis",
        ".tox",
    }
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
MAX_SNAPSHOT_BYTES = 1 << 30  # a code dir bigger than this almost surely holds data by mistake


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # relative, '/'-separated
    size: int  # bytes
    executable: bool
    hash: str  # xxh3_128 hex of the content


@dataclass(frozen=True)
class Snapshot:
    """A code dir frozen at submit time; ``hash`` names it on every host."""

    root: Path
    files: tuple[SnapshotFile, ...]
    hash: str
    untracked: tuple[str, ...] = ()  # shipped files that git does not track (a work tree only)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def tar_bytes(self) -> bytes:
        """A deterministic tar of the files (sorted, no owners, mtime 0)."""

        def content(item: SnapshotFile) -> bytes:
            with open(self.root / item.path, "rb") as fh:
                data = fh.read()
            if xxhash.xxh3_128_hexdigest(data) != item.hash:
                raise CvtuiError(f"{self.root / item.path} changed while it was being sent")
            return data

        buffer = io.BytesIO()
        write_snapshot_tar(buffer, self.files, content)
        return buffer.getvalue()


def write_snapshot_tar(
    out: BinaryIO, files: Sequence[SnapshotFile], content: Callable[[SnapshotFile], bytes]
) -> None:
    """Write the deterministic tar of files to out: in the order given, no owners, mtime 0.

    The one definition of a snapshot's archive, so a tar rebuilt from the content store
    (`cvtui reproduce`) is byte-identical to the one `cvtui run` wrote from the code dir.
    """
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in files:
            data = content(item)
            info = tarfile.TarInfo(item.path)
            info.size = len(data)
            info.mode = 0o755 if item.executable else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))


def snapshot_hash(files: Sequence[SnapshotFile]) -> str:
    """The name of a snapshot: covers each file's path, mode and content, in order."""
    manifest = json.dumps([[f.path, f.executable, f.hash] for f in files], separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(manifest.encode())


# (path, size, mtime_ns) -> xxh3: a warm engine rehashes only files that changed.
_hash_cache: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _hash_cache.get(key)
    if cached is None:
        hasher = xxhash.xxh3_128()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                hasher.update(chunk)
        cached = _hash_cache[key] = hasher.hexdigest()
    return cached


def _git_files(code_dir: Path) -> tuple[list[str], set[str]] | None:
    """(files git would ship: tracked + untracked-not-ignored, the untracked ones among
    them), or None if code_dir is not a work tree. One git call: -t tags each name."""
    try:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(code_dir),
                "ls-files",
                "-z",
                "-t",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    names: set[str] = set()
    untracked: set[str] = set()
    for entry in done.stdout.split(b"\0"):
        if len(entry) < 3:
            continue
        name = entry[2:].decode("utf-8", "surrogateescape")  # "<tag> <name>"
        names.add(name)
        if entry[:1] == b"?":
            untracked.add(name)
    return sorted(names), untracked


def _walk_files(code_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(code_dir):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_DIRS and not (here / d / "pyvenv.cfg").exists()
        )
        for name in filenames:
            found.append((here / name).relative_to(code_dir).as_posix())
    return sorted(found)


def _excluded(path: str, exclude: Sequence[str]) -> bool:
    parts = path.split("/")
    if any(p in SKIPPED_DIRS for p in parts[:-1]) or path.endswith(SKIPPED_SUFFIXES):
        return True
    return any(
        fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(parts[-1], pattern) for pattern in exclude
    )


def code_files(
    code_dir: Path, exclude: Sequence[str] = ()
) -> tuple[list[str], list[str], set[str]]:
    """(files to ship, names left out because they are not UTF-8 (shown escaped), the shipped
    files git does not track).

    Files to ship are `git ls-files` in a work tree, else a filtered walk. A name that is not
    UTF-8 cannot be recorded in the catalog: it is left out, with a warning.
    """
    listed = _git_files(code_dir)
    names, untracked = listed if listed is not None else (_walk_files(code_dir), set())
    kept, odd = [], []
    for name in names:
        if _excluded(name, exclude):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            log.warning("%s: %s is left out: its name is not UTF-8", code_dir, shown)
            odd.append(shown)
            continue
        kept.append(name)
    return kept, odd, untracked & set(kept)


def split_code_files(code_dir: Path, exclude: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(files to ship, names left out because they are not UTF-8); see code_files."""
    kept, odd, _ = code_files(code_dir, exclude)
    return kept, odd


def take_snapshot(code_dir: str | Path, exclude: Sequence[str] = ()) -> Snapshot:
    """Hash every file to ship; the snapshot hash covers paths, modes and contents."""
    root = Path(code_dir).resolve()
    if not root.is_dir():
        raise CvtuiError(f"code dir {root} does not exist")
    files = []
    total = 0
    names, _, untracked = code_files(root, exclude)
    for name in names:
        path = root / name
        try:
            st = path.stat()
        except OSError:
            continue  # deleted since git listed it
        if not stat.S_ISREG(st.st_mode):
            continue
        total += st.st_size
        if total > MAX_SNAPSHOT_BYTES:
            raise CvtuiError(
                f"code dir {root} holds over {size(MAX_SNAPSHOT_BYTES)}; "
                "list data and outputs under `exclude:` in the run config"
            )
        executable = bool(st.st_mode & stat.S_IXUSR)
        files.append(SnapshotFile(name, st.st_size, executable, _file_hash(path, st)))
    shipped = {f.path for f in files}
    return Snapshot(root, tuple(files), snapshot_hash(files), tuple(sorted(untracked & shipped)))
