"""The local mirror of run dirs: safe paths under <home>/runs/<run_id>, part files, local digests.

Nothing is ever written outside ``<home>/runs/<run_id>`` and ``<home>/sync-tmp/<run_id>``:
names are checked part by part, every directory on the way must be a real directory (a
symlink there is refused, never followed), files are opened with O_NOFOLLOW, and a finished
transfer lands with one atomic rename from the part file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

from cvtui.errors import CvtuiError
from remote_agent.blocktree import hash_workers, leaf_digests, new_hasher
from remote_agent.protocol import OWN_FILES_PREFIX, RUN_LOG

# The engine's copy of a run's catalog row, events and file rows, beside its mirrored files:
# what `cvtui reindex` restores a run from when its host is gone. Never a host's file (the agent
# syncs no such name), so a sync never overwrites it.
RUN_RECORD = OWN_FILES_PREFIX + "record.json"
FICLONE = 0x40049409  # linux/fs.h: share the blocks of a file (btrfs, xfs) instead of copying
COPY_CHUNK_BYTES = 64 << 20


class UnsafePathError(CvtuiError):
    """A remote name that would write outside the mirror, or a mirror path that is not ours."""


def path_parts(rel: str) -> list[str]:
    """The parts of a run-relative path, or UnsafePathError when it could leave the mirror."""
    if not rel or "\0" in rel:
        raise UnsafePathError(f"unsafe file name {rel!r}: empty or NUL byte")
    if rel.startswith("/"):
        raise UnsafePathError(f"unsafe file name {rel!r}: absolute")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"unsafe file name {rel!r}: empty, '.' or '..' part")
    return parts


def mirror_dir(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id


def write_run_record(home: Path, run_id: str, record: Mapping[str, Any]) -> None:
    """Replace a run's mirrored record atomically (0600), its directories made as the mirror's."""
    target = Mirror(home, run_id).prepare(RUN_RECORD)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)
    tmp.replace(target)


def read_run_record(home: Path, run_id: str) -> dict[str, Any] | None:
    """A run's mirrored record; None when there is none or it is not a JSON object."""
    try:
        with open(Mirror(home, run_id).path(RUN_RECORD), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def run_log_path(home: Path, run_id: str) -> Path:
    """The mirrored output.log of a run (stdout and stderr), beside its outputs.

    Runs synced before work dirs kept it at the top of their mirror, where a run's own
    output.log now goes.
    """
    mirror = mirror_dir(home, run_id)
    current = mirror.joinpath(*RUN_LOG.split("/"))
    if not current.parent.exists() and (mirror / "output.log").exists():
        return mirror / "output.log"
    return current


class Mirror:
    """One run's mirror directory and its part files."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.root = mirror_dir(home, run_id)
        self.parts_dir = home / "sync-tmp" / run_id

    def path(self, rel: str) -> Path:
        return self.root.joinpath(*path_parts(rel))

    def prepare(self, rel: str) -> Path:
        """The local path for rel, its directories created (0700) and checked to be real ones."""
        parts = path_parts(rel)
        _real_directory(self.root.parent, create=True)
        directory = self.root
        _real_directory(directory, create=True)
        for part in parts[:-1]:
            directory = directory / part
            _real_directory(directory, create=True)
        target = directory / parts[-1]
        with contextlib.suppress(FileNotFoundError):
            mode = target.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise UnsafePathError(f"{target} exists and is not a regular file")
        return target

    def local_stat(self, rel: str) -> os.stat_result | None:
        """lstat of the local copy; None when there is none (or something that is not a file)."""
        try:
            st = self.path(rel).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def part(self, rel: str) -> Path:
        """Where a transfer of rel is assembled: named by a hash, so any name fits."""
        _real_directory(self.parts_dir.parent, create=True)
        _real_directory(self.parts_dir, create=True)
        return self.parts_dir / f"{xxhash.xxh3_64_hexdigest(rel.encode())}.part"

    def commit(self, part: Path, rel: str) -> Path:
        """Move a verified part file into place atomically; the local path."""
        target = self.prepare(rel)
        part.replace(target)
        return target

    def drop_parts(self, keep: set[Path] | None = None) -> None:
        """Remove part files of transfers that are over (all of them when keep is None)."""
        keep = keep or set()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in self.parts_dir.iterdir():
                if entry.suffix == ".part" and entry not in keep:
                    entry.unlink(missing_ok=True)


def _real_directory(path: Path, *, create: bool) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if not create:
            return
        path.mkdir(mode=0o700)
        return
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{path} is not a directory (a symlink is never followed)")


def open_part(part: Path) -> int:
    """A read-write fd on a part file, created 0600 when absent."""
    return os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def clone_into(src: Path, fd: int, size: int) -> None:
    """Make the file behind fd a copy of src's first `size` bytes (reflink when possible)."""
    src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, FICLONE, src_fd)
            os.ftruncate(fd, size)
            return
        os.ftruncate(fd, 0)
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(
                    src_fd, fd, min(COPY_CHUNK_BYTES, size - copied), copied, copied
                )
                if n == 0:
                    break
                copied += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            with open(src, "rb") as fin, os.fdopen(os.dup(fd), "wb") as fout:
                fin.seek(copied)
                fout.seek(copied)
                shutil.copyfileobj(fin, fout, COPY_CHUNK_BYTES)
        os.ftruncate(fd, size)
    finally:
        os.close(src_fd)


def file_leaves(path: Path, size: int, block_size: int, algo: str, first_leaf: int = 0) -> bytes:
    """Leaf digests of path from leaf first_leaf to `size` bytes (fewer when it is shorter)."""
    start = first_leaf * block_size
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        return leaf_digests(fh, max(0, size - start), block_size, algo, workers=hash_workers())


def range_digests(path: Path, ranges: list[tuple[int, int]], algo: str) -> list[str | None]:
    """Hex digests of byte ranges of a local file, as the agent's files_hash computes them."""
    out: list[str | None] = []
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        for offset, length in ranges:
            if offset + length > size:
                out.append(None)
                continue
            hasher = new_hasher(algo)
            fh.seek(offset)
            left = length
            while left:
                chunk = fh.read(min(left, COPY_CHUNK_BYTES))
                if not chunk:
                    break
                hasher.update(chunk)
                left -= len(chunk)
            out.append(None if left else str(hasher.hexdigest()))
    return out
