"""Sync of one run's outputs into the local mirror and the catalog: append, whole, block delta.

Per file (delta.strategy): append-only text is extended from the synced offset once the
digests of its head and of the tail of the synced prefix still match on the host; anything
else is assembled in a part file, seeded from the local copy (block delta) or not (whole),
with only the differing blocks read over SFTP, several reads in flight; the assembled file's
block-tree digest must equal the host's before it replaces the local copy in one rename.
A part file left by an interrupted transfer is the seed of the next one, so it resumes.
CSV and JSONL files are then parsed into metrics (cvtui/engine/ingest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog.metrics import blob_key
from cvtui.engine import delta
from cvtui.engine.host_files import (
    CHUNK_BYTES,
    FileChanging,
    FileSource,
    RemoteFile,
    RemoteFileMissing,
    Signature,
    fetch_ranges,
    first_error,
    pick_algorithm,
    remote_leaves,
    remote_signature,
)
from cvtui.engine.ingest import ingest_file
from cvtui.engine.mirror import (
    Mirror,
    UnsafePathError,
    clone_into,
    file_leaves,
    open_part,
    range_digests,
)
from cvtui.metrics_parse import metrics_kind
from remote_agent import protocol
from remote_agent.files import (
    DIGEST_BYTES,
    block_size_for,
    leaf_count,
)
from remote_agent.protocol import FileEntry, FileListing, RemoteError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

log = logging.getLogger("cvtui.engine.sync")

DEFAULT_OUTPUTS = ("*.csv", "*.jsonl", "*.yaml", "*.log", "*.pt", "*.pth", "*.ckpt")
ALWAYS_SYNCED = ("output.log",)
SEGMENT_BYTES = 8 << 20  # fetched data is hashed in segments of this size as they land
SEGMENTS_IN_FLIGHT = 2
FILES_IN_PARALLEL = 3
MAX_ROUNDS = 4  # plan/fetch/verify rounds before a file that keeps changing is left outdated
UNKNOWN_LEAF = bytes(DIGEST_BYTES)  # a digest no block has: that block is fetched
RACY_NS = 1_000_000_000  # a file modified this close to when it was read is checked again


def output_globs(spec: dict[str, Any] | None) -> list[str]:
    """The globs a run's outputs are synced by: its spec's, else the defaults, plus the log."""
    outputs = (spec or {}).get("outputs") or DEFAULT_OUTPUTS
    return list(dict.fromkeys([*outputs, *ALWAYS_SYNCED]))


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


class RunSync:
    """Syncs the outputs of one run from one host."""

    def __init__(
        self,
        catalog: Catalog,
        home: Path,
        source: FileSource,
        run_id: str,
        globs: Sequence[str],
        progress: Progress | None = None,
    ) -> None:
        self.catalog = catalog
        self.source = source
        self.run_id = run_id
        self.globs = list(globs)
        self.mirror = Mirror(home, run_id)
        self.progress = progress or Progress()
        self.algo = pick_algorithm(source.algorithms)
        self.fetched = 0  # bytes read from the host by this RunSync
        self.fetched_by_path: dict[str, int] = {}

    # -- a pass over the run --------------------------------------------------------------

    async def listing(self) -> FileListing:
        reply = await self._call(protocol.OP_FILES_LIST, run_id=self.run_id, globs=self.globs)
        return FileListing.from_wire(reply)

    async def run(
        self,
        *,
        listing: FileListing | None = None,
        changed: Sequence[FileEntry] | None = None,
        verify: bool = False,
        final: bool = False,
    ) -> list[FileResult]:
        """Sync every listed file (listing None: ask the host), or only the changed entries."""
        if changed is None:
            listing = listing or await self.listing()
            entries: Sequence[FileEntry] = listing.files
            self._record_listing(listing)
        else:
            entries = changed
            for entry in entries:
                self._record_entry(entry)
        todo: list[FileEntry] = []
        for entry in entries:
            row = self.catalog.file_row(self.run_id, entry.path)
            if verify or not self._up_to_date(entry, row):
                todo.append(entry)
            elif final and row is not None and row["hash"] is None:
                todo.append(entry)  # appended to: its whole-file digest is checked at the end
            elif final and metrics_kind(entry.path) is not None:
                # A last line without a newline counts once the run has ended.
                local = self.mirror.path(entry.path)
                await asyncio.to_thread(
                    ingest_file, self.catalog, self.run_id, entry.path, local, final=True
                )
        self.progress.files_total += len(todo)
        limit = asyncio.Semaphore(FILES_IN_PARALLEL)

        async def one(entry: FileEntry) -> FileResult:
            async with limit:
                result = await self.sync_file(entry, verify=verify, final=final)
            self.progress.files_done += 1
            return result

        results = list(await asyncio.gather(*(one(e) for e in todo)))
        if changed is None:
            busy = {self.mirror.part(r.path) for r in results if r.status == "outdated"}
            self.mirror.drop_parts(keep=busy)
        return results

    def _record_listing(self, listing: FileListing) -> None:
        changes: list[tuple[str, dict[str, Any]]] = [
            (skipped.path, {"sync_status": "skipped", "reason": skipped.reason})
            for skipped in listing.skipped
        ]
        rows = {row["path"]: row for row in self.catalog.files_of(self.run_id)}
        changes += [(e.path, self._entry_fields(e, rows.get(e.path))) for e in listing.files]
        self.catalog.set_files(self.run_id, changes)
        if not listing.truncated:
            present = [e.path for e in listing.files] + [s.path for s in listing.skipped]
            self.catalog.forget_missing_files(self.run_id, present)

    def _record_entry(self, entry: FileEntry) -> None:
        row = self.catalog.file_row(self.run_id, entry.path)
        self.catalog.set_file(self.run_id, entry.path, **self._entry_fields(entry, row))

    def _entry_fields(self, entry: FileEntry, row: dict[str, Any] | None) -> dict[str, Any]:
        """What a listing says of a file: its host stat, and outdated when it is news."""
        fields: dict[str, Any] = {
            "size": entry.size,
            "mtime": entry.mtime_ns / 1e9,
            "mtime_ns": entry.mtime_ns,
            "ino": entry.ino,
        }
        if row is None or row["sync_status"] in ("vanished", "skipped"):
            fields["sync_status"] = "outdated"
            fields["reason"] = None
        elif row["sync_status"] == "synced" and not self._up_to_date(entry, row):
            fields["sync_status"] = "outdated"
        return fields

    def _up_to_date(self, entry: FileEntry, row: dict[str, Any] | None = None) -> bool:
        """Whether the local copy is the host's current version (stat alone, no hashing)."""
        row = row or self.catalog.file_row(self.run_id, entry.path)
        if row is None or row["synced_mtime_ns"] is None:
            return False
        if (row["synced_size"], row["synced_mtime_ns"], row["synced_ino"]) != (
            entry.size,
            entry.mtime_ns,
            entry.ino,
        ):
            return False
        return self._local_intact(entry.path, row)

    def _local_intact(self, path: str, row: dict[str, Any]) -> bool:
        """Whether the local copy is still the one this sync wrote (nobody touched it)."""
        try:
            st = self.mirror.local_stat(path)
        except UnsafePathError:
            return False
        return st is not None and (st.st_size, st.st_mtime_ns, st.st_ino) == (
            row["synced_size"],
            row["local_mtime_ns"],
            row["local_ino"],
        )

    # -- one file -------------------------------------------------------------------------

    async def sync_file(
        self, entry: FileEntry, *, verify: bool = False, final: bool = False
    ) -> FileResult:
        """Bring one file level with the host; its catalog row says how that went."""
        path = entry.path
        before = self.fetched_by_path.get(path, 0)
        row = self.catalog.file_row(self.run_id, path) or {}
        try:
            self.mirror.prepare(path)
            self.catalog.set_file(self.run_id, path, sync_status="syncing")
            local = self.mirror.local_stat(path)
            intact = bool(row) and local is not None and self._local_intact(path, row)
            how = delta.strategy(path, entry.size, local.st_size if intact and local else None)
            result = None
            if how == delta.APPEND and not verify:
                result = await self._append(entry, row)
                if final and (result is None or result.status == "synced"):
                    # The run ended: the whole-file digest decides (a delta if it differs).
                    result = await self._verify_appended(entry)
            if result is None:
                result = await self._transfer(
                    entry, row, seed=how != delta.WHOLE, trust_cache=not verify
                )
        except UnsafePathError as exc:
            result = FileResult(path, "skipped", reason=str(exc))
        except RemoteError as exc:
            if exc.code == protocol.E_NO_SUCH_FILE:
                result = FileResult(path, "vanished", reason="gone from the host while synced")
            elif exc.code == protocol.E_UNSAFE_PATH:
                result = FileResult(path, "skipped", reason=exc.message)
            else:
                result = FileResult(path, "error", reason=f"{exc.code}: {exc.message}")
        except FileChanging as exc:
            result = FileResult(path, "outdated", reason=str(exc))
        except RemoteFileMissing:  # it went away between listing and reading
            result = FileResult(path, "vanished", reason="gone from the host while synced")
        except PermissionError as exc:
            result = FileResult(path, "error", reason=f"permission denied: {exc}")
        except BaseException:
            with contextlib.suppress(Exception):
                self.catalog.set_file(self.run_id, path, sync_status="outdated")
            raise
        fetched = self.fetched_by_path.get(path, 0) - before
        result = FileResult(result.path, result.status, result.strategy, fetched, result.reason)
        if result.status != "synced":
            self.catalog.set_file(
                self.run_id, path, sync_status=result.status, reason=result.reason
            )
        elif metrics_kind(path) is not None:
            await asyncio.to_thread(
                ingest_file, self.catalog, self.run_id, path, self.mirror.path(path), final=final
            )
        return result

    async def _append(self, entry: FileEntry, row: dict[str, Any]) -> FileResult | None:
        """Fetch what follows the synced prefix; None when the prefix changed on the host."""
        path = entry.path
        synced = int(row["synced_size"])
        checks = delta.append_check_ranges(synced)
        reply = await self._call(
            protocol.OP_FILES_HASH,
            run_id=self.run_id,
            path=path,
            algo=self.algo,
            ranges=[list(r) for r in checks],
        )
        size, ino = int(reply["size"]), int(reply["ino"])
        if ino != row["synced_ino"] or size <= synced:
            return None  # replaced, cut, or changed in place (same size): a delta decides
        local = self.mirror.path(path)
        mine = await asyncio.to_thread(range_digests, local, checks, self.algo)
        if mine != reply["digests"]:
            return None
        end = synced
        if size > synced:
            self.progress.planned_bytes += size - synced
            fd = os.open(local, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            pending: dict[int, bytes] = {}

            def write_in_order(offset: int, data: bytes) -> None:
                # Readers (`cvtui logs -f`) tail this file: it only ever grows, in order.
                nonlocal end
                pending[offset] = data
                while end in pending:
                    chunk = pending.pop(end)
                    os.pwrite(fd, chunk, end)
                    end += len(chunk)

            try:
                await self._fetch(path, [(synced, size - synced)], write_in_order)
            finally:
                os.close(fd)
        st = local.lstat()
        status = "synced" if end == size else "outdated"
        self.catalog.set_file(
            self.run_id,
            path,
            sync_status=status,
            strategy=delta.APPEND,
            synced_size=end,
            synced_mtime_ns=_proven_mtime(int(reply["mtime_ns"]), int(reply["read_ns"])),
            synced_ino=ino,
            local_mtime_ns=st.st_mtime_ns,
            local_ino=st.st_ino,
            hash=None,
            reason=None,
            synced_at=time.time(),
        )
        return FileResult(path, status, delta.APPEND)

    async def _verify_appended(self, entry: FileEntry) -> FileResult:
        """At a run's end: check an appended file's whole-file digest; re-sync if it differs."""
        path = entry.path
        sig = await self._signature(path)
        local = self.mirror.path(path)
        size = local.lstat().st_size
        leaves = await asyncio.to_thread(file_leaves, local, size, sig.block_size, sig.algo)
        if delta.Tree(size, sig.block_size, sig.algo, leaves).digest == sig.digest:
            self.catalog.set_file(
                self.run_id,
                path,
                hash=blob_key(sig.algo, sig.digest),
                synced_mtime_ns=_proven_mtime(sig.mtime_ns, sig.read_ns),
                synced_size=size,
                synced_ino=sig.ino,
                sync_status="synced",
                reason=None,
            )
            return FileResult(path, "synced", delta.APPEND)
        row = self.catalog.file_row(self.run_id, path) or {}
        return await self._transfer(entry, row, seed=True, trust_cache=False)

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
        for _ in range(MAX_ROUNDS):
            total = leaf_count(sig.size, sig.block_size)
            os.ftruncate(fd, sig.size)
            if leaves is None or block != sig.block_size:
                leaves = await asyncio.to_thread(
                    file_leaves, part, sig.size, sig.block_size, sig.algo
                )
                block = sig.block_size
            else:
                leaves = _usable_leaves(leaves, known, sig.size, block)
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

    def _cached_leaves(
        self, path: str, row: dict[str, Any], st: os.stat_result
    ) -> tuple[int, bytes] | None:
        """(block size, leaves) stored for the local copy, when it is still the one synced."""
        if not row or not row.get("hash") or not self._local_intact(path, row):
            return None
        found = self.catalog.load_blob(row["hash"])
        if found is None or found[0] != self.algo or found[1] != st.st_size:
            return None
        return found[2], found[3]

    def _confirm(self, entry: FileEntry, sig: Signature) -> FileResult:
        """The local copy is the host's current version: record that, move nothing."""
        self.catalog.set_file(
            self.run_id,
            entry.path,
            sync_status="synced",
            synced_mtime_ns=_proven_mtime(sig.mtime_ns, sig.read_ns),
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
            self.catalog.store_blob(key, sig.algo, sig.size, sig.block_size, leaves)
        self.catalog.set_file(
            self.run_id,
            entry.path,
            sync_status="synced",
            strategy=delta.WHOLE if fresh else delta.DELTA,
            size=sig.size,
            synced_size=sig.size,
            synced_mtime_ns=_proven_mtime(sig.mtime_ns, sig.read_ns),
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
        self.catalog.drop_unused_blobs()
        return FileResult(entry.path, "synced", delta.WHOLE if fresh else delta.DELTA)

    # -- the host -------------------------------------------------------------------------

    async def _signature(self, path: str) -> Signature:
        return await remote_signature(self.source, self.run_id, path, self.algo)

    async def _call(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.source.call(op, **args)

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

        def counted(count: int) -> None:
            self.fetched += count
            self.fetched_by_path[path] = self.fetched_by_path.get(path, 0) + count
            self.progress.fetched(count)

        opened = remote is None
        handle = await self.source.open(self.run_id, path) if remote is None else remote
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
        remote = await self.source.open(self.run_id, path)

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


def _proven_mtime(mtime_ns: int, read_ns: int) -> int | None:
    """The mtime to trust as proof of this version, None when it is too close to the read.

    File timestamps tick coarsely (milliseconds, or seconds on some filesystems): a write in
    the same tick as the version read would leave the stat unchanged, so such a version is
    checked again (cheaply: digests) rather than trusted by its stat.
    """
    return mtime_ns if read_ns - mtime_ns >= RACY_NS else None


def _usable_leaves(leaves: bytes, known: int, size: int, block: int) -> bytes:
    """Leaves of a file of `known` bytes that still hold once it is cut or grown to `size`.

    A leaf cut by the change of size, or past the old end, is unknown (fetched if it differs).
    """
    keep = leaf_count(known, block) if known == size else min(known, size) // block
    total = leaf_count(size, block)
    return bytes(leaves[: keep * DIGEST_BYTES]) + UNKNOWN_LEAF * max(0, total - keep)
