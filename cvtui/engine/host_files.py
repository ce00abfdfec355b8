"""What sync needs of a host, behind a small Protocol: the agent's file ops, reads, streams.

SshSource (ssh_files.py) is the one transport today. The helpers here pick the hash both
sides use, turn the agent's paged, polled replies into one Signature, and ranges into
parallel reads.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cvtui.engine import delta
from cvtui.engine.file_stream import PartWriter, StreamEnd, StreamHeader
from remote_agent import protocol
from remote_agent.blocktree import (
    BLOCK_ALGORITHMS,
    DIGEST_BYTES,
    GROUP_BLOCKS,
    measure_speeds,
    rank_algorithms,
    valid_block_size,
)
from remote_agent.protocol import ProtocolError, RemoteError
from remote_agent.wire_fields import FieldError, integer, one_of, text

CONTROLLER_ALGORITHMS = BLOCK_ALGORITHMS  # in order of preference (xxhash is a dependency)
CHUNK_BYTES = 256 << 10  # the longest SFTP read asked for (if the server serves that much)
DEFAULT_READ_BYTES = 32 << 10  # what every SFTP server serves (without a limits extension)
IN_FLIGHT = 16  # SFTP reads outstanding per file
LEAF_GROUPS_PER_CALL = 128  # 8192 leaf digests per files_signature reply
SIGNATURE_TIMEOUT_S = 3600.0  # hashing a huge checkpoint with blake2b on a slow disk
MAX_CHANGES = 4  # a file reported changed while hashed this often is left for a later pass
CALL_TIMEOUT_S = 30.0


class HostGone(ConnectionError):
    """The host's agent or SFTP session went away: the sync stops, files stay outdated."""


class RemoteFileMissing(Exception):
    """The host file is not there (any more)."""


class FileChanging(Exception):
    """The host file changed while it was synced."""


class RemoteFile(Protocol):
    async def read(self, offset: int, length: int) -> bytes: ...
    async def close(self) -> None: ...


class FileSource(Protocol):
    """A host's run dirs as sync sees them."""

    name: str
    algorithms: Sequence[str]  # hash algorithms the host offers (its hello)
    chunk_bytes: int  # the largest single read

    async def call(self, op: str, **args: Any) -> dict[str, Any]: ...
    async def open(self, run_id: str, path: str) -> RemoteFile: ...
    async def hash_algorithm(self) -> str:
        """The hash a sync of this host uses (negotiate_algorithm, kept per connection)."""

    async def send(
        self, run_id: str, path: str, algo: str, writer: PartWriter
    ) -> tuple[StreamHeader, StreamEnd]:
        """Stream a whole output file (named as listings name it) into writer; StreamFailed
        when streaming cannot be used here (the caller reads it over SFTP instead)."""


def pick_algorithm(offered: Sequence[str]) -> str:
    """The first hash of a host's (hello) list this controller knows."""
    for algo in offered:
        if algo in CONTROLLER_ALGORITHMS:
            return algo
    raise HostGone(f"the host offers no hash this controller knows ({', '.join(offered)})")


@functools.cache
def local_speeds() -> dict[str, float]:
    """Bytes per second this controller hashes with each algorithm (timed once, ~10 ms)."""
    return measure_speeds(list(CONTROLLER_ALGORITHMS))


def choose_algorithm(host: Mapping[str, float], local: Mapping[str, float]) -> str:
    """The hash that costs both sides least: the host hashes what it sends, this controller
    what it receives, so the two times per byte add (rank_algorithms breaks near ties)."""
    combined = {
        algo: 1.0 / (1.0 / speed + 1.0 / local[algo])
        for algo, speed in host.items()
        if algo in local and speed > 0 and local[algo] > 0
    }
    if not combined:
        offered = ", ".join(host)
        raise HostGone(f"the host offers no hash this controller knows ({offered})")
    return rank_algorithms(combined)[0]


def _speeds(reply: dict[str, Any]) -> dict[str, float]:
    speeds = reply.get("speeds")
    if not isinstance(speeds, dict) or len(speeds) > 16:
        raise ProtocolError(f"bad reply: speeds {speeds!r:.60} is not a mapping")
    found: dict[str, float] = {}
    for algo, speed in speeds.items():
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not speed >= 0:
            raise ProtocolError(f"bad reply: speed {speed!r:.40} of {algo!r:.40}")
        found[str(algo)[:64]] = float(speed)
    return found


async def negotiate_algorithm(source: FileSource) -> str:
    """Ask the host how fast it hashes with what, and choose the hash for a sync."""
    try:
        reply = await source.call(protocol.OP_FILES_ALGORITHMS)
    except RemoteError as exc:
        if exc.code != protocol.E_UNKNOWN_OP:
            raise
        return pick_algorithm(source.algorithms)  # an agent from before the op
    return choose_algorithm(_speeds(reply), await asyncio.to_thread(local_speeds))


@dataclass(frozen=True)
class Signature:
    """The host's block tree of one version of a file (group digests; leaves on demand)."""

    size: int  # bytes
    mtime_ns: int
    ino: int
    block_size: int  # bytes per leaf
    algo: str
    digest: bytes  # the whole-file tree digest
    groups: bytes  # every group digest, in order
    read_ns: int  # host clock when the file was stat'ed for hashing


@dataclass(frozen=True)
class FileStat:
    """A host file's stat as a files_hash or files_signature reply gives it, checked."""

    size: int  # bytes
    mtime_ns: int
    ino: int
    read_ns: int  # host clock when it was read


def reply_stat(reply: dict[str, Any]) -> FileStat:
    """The stat fields of a file op's reply; ProtocolError names a field out of range."""
    try:
        return FileStat(
            size=integer(reply, "size", 0) or 0,
            mtime_ns=integer(reply, "mtime_ns") or 0,
            ino=integer(reply, "ino", 0) or 0,
            read_ns=integer(reply, "read_ns") or 0,
        )
    except FieldError as exc:
        raise ProtocolError(f"bad reply: {exc}") from None


def _hex_digest(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * DIGEST_BYTES:
        raise ProtocolError(f"bad reply: {name} {value!r:.40} is not a digest")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"bad reply: {name} {value!r:.40} is not a digest") from None


def _digests(value: Any, name: str) -> bytes:
    """Base64 of whole digests."""
    if not isinstance(value, str):
        raise ProtocolError(f"bad reply: {name} is not base64 text")
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError:
        raise ProtocolError(f"bad reply: {name} is not base64") from None
    if len(data) % DIGEST_BYTES:
        raise ProtocolError(f"bad reply: {name} holds {len(data)} bytes, not whole digests")
    return data


def range_digests(reply: dict[str, Any], count: int) -> list[str | None]:
    """The hex digests of a files_hash reply (None: a range past the end), one per range."""
    found = reply.get("digests")
    if not isinstance(found, list) or len(found) != count:
        raise ProtocolError(f"bad reply: digests {found!r:.60} is not {count} digests")
    for digest in found:
        if digest is not None:
            _hex_digest(digest, "digests")
    return found


async def remote_signature(source: FileSource, run_id: str, path: str, algo: str) -> Signature:
    """The host's group digests of a file, waiting while it hashes, paging when many."""
    deadline = time.monotonic() + SIGNATURE_TIMEOUT_S
    groups = b""
    digest: bytes | None = None
    changes = 0
    while time.monotonic() < deadline:
        reply = await source.call(
            protocol.OP_FILES_SIGNATURE,
            run_id=run_id,
            path=path,
            algo=algo,
            groups_from=len(groups) // DIGEST_BYTES,
        )
        state = _signature_state(reply)
        if state == protocol.SIGNATURE_HASHING:
            continue  # the agent already waited a little before answering
        if state == protocol.SIGNATURE_CHANGED:
            changes += 1
            if changes > MAX_CHANGES:
                raise FileChanging(f"{path} changes faster than it can be hashed")
            await asyncio.sleep(0.2 * changes)
            groups, digest = b"", None
            continue
        stat = reply_stat(reply)
        this = _hex_digest(reply.get("digest"), "digest")
        if digest is not None and this != digest:
            groups = b""  # a new version since the previous page
        digest = this
        page = _digests(reply.get("groups"), "groups")
        try:
            block_size = integer(reply, "block_size", 1) or 0
            group_count = integer(reply, "group_count", 0) or 0
            sent_algo = text(reply, "algo", 64) or ""
        except FieldError as exc:
            raise ProtocolError(f"bad reply: {exc}") from None
        if not valid_block_size(block_size):
            raise ProtocolError(f"bad reply: block_size {block_size} is not a valid block size")
        if sent_algo != algo:
            raise ProtocolError(f"bad reply: algo {sent_algo!r:.40}, asked for {algo}")
        if group_count != -(-stat.size // block_size // GROUP_BLOCKS):
            raise ProtocolError(
                f"bad reply: group_count {group_count} for {stat.size} bytes in blocks of "
                f"{block_size}"
            )
        if not page and len(groups) // DIGEST_BYTES < group_count:
            raise ProtocolError("bad reply: an empty page of group digests")
        groups += page
        if len(groups) // DIGEST_BYTES >= group_count:
            return Signature(
                size=stat.size,
                mtime_ns=stat.mtime_ns,
                ino=stat.ino,
                block_size=block_size,
                algo=sent_algo,
                digest=digest,
                groups=groups[: group_count * DIGEST_BYTES],
                read_ns=stat.read_ns,
            )
    raise FileChanging(f"{path}: the host took over {SIGNATURE_TIMEOUT_S:g} s to hash it")


def _signature_state(reply: dict[str, Any]) -> str:
    try:
        return one_of(
            reply,
            "state",
            (protocol.SIGNATURE_READY, protocol.SIGNATURE_HASHING, protocol.SIGNATURE_CHANGED),
        )
    except FieldError as exc:
        raise ProtocolError(f"bad reply: {exc}") from None


async def remote_leaves(
    source: FileSource, run_id: str, path: str, sig: Signature, groups: list[int]
) -> dict[int, bytes]:
    """Leaf digests (concatenated, by group) of the signed version; FileChanging if it is gone."""
    found: dict[int, bytes] = {}
    total = -(-sig.size // sig.block_size)
    for batch in delta.group_batches(groups, LEAF_GROUPS_PER_CALL):
        reply = await source.call(
            protocol.OP_FILES_SIGNATURE,
            run_id=run_id,
            path=path,
            algo=sig.algo,
            block_size=sig.block_size,
            groups_count=0,
            leaves_of=batch,
        )
        if (
            _signature_state(reply) != protocol.SIGNATURE_READY
            or reply.get("digest") != sig.digest.hex()
        ):
            raise FileChanging(f"{path} changed while its blocks were compared")
        leaves = reply.get("leaves")
        if not isinstance(leaves, dict) or set(leaves) != {str(g) for g in batch}:
            raise ProtocolError(f"bad reply: leaves for other groups than {batch[:8]} ...")
        for key, value in leaves.items():
            group = int(key)
            wanted = min(GROUP_BLOCKS, total - group * GROUP_BLOCKS) * DIGEST_BYTES
            digests = _digests(value, "leaves")
            if len(digests) != wanted:
                raise ProtocolError(f"bad reply: group {group} has {len(digests)} leaf bytes")
            found[group] = digests
    return found


async def fetch_ranges(
    remote: RemoteFile,
    chunk: int,
    ranges: list[delta.Range],
    sink: Callable[[int, bytes], None],
    counted: Callable[[int], None],
) -> None:
    """Read ranges of an open host file in reads of at most chunk bytes, IN_FLIGHT at a time,
    handing each piece to sink. A read past the end gives fewer bytes (or none); what
    arrives is counted (bytes).
    """
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def read(offset: int, length: int) -> None:
        async with limit:
            data = await remote.read(offset, length)
        if data:
            sink(offset, data)
            counted(len(data))

    try:
        async with asyncio.TaskGroup() as group:
            for offset, length in delta.chunks(ranges, chunk):
                group.create_task(read(offset, length))
    except BaseExceptionGroup as errors:
        raise first_error(errors) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (nested) exception group, to re-raise on its own."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
