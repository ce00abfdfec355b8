"""Whole-file and block-delta transfers of one file into a part file, verified, then renamed.

The part file starts as the leftover of an interrupted transfer (resume), else as a copy of
the local file (delta), else empty (whole); only blocks whose digests differ from the host's
are read into it, several SFTP reads in flight, hashed in segments as they land. The part's
block-tree digest must equal the host's before it replaces the local copy in one rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog.metrics import blob_key
from cvtui.engine import delta
from cvtui.engine.file_stream import PartWriter, StreamFailed
from cvtui.engine.host_files import (
    CHUNK_BYTES,
    FileChanging,
    RemoteFile,
    Signature,
    fetch_ranges,
    first_error,
    remote_leaves,
)
from cvtui.mirror import clone_into, file_leaves, open_part
from remote_agent.blocktree import DIGEST_BYTES, block_size_for, leaf_count
from remote_agent.protocol import FileEntry, host_relpath

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.host_files import FileSource
    from cvtui.mirror import Mirror

log = logging.getLogger("cvtui.engine.sync")

SEGMENT_BYTES = 8 << 20  # fetched data is hashed in segments of this size as they land
SEGMENTS_IN_FLIGHT = 2
MAX_ROUNDS = 4  # plan/fetch/verify rounds before a file that keeps changing is left outdated
UNKNOWN_LEAF = bytes(DIGEST_BYTES)  # a digest no block has: that block is fetched
RACY_NS = 1_000_000_000  # a file modified this close to when it was read is checked again
# A new file this big is streamed by the host (read once, hashed as sent) rather than read over
# SFTP while the agent hashes it: worth the start of a python on the host (~50 ms).
STREAM_MIN_BYTES = 8 << 20


@dataclass
class Progress:
    """Counters for a progress bar, shared by every file of a sync (bytes, files)."""

    planned_bytes: int = 0  # bytes known to need fetching
    fetched_bytes: int = 0  # bytes read from hosts so far
    files_total: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)
    on_change: Callable[[Progress], None] | None = None

    def fetched(self, count: int) -> None:
        self.fetched_bytes += count
        if self.on_change is not None:
            self.on_change(self)

    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.fetched_bytes / max(1e-6, time.monotonic() - self.started)


@dataclass(frozen=True)
class FileResult:
    path: str
    status: str  # a catalog file state
    strategy: str | None = None
    fetched: int = 0  # bytes read from the host for this file
    reason: str | None = None


class TransferMixin:
    """RunSync's transfers (sync.py mixes this in and provides what is declared below)."""

    if TYPE_CHECKING:
        catalog: Catalog
        source: FileSource
        run_id: str
        mirror: Mirror
        progress: Progress
        algo: str
        fetched: int
        fetched_by_path: dict[str, int]
        base: str  # where output paths are in the run dir on the host (host_relpath)

        def _local_intact(self, path: str, row: dict[str, Any]) -> bool: ...
        async def _signature(self, path: str) -> Signature: ...

    async def _transfer(
        self, entry: FileEntry, row: dict[str, Any], *, seed: bool, trust_cache: bool
    ) -> FileResult:
        """Assemble the host's current version in a part file, verify it, rename it in place.

        The part file starts as the leftover of an interrupted transfer (resume), else as a
        copy of the local file (seed), else empty; only blocks whose digests differ from the
        host's are then read into it.
        """
        path = entry.path
        part = self.mirror.part(path)
        resumed = part.exists()
        local_st = self.mirror.local_stat(path) if seed and not resumed else None
        fresh = not resumed and local_st is None
        log.debug(
            "run %s: %s: %s transfer of %d bytes",
            self.run_id,
            path,
            "resumed" if resumed else "fresh" if fresh else "delta",
            entry.size,
        )
        fd = open_part(part)
        try:  # the fd is closed here, once: a second close could hit a reused number
            sig, leaves = await self._assemble(entry, row, part, fd, local_st, trust_cache)
        finally:
            os.close(fd)
        if leaves is None:
            # The host's version is the one already here (touched, or racy): keep it.
            part.unlink(missing_ok=True)
            return self._confirm(entry, sig)
        return self._commit(entry, part, sig, leaves, fresh)

    async def _assemble(
        self,
        entry: FileEntry,
        row: dict[str, Any],
        part: Path,
        fd: int,
        local_st: os.stat_result | None,
        trust_cache: bool,
    ) -> tuple[Signature, bytes | None]:
        """Make the part file the host's version: (its signature, leaves); None: keep local."""
        path = entry.path
        fresh = local_st is None and os.fstat(fd).st_size == 0
        if fresh and entry.size >= STREAM_MIN_BYTES:
            streamed = await self._stream_whole(fd, part, path, entry.size)
            if streamed is not None:
                return streamed
        # `leaves` describe the part file's first `known` bytes at `block` bytes per leaf;
        # None: not known, hash the part file when needed.
        leaves: bytes | None = None
        block, known = 0, 0
        sig_task = asyncio.create_task(self._signature(path))
        try:
            if local_st is not None:
                # The copy overlaps with the host hashing its version.
                await asyncio.to_thread(clone_into, self.mirror.path(path), fd, local_st.st_size)
                cached = self._cached_leaves(path, row, local_st) if trust_cache else None
                if cached is not None:
                    (block, leaves), known = cached, local_st.st_size
            if fresh and entry.size:
                # Nothing to compare with: fetch it all while the host hashes it.
                block, known = block_size_for(entry.size), entry.size
                self.progress.planned_bytes += entry.size
                os.ftruncate(fd, entry.size)
                got = await self._fetch_into(fd, part, path, [(0, entry.size)], block)
                leaves = delta.merge_leaves(b"", got, leaf_count(entry.size, block))
            sig = await sig_task
        finally:
            if not sig_task.done():
                sig_task.cancel()
            with contextlib.suppress(BaseException):
                await sig_task  # its failure, if any, is the one raised already
        if (
            local_st is not None
            and leaves is not None
            and known == sig.size
            and row.get("hash") == blob_key(sig.algo, sig.digest)
        ):
            return sig, None
        return await self._delta_rounds(fd, part, path, sig, leaves, block, known)

    async def _delta_rounds(
        self,
        fd: int,
        part: Path,
        path: str,
        sig: Signature,
        leaves: bytes | None,
        block: int,
        known: int,
    ) -> tuple[Signature, bytes]:
        """Fetch what differs from the host's signature until the part file matches it.

        `leaves` describe the part file's first `known` bytes at `block` bytes per leaf (None:
        hash the part file).
        """
        for _ in range(MAX_ROUNDS):
            total = leaf_count(sig.size, sig.block_size)
            os.ftruncate(fd, sig.size)
            if leaves is None or block != sig.block_size:
                leaves = await asyncio.to_thread(
                    file_leaves, part, sig.size, sig.block_size, sig.algo
                )
                block = sig.block_size
            else:
                leaves = usable_leaves(leaves, known, sig.size, block)
            known = sig.size
            if delta.Tree(sig.size, block, sig.algo, leaves).digest == sig.digest:
                return sig, leaves
            groups = delta.differing_groups(leaves, sig.groups, sig.algo)
            try:
                remote = await remote_leaves(self.source, self.run_id, path, sig, groups)
            except FileChanging:
                sig = await self._signature(path)
                continue
            needed = delta.needed_leaves(leaves, remote, groups, sig.size, block)
            ranges = delta.leaf_ranges(needed, sig.size, block)
            self.progress.planned_bytes += delta.total_bytes(ranges)
            got = await self._fetch_into(fd, part, path, ranges, block)
            leaves = delta.merge_leaves(leaves, got, total)
            if delta.Tree(sig.size, block, sig.algo, leaves).digest == sig.digest:
                return sig, leaves
            sig = await self._signature(path)  # it changed while it was read: plan again
        raise FileChanging(f"{path} kept changing while it was synced ({MAX_ROUNDS} tries)")

    async def _stream_whole(
        self, fd: int, part: Path, path: str, size: int
    ) -> tuple[Signature, bytes] | None:
        """A new big file, streamed by the host as it reads and hashes it once; None when the
        host cannot stream (the caller fetches it over SFTP instead).

        The part file is verified against the host's digest of the bytes it sent; when the
        file changed while it was read they only seed a block delta against a new signature.
        """
        writer = PartWriter(fd, self.algo, self._counter(path))
        self.progress.planned_bytes += size
        try:
            header, end = await self.source.send(self.run_id, path, self.algo, writer)
            leaves = await writer.leaves()
        except StreamFailed as exc:
            log.info("run %s: %s: streaming unavailable, using SFTP: %s", self.run_id, path, exc)
            self.progress.planned_bytes -= size
            os.ftruncate(fd, 0)
            return None
        finally:
            await writer.close()
        tree = delta.Tree(header.size, header.block_size, header.algo, leaves)
        if not end.changed and tree.digest == end.digest:
            sig = Signature(
                size=header.size,
                mtime_ns=header.mtime_ns,
                ino=header.ino,
                block_size=header.block_size,
                algo=header.algo,
                digest=end.digest,
                groups=tree.groups,
                read_ns=header.read_ns,
            )
            return sig, leaves
        log.debug("run %s: %s changed while streamed (%s)", self.run_id, path, end.error)
        sig = await self._signature(path)
        return await self._delta_rounds(fd, part, path, sig, leaves, header.block_size, header.size)

    def _cached_leaves(
        self, path: str, row: dict[str, Any], st: os.stat_result
    ) -> tuple[int, bytes] | None:
        """(block size, leaves) stored for the local copy, when it is still the one synced."""
        if not row or not row.get("hash") or not self._local_intact(path, row):
            return None
        found = self.catalog.load_signature(row["hash"])
        if found is None or found[0] != self.algo or found[1] != st.st_size:
            return None
        return found[2], found[3]

    def _confirm(self, entry: FileEntry, sig: Signature) -> FileResult:
        """The local copy is the host's current version: record that, move nothing."""
        self.catalog.set_file(
            self.run_id,
            entry.path,
            sync_status="synced",
            synced_mtime_ns=proven_mtime(sig.mtime_ns, sig.read_ns),
            synced_ino=sig.ino,
            reason=None,
            synced_at=time.time(),
        )
        return FileResult(entry.path, "synced", delta.DELTA)

    def _commit(
        self, entry: FileEntry, part: Path, sig: Signature, leaves: bytes, fresh: bool
    ) -> FileResult:
        target = self.mirror.commit(part, entry.path)
        st = target.lstat()
        key = blob_key(sig.algo, sig.digest)
        if sig.size > delta.SMALL_BYTES:
            self.catalog.store_signature(key, sig.algo, sig.size, sig.block_size, leaves)
        self.catalog.set_file(
            self.run_id,
            entry.path,
            sync_status="synced",
            strategy=delta.WHOLE if fresh else delta.DELTA,
            size=sig.size,
            synced_size=sig.size,
            synced_mtime_ns=proven_mtime(sig.mtime_ns, sig.read_ns),
            synced_ino=sig.ino,
            mtime_ns=sig.mtime_ns,
            mtime=sig.mtime_ns / 1e9,
            ino=sig.ino,
            local_mtime_ns=st.st_mtime_ns,
            local_ino=st.st_ino,
            hash=key,
            reason=None,
            synced_at=time.time(),
        )
        self.catalog.drop_unused_signatures()
        return FileResult(entry.path, "synced", delta.WHOLE if fresh else delta.DELTA)

    # -- the host -------------------------------------------------------------------------

    def _counter(self, path: str) -> Callable[[int], None]:
        """Counts bytes read from the host for path (progress, `cvtui sync`'s report)."""

        def counted(count: int) -> None:
            self.fetched += count
            self.fetched_by_path[path] = self.fetched_by_path.get(path, 0) + count
            self.progress.fetched(count)

        return counted

    async def _fetch(
        self,
        path: str,
        ranges: list[delta.Range],
        sink: Callable[[int, bytes], None],
        remote: RemoteFile | None = None,
    ) -> None:
        """Read ranges of the host file into sink, counting the bytes (opens it if needed)."""
        if not ranges:
            return

        counted = self._counter(path)
        opened = remote is None
        if remote is None:
            handle = await self.source.open(self.run_id, host_relpath(path, self.base))
        else:
            handle = remote
        try:
            chunk = min(CHUNK_BYTES, self.source.chunk_bytes)
            await fetch_ranges(handle, chunk, ranges, sink, counted)
        finally:
            if opened:
                with contextlib.suppress(Exception):
                    await handle.close()

    async def _fetch_into(
        self, fd: int, part: Path, path: str, ranges: list[delta.Range], block_size: int
    ) -> dict[int, bytes]:
        """Fetch ranges into the part file; the leaf digests of what landed, by leaf index.

        Ranges are cut into segments hashed as soon as they land, so hashing overlaps the
        transfer of the next segment.
        """
        found: dict[int, bytes] = {}
        if not ranges:
            return found
        segments = delta.chunks(ranges, max(SEGMENT_BYTES, block_size))
        limit = asyncio.Semaphore(SEGMENTS_IN_FLIGHT)
        remote = await self.source.open(self.run_id, host_relpath(path, self.base))

        def write(offset: int, data: bytes) -> None:
            os.pwrite(fd, data, offset)

        async def segment(offset: int, length: int) -> None:
            async with limit:
                await self._fetch(path, [(offset, length)], write, remote)
            digests = await asyncio.to_thread(
                file_leaves, part, offset + length, block_size, self.algo, offset // block_size
            )
            first = offset // block_size
            for i in range(len(digests) // DIGEST_BYTES):
                found[first + i] = digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]

        try:
            async with asyncio.TaskGroup() as group:
                for offset, length in segments:
                    group.create_task(segment(offset, length))
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
        finally:
            with contextlib.suppress(Exception):
                await remote.close()
        return found


def proven_mtime(mtime_ns: int, read_ns: int) -> int | None:
    """The mtime to trust as proof of this version, None when it is too close to the read.

    File timestamps tick coarsely (milliseconds, or seconds on some filesystems): a write in
    the same tick as the version read would leave the stat unchanged, so such a version is
    checked again (cheaply: digests) rather than trusted by its stat.
    """
    return mtime_ns if read_ns - mtime_ns >= RACY_NS else None


def usable_leaves(leaves: bytes, known: int, size: int, block: int) -> bytes:
    """Leaves of a file of `known` bytes that still hold once it is cut or grown to `size`.

    A leaf cut by the change of size, or past the old end, is unknown (fetched if it differs).
    """
    keep = leaf_count(known, block) if known == size else min(known, size) // block
    total = leaf_count(size, block)
    return bytes(leaves[: keep * DIGEST_BYTES]) + UNKNOWN_LEAF * max(0, total - keep)
