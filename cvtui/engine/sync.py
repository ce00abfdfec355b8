"""Sync of one run's outputs into the local mirror and the catalog: append, whole, block delta.

Per file (delta.strategy): append-only text is extended from the synced offset once the
digests of its head and of the tail of the synced prefix still match on the host, and its
whole-file digest is checked when the run ends; anything else goes through a verified part
file (transfer.py: whole or block delta, resumable). A file whose stat matches the version
synced is skipped without a word to the host, unless --verify. CSV and JSONL files are then
parsed into metrics (ingest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog.metrics import blob_key
from cvtui.engine import delta
from cvtui.engine.host_files import (
    FileChanging,
    FileSource,
    HostGone,
    RemoteFileMissing,
    Signature,
    range_digests,
    remote_signature,
    reply_stat,
)
from cvtui.engine.ingest import ingest_file
from cvtui.engine.transfer import FileResult, Progress, TransferMixin, proven_mtime
from cvtui.metrics_parse import metrics_kind
from cvtui.mirror import (
    Mirror,
    UnsafePathError,
    file_leaves,
)
from cvtui.mirror import range_digests as local_range_digests
from remote_agent import protocol
from remote_agent.protocol import FileEntry, FileListing, ProtocolError, RemoteError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

log = logging.getLogger("cvtui.engine.sync")

DEFAULT_OUTPUTS = ("*.csv", "*.jsonl", "*.yaml", "*.log", "*.pt", "*.pth", "*.ckpt")
ALWAYS_SYNCED = (protocol.RUN_LOG,)
FILES_IN_PARALLEL = 3


def output_globs(spec: dict[str, Any] | None) -> list[str]:
    """The globs a run's outputs are synced by: its spec's, else the defaults, plus the log."""
    outputs = (spec or {}).get("outputs") or DEFAULT_OUTPUTS
    return list(dict.fromkeys([*outputs, *ALWAYS_SYNCED]))


class RunSync(TransferMixin):
    """Syncs the outputs of one run from one host."""

    def __init__(
        self,
        catalog: Catalog,
        home: Path,
        source: FileSource,
        run_id: str,
        globs: Sequence[str],
        progress: Progress | None = None,
        base: str = protocol.WORK_DIR,
    ) -> None:
        self.catalog = catalog
        self.source = source
        self.run_id = run_id
        self.base = base  # a listing says where outputs are; until one came, the caller
        self.globs = list(globs)
        self.mirror = Mirror(home, run_id)
        self.progress = progress or Progress()
        self.algo = ""  # the hash both sides use, agreed with the host on first need
        self.fetched = 0  # bytes read from the host by this RunSync
        self.fetched_by_path: dict[str, int] = {}

    # -- a pass over the run --------------------------------------------------------------

    async def listing(self) -> FileListing:
        reply = await self._call(protocol.OP_FILES_LIST, run_id=self.run_id, globs=self.globs)
        return FileListing.from_wire(reply)

    def _note_listing(self, listing: FileListing) -> None:
        self.base = listing.base
        unmatched = list(listing.unmatched)
        with contextlib.suppress(Exception):  # a note for `cvtui files`: never stops a sync
            self.catalog.update_run(self.run_id, outputs_unmatched=unmatched)

    async def run(
        self,
        *,
        listing: FileListing | None = None,
        changed: Sequence[FileEntry] | None = None,
        verify: bool = False,
        final: bool = False,
    ) -> list[FileResult]:
        """Sync every listed file (listing None: ask the host), or only the changed entries."""
        await self._agree_algorithm()
        if changed is None:
            listing = listing or await self.listing()
            entries: Sequence[FileEntry] = listing.files
            self._note_listing(listing)
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
        # Entries the host got wrong (a size of -5, an mtime of 10**30) fail alone.
        changes += [
            (bad.path, {"sync_status": "error", "reason": bad.reason}) for bad in listing.rejected
        ]
        for bad in listing.rejected:
            log.warning("run %s: %s: %s", self.run_id, bad.path, bad.reason)
        rows = {row["path"]: row for row in self.catalog.files_of(self.run_id)}
        changes += [(e.path, self._entry_fields(e, rows.get(e.path))) for e in listing.files]
        self.catalog.set_files(self.run_id, changes)
        if not listing.truncated:
            present = [e.path for e in listing.files] + [s.path for s in listing.skipped]
            present += [bad.path for bad in listing.rejected]
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
            await self._agree_algorithm()
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
                # --verify compares digests with the local copy, whatever the file's kind: a
                # small file that matches costs a signature, not a download.
                seed = how != delta.WHOLE or (verify and intact)
                result = await self._transfer(entry, row, seed=seed, trust_cache=not verify)
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
        except ProtocolError as exc:  # the host's reply made no sense: this file fails alone
            log.warning("run %s: %s: %s", self.run_id, path, exc)
            result = FileResult(path, "error", reason=f"the host sent a {exc}")
        except HostGone:
            with contextlib.suppress(Exception):
                self.catalog.set_file(self.run_id, path, sync_status="outdated")
            raise
        except OSError as exc:  # local trouble (a full disk) or a size the host got wrong
            log.warning("run %s: %s: %s", self.run_id, path, exc)
            result = FileResult(path, "error", reason=f"{exc.strerror or exc}")
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
        stat = reply_stat(reply)
        size, ino = stat.size, stat.ino
        theirs = range_digests(reply, len(checks))
        if ino != row["synced_ino"] or size <= synced:
            return None  # replaced, cut, or changed in place (same size): a delta decides
        local = self.mirror.path(path)
        mine = await asyncio.to_thread(local_range_digests, local, checks, self.algo)
        if mine != theirs:
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
            synced_mtime_ns=proven_mtime(stat.mtime_ns, stat.read_ns),
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
                synced_mtime_ns=proven_mtime(sig.mtime_ns, sig.read_ns),
                synced_size=size,
                synced_ino=sig.ino,
                sync_status="synced",
                reason=None,
            )
            return FileResult(path, "synced", delta.APPEND)
        row = self.catalog.file_row(self.run_id, path) or {}
        return await self._transfer(entry, row, seed=True, trust_cache=False)

    async def _agree_algorithm(self) -> None:
        if not self.algo:
            self.algo = await self.source.hash_algorithm()

    async def _signature(self, path: str) -> Signature:
        return await remote_signature(self.source, self.run_id, path, self.algo)

    async def _call(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.source.call(op, **args)
