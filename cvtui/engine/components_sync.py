"""Engine side of `cvtui components sync`: compare a host's copy of a code dir with the store,
import the host's edits into the store, then make host, store and local dir agree as asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncssh

from cvtui.catalog.components import VersionEntry
from cvtui.engine.agent_client import AgentClosedError
from cvtui.errors import CvtuiError
from cvtui.repro.blobstore import BlobStore, hash_file
from cvtui.repro.snapshot import SKIPPED_DIRS, SKIPPED_SUFFIXES
from cvtui.repro.sync_plan import (
    DELETE_HOST,
    REMOVE_LOCAL,
    SAME,
    STRATEGIES,
    USE_HOST,
    WRITE_HOST,
    HostFile,
    KnownVersion,
    PlanItem,
    StoreFile,
    plan,
)
from remote_agent import protocol
from remote_agent.blocktree import ALGO_BLAKE2B, ALGO_XXH3, new_hasher
from remote_agent.protocol import RemoteError, WorkspaceFile, WorkspaceListing

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import Engine, HostSession

log = logging.getLogger("cvtui.engine.components_sync")
_T = TypeVar("_T")

CONNECT_WAIT_S = 30.0  # how long a command waits for its host to connect
LIST_TIMEOUT_S = 300.0  # one page of a listing hashes up to 256 MiB on the host
PUT_TIMEOUT_S = 120.0
PARALLEL = 16  # imports and writes in flight: hides the round trips of many small files
BATCH_MIN_FILES = 8  # from this many files to write, they travel as tars
BATCH_MAX_FILES = 2000
BATCH_MAX_BYTES = 64 << 20


def batches(items: list[PlanItem]) -> list[list[PlanItem]]:
    """Items cut into tars of at most BATCH_MAX_FILES files and about BATCH_MAX_BYTES."""
    found: list[list[PlanItem]] = [[]]
    size = 0
    for item in items:
        weight = item.store.size if item.store else 0
        if found[-1] and (len(found[-1]) >= BATCH_MAX_FILES or size + weight > BATCH_MAX_BYTES):
            found.append([])
            size = 0
        found[-1].append(item)
        size += weight
    return [b for b in found if b]


# xxh3_128 -> blake2b-128 of store blobs, for hosts without xxhash (content never changes).
_blake2b_of: dict[str, str] = {}
# Commands being served, per engine: the runner hands a pending command over on every pass.
_serving: weakref.WeakKeyDictionary[Engine, set[int]] = weakref.WeakKeyDictionary()


def digest_file(path: str | os.PathLike[str], algo: str) -> str:
    hasher = new_hasher(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return str(hasher.hexdigest())


def blake2b_of(blobs: BlobStore, hash_: str) -> str:
    """A store blob's blake2b-128, for hosts without xxhash (cached: content never changes)."""
    digest = _blake2b_of.get(hash_)
    if digest is None:
        digest = _blake2b_of[hash_] = digest_file(blobs.path(hash_), ALGO_BLAKE2B)
    return digest


def blake2b_names(blobs: BlobStore, hashes: set[str]) -> dict[str, str]:
    """blake2b-128 -> xxh3_128 for the blobs named that the store holds."""
    return {blake2b_of(blobs, h): h for h in hashes if h in _blake2b_of or blobs.has(h)}


def default_remote_dir(host_root: str, local_root: str) -> str:
    """Where a host keeps its copy of a code dir: <agent root>/workspace/<dir name>."""
    return f"{host_root.rstrip('/')}/workspace/{Path(local_root).name}"


def store_versions(catalog: Catalog, root: str) -> dict[str, dict[str, KnownVersion]]:
    """path -> hash -> every version of one code dir, as classify() needs them."""
    found: dict[str, dict[str, KnownVersion]] = {}
    for path, hash_, created, source in catalog.version_history(root):
        found.setdefault(path, {})[hash_] = KnownVersion(created, source.startswith("host:"))
    return found


def host_reason(catalog: Catalog, name: str) -> str:
    found = catalog.host_state(name)
    if found is None:
        return "not connected"
    state, reason = found
    return reason or state


async def run_components_sync(engine: Engine, command: dict[str, Any]) -> None:
    """Serve one `components_sync` command; it always finishes with a result."""
    serving = _serving.setdefault(engine, set())
    if command["id"] in serving:
        return
    serving.add(command["id"])
    try:
        ok, result = await _serve(engine, command["args"])
    except asyncio.CancelledError:
        raise
    except (CvtuiError, RemoteError, AgentClosedError, asyncssh.Error, OSError) as exc:
        ok, result = False, {"error": str(exc)}
    except Exception as exc:  # the command must finish whatever went wrong
        log.exception("components sync failed")
        ok, result = False, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        serving.discard(command["id"])
    engine.catalog.finish_command(command["id"], ok=ok, result=result)


async def _connected(engine: Engine, name: str) -> HostSession | str:
    """The host's session once its agent is up, or why it is not (a host that is down)."""
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        session = engine.sessions.get(name)
        if session is None:
            return f"host {name} is not in the engine's inventory"
        if session.client is not None and session.hello is not None:
            return session
        answered = engine.answered.get(name)
        if (answered is not None and answered.is_set()) or time.monotonic() > deadline:
            return host_reason(engine.catalog, name)
        await asyncio.sleep(0.05)


async def _serve(engine: Engine, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    name = str(args.get("host", ""))
    strategy = str(args.get("strategy", "dry-run"))
    if strategy not in STRATEGIES:
        return False, {"error": f"unknown strategy {strategy!r}"}
    if str(args.get("root")) not in engine.catalog.component_roots():
        # With no versions at all, every host file would look host_only and be replaced.
        return False, {"error": f"{args.get('root')} has no versions in the store (scan it)"}
    session = await _connected(engine, name)
    if isinstance(session, str):
        return False, {
            "error": f"{name}: {session}",
            "host": name,
            "host_down": True,
            "reason": session,
        }
    sync = WorkspaceSync(engine, session, args)
    return await sync.run(strategy, dict(args.get("decisions") or {}))


class WorkspaceSync:
    """One sync of one host's copy of one code dir."""

    def __init__(self, engine: Engine, session: HostSession, args: dict[str, Any]) -> None:
        assert session.hello is not None and session.client is not None
        self.catalog = engine.catalog
        self.session = session
        self.client = session.client
        self.name = session.host.name
        self.root = str(args["root"])
        self.blobs = BlobStore.in_home(engine.catalog.path.parent)
        self.remote_dir = str(args.get("remote_dir") or "") or default_remote_dir(
            session.hello.root, self.root
        )
        self.exclude = [str(p) for p in args.get("exclude") or ()]
        self.top = self.remote_dir  # the listing names it as an absolute path
        self.algo = ALGO_XXH3  # the listing's hash algorithm
        self.errors: dict[str, str] = {}  # path -> why it was left as it was

    async def listing(self) -> WorkspaceListing:
        """Every page of the host copy's listing, joined."""
        files: list[WorkspaceFile] = []
        skipped: list[protocol.SkippedFile] = []
        after = None
        while True:
            reply = await self.client.call(
                protocol.OP_WORKSPACE_LIST,
                timeout_s=LIST_TIMEOUT_S,
                dir=self.remote_dir,
                after=after,
                skip_dirs=sorted(SKIPPED_DIRS),
                skip_suffixes=list(SKIPPED_SUFFIXES),
                exclude=self.exclude,
            )
            page = WorkspaceListing.from_wire(reply)
            files += page.files
            skipped += page.skipped
            if page.next is None:
                return WorkspaceListing(
                    page.dir, page.exists, page.algo, tuple(files), tuple(skipped)
                )
            after = page.next

    async def run(self, strategy: str, decisions: dict[str, str]) -> tuple[bool, dict[str, Any]]:
        listing = await self.listing()
        self.top, self.algo = listing.dir, listing.algo
        known = store_versions(self.catalog, self.root)
        active = {
            path: StoreFile(row["hash"], row["size"], bool(row["executable"]), row["created"])
            for path, row in self.catalog.active_versions(self.root).items()
        }
        names: dict[str, str] = {}
        if self.algo == ALGO_BLAKE2B:
            every = {h for versions in known.values() for h in versions}
            names = await asyncio.to_thread(blake2b_names, self.blobs, every)
        host = {
            f.path: HostFile(
                f.path,
                f.size,
                f.executable,
                f.hash,
                f.hash if self.algo == ALGO_XXH3 else names.get(f.hash),
            )
            for f in listing.files
        }
        items = plan(host, active, known, strategy, decisions)
        importing = [i for i in items if i.import_first]
        done = {i.path: i for i in await self.each(importing, self.import_version)}
        items = [done.get(i.path, i) for i in items]
        imported = sum(1 for i in importing if i.path not in self.errors)
        writes = [i for i in items if i.action == WRITE_HOST and i.path not in self.errors]
        if writes:
            sftp = await self.session.sftp()
            await sftp.makedirs(self.top, exist_ok=True)
        if len(writes) >= BATCH_MIN_FILES:  # many files: one tar per batch, not one put each
            for batch in batches(writes):
                await self.write_host_batch(batch)
            written = {i.path for i in writes}
            items_left = [i for i in items if i.path not in written]
        else:
            items_left = items
        await self.each([i for i in items_left if i.path not in self.errors], self.apply)
        result = {
            "host": self.name,
            "root": self.root,
            "remote_dir": self.top,
            "algo": self.algo,
            "strategy": strategy,
            "imported": imported,
            "same": sum(1 for i in items if i.conflict == SAME),
            "items": [self.describe(i) for i in items if i.conflict != SAME],
            "skipped": [asdict(s) for s in listing.skipped],
        }
        return not self.errors, result

    async def each(
        self, items: list[PlanItem], work: Callable[[PlanItem], Awaitable[_T]]
    ) -> list[_T]:
        """work() on every item, PARALLEL at a time: transfers of small files overlap."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(item: PlanItem) -> _T:
            async with gate:
                return await work(item)

        return list(await asyncio.gather(*(one(i) for i in items)))

    def describe(self, item: PlanItem) -> dict[str, Any]:
        return {
            "path": item.path,
            "conflict": item.conflict,
            "action": item.action,
            "host_hash": item.host.hash if item.host else None,
            "store_hash": item.store.hash if item.store else None,
            "error": self.errors.get(item.path),
        }

    # -- import ---------------------------------------------------------------------------
    async def import_version(self, item: PlanItem) -> PlanItem:
        """Copy the host's content of a path into the store as an inactive version."""
        found = item.host
        assert found is not None
        hash_ = found.hash
        if hash_ is None or not self.blobs.has(hash_):
            try:
                hash_ = await self.fetch(found)
            except (OSError, asyncssh.Error, CvtuiError) as exc:
                self.errors[item.path] = f"could not import the host's version: {exc}"
                return item
        entry = VersionEntry(found.path, hash_, found.size, found.executable)
        self.catalog.record_blobs([(hash_, found.size)], "component")
        self.catalog.record_versions(self.root, [entry], f"host:{self.name}", activate=False)
        host = HostFile(found.path, found.size, found.executable, found.digest, hash_)
        return PlanItem(item.path, item.conflict, item.action, True, host, item.store)

    async def fetch(self, found: HostFile) -> str:
        """Download a host file into the blob store; its xxh3, checked against the listing."""
        sftp = await self.session.sftp()
        name = await asyncio.to_thread(self.incoming_file)
        try:
            await sftp.get(f"{self.top}/{found.path}", name)
        except BaseException:
            await asyncio.to_thread(os.unlink, name)
            raise
        hash_, size, digest = await asyncio.to_thread(self.store_download, name)
        if digest != found.digest:
            # What was read is kept (an edit is never lost), but the decision was for the
            # listed content: this path waits for the next sync.
            entry = VersionEntry(found.path, hash_, size)
            self.catalog.record_blobs([(hash_, size)], "component")
            self.catalog.record_versions(self.root, [entry], f"host:{self.name}", activate=False)
            raise CvtuiError("it changed on the host during the sync; run the sync again")
        return hash_

    def incoming_file(self) -> str:
        """A fresh temp file for a download, in the cvtui home (outside the blob store)."""
        incoming = self.catalog.path.parent / "incoming"
        incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming)
        os.close(fd)
        return name

    def store_download(self, name: str) -> tuple[str, int, str]:
        """(xxh3, size in bytes, digest in the host's algorithm) of a download, now a blob."""
        try:
            hash_ = self.blobs.put_file(name)
            size = Path(name).stat().st_size
            digest = hash_ if self.algo == ALGO_XXH3 else digest_file(name, self.algo)
        finally:
            Path(name).unlink(missing_ok=True)
        return hash_, size, digest

    # -- actions --------------------------------------------------------------------------
    async def apply(self, item: PlanItem) -> None:
        """Carry out one item's action; a failure is recorded against its path."""
        try:
            await self.act(item)
        except RemoteError as exc:
            self.errors[item.path] = exc.message
        except (CvtuiError, OSError, asyncssh.Error) as exc:
            self.errors[item.path] = str(exc)

    async def act(self, item: PlanItem) -> None:
        if item.action == WRITE_HOST:
            assert item.store is not None
            await self.write_host(item.path, item.store, item.host)
        elif item.action == DELETE_HOST:
            assert item.host is not None
            await self.client.call(
                protocol.OP_WORKSPACE_DELETE,
                dir=self.top,
                path=item.path,
                algo=self.algo,
                hash=item.host.digest,
            )
        elif item.action == USE_HOST:
            assert item.host is not None and item.host.hash is not None
            version = StoreFile(item.host.hash, item.host.size, item.host.executable)
            await asyncio.to_thread(self.write_local, item.path, version)
            self.catalog.activate_version(self.root, item.path, version.hash)
        elif item.action == REMOVE_LOCAL:
            await asyncio.to_thread(self.write_local, item.path, None)
            others = set(self.catalog.active_versions(self.root)) - {item.path}
            self.catalog.deactivate_missing(self.root, others)

    async def write_host(self, path: str, version: StoreFile, current: HostFile | None) -> None:
        """Upload a store blob next to the host copy, then have the agent rename it in place."""
        if not self.blobs.has(version.hash):
            raise CvtuiError(f"blob {version.hash} is missing from the store")
        digest = version.hash
        if self.algo == ALGO_BLAKE2B:
            digest = await asyncio.to_thread(blake2b_of, self.blobs, version.hash)
        sftp = await self.session.sftp()
        upload = f"{protocol.WORKSPACE_UPLOAD_PREFIX}{secrets.token_hex(8)}"
        try:
            await sftp.put(str(self.blobs.path(version.hash)), f"{self.top}/{upload}")
            await self.client.call(
                protocol.OP_WORKSPACE_PUT,
                timeout_s=PUT_TIMEOUT_S,
                dir=self.top,
                upload=upload,
                path=path,
                algo=self.algo,
                hash=digest,
                executable=version.executable,
                replaces=current.digest if current else None,
            )
        except BaseException:
            with contextlib.suppress(OSError, asyncssh.Error):
                await sftp.remove(f"{self.top}/{upload}")  # the agent removes it on refusal
            raise

    async def write_host_batch(self, batch: list[PlanItem]) -> None:
        """Upload a batch of store versions as one tar; the agent checks and places each file."""
        missing = [i for i in batch if i.store is None or not self.blobs.has(i.store.hash)]
        for item in missing:
            self.errors[item.path] = f"blob {item.store.hash if item.store else '?'} is missing"
        batch = [i for i in batch if i not in missing]
        if not batch:
            return
        versions = [i.store for i in batch if i.store is not None]
        tar_path, digests = await asyncio.to_thread(self.batch_tar, versions)
        sftp = await self.session.sftp()
        upload = f"{protocol.WORKSPACE_UPLOAD_PREFIX}{secrets.token_hex(8)}"
        try:
            await sftp.put(tar_path, f"{self.top}/{upload}")
            reply = await self.client.call(
                protocol.OP_WORKSPACE_PUT_MANY,
                timeout_s=PUT_TIMEOUT_S + len(batch) * 0.05,
                dir=self.top,
                upload=upload,
                algo=self.algo,
                items=[
                    {
                        "path": item.path,
                        "hash": digest,
                        "executable": version.executable,
                        "replaces": item.host.digest if item.host else None,
                    }
                    for item, version, digest in zip(batch, versions, digests, strict=True)
                ],
            )
        except RemoteError as exc:
            for item in batch:
                self.errors[item.path] = exc.message
            return
        except (CvtuiError, OSError, asyncssh.Error) as exc:
            for item in batch:
                self.errors[item.path] = str(exc)
            with contextlib.suppress(OSError, asyncssh.Error):
                await sftp.remove(f"{self.top}/{upload}")
            return
        finally:
            await asyncio.to_thread(Path(tar_path).unlink, missing_ok=True)
        for item, error in zip(batch, reply.get("errors") or [], strict=False):
            if error:
                self.errors[item.path] = str(error)

    def batch_tar(self, versions: list[StoreFile]) -> tuple[str, list[str]]:
        """A temp tar of the blobs (member "N" is versions[N]) and their digests for the host."""
        import tarfile

        digests = []
        handle, tar_path = tempfile.mkstemp(prefix="cvtui-workspace-", suffix=".tar")
        os.close(handle)
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for index, version in enumerate(versions):
                tar.add(str(self.blobs.path(version.hash)), arcname=str(index), recursive=False)
                digests.append(
                    blake2b_of(self.blobs, version.hash)
                    if self.algo == ALGO_BLAKE2B
                    else version.hash
                )
        return tar_path, digests

    def write_local(self, path: str, version: StoreFile | None) -> None:
        """Make the local code dir's file this version (None: remove it), atomically.

        A local edit the store never saw is first kept as a version, so nothing is lost.
        """
        base = Path(self.root)
        target = base / path
        if not target.parent.resolve().is_relative_to(base.resolve()):
            raise CvtuiError(f"{target} is outside the code dir {base}")
        if target.is_file():
            local, size = hash_file(target)
            if local not in self.catalog.version_hashes(self.root).get(path, set()):
                self.blobs.put_file(target, expect=local)
                executable = bool(target.stat().st_mode & stat.S_IXUSR)
                self.catalog.record_blobs([(local, size)], "component")
                entry = VersionEntry(path, local, size, executable)
                self.catalog.record_versions(self.root, [entry], "local", activate=False)
        if version is None:
            target.unlink(missing_ok=True)
            self.catalog.update_scan_cache(self.root, [], [path])
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        self.blobs.copy_to(version.hash, target, mode=0o755 if version.executable else 0o644)
        st = target.stat()
        self.catalog.update_scan_cache(
            self.root, [(path, st.st_size, st.st_mtime_ns, version.hash)], []
        )
