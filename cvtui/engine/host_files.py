"""What sync needs of a host, behind a small Protocol: the agent's file ops and random reads.

SshSource is the one transport today: agent RPC over the host session's channel, reads over
its SFTP session (several in flight, each at most one SFTP request so none runs past the end).
The helpers here turn the agent's paged, polled replies into one Signature, and ranges into
parallel reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from cvtui.engine import delta
from cvtui.engine.agent_client import AgentClosedError
from remote_agent import protocol
from remote_agent.blocktree import (
    ALGO_BLAKE2B,
    ALGO_XXH3,
    DIGEST_BYTES,
    GROUP_BLOCKS,
    valid_block_size,
)
from remote_agent.protocol import ProtocolError
from remote_agent.wire_fields import FieldError, integer, one_of, text

if TYPE_CHECKING:
    from cvtui.engine.engine import HostSession

CONTROLLER_ALGORITHMS = (ALGO_XXH3, ALGO_BLAKE2B)  # in order of preference
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


def pick_algorithm(offered: Sequence[str]) -> str:
    for algo in CONTROLLER_ALGORITHMS:
        if algo in offered:
            return algo
    raise HostGone(f"the host offers no hash this controller knows ({', '.join(offered)})")


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


# -- over SSH ---------------------------------------------------------------------------------


class SftpFile:
    """One host file open over SFTP; errors become RemoteFileMissing, PermissionError, HostGone."""

    def __init__(self, handle: asyncssh.SFTPClientFile) -> None:
        self.handle = handle

    async def read(self, offset: int, length: int) -> bytes:
        """Up to length bytes at offset; fewer only at the end of the file."""
        pieces: list[bytes] = []
        got = 0
        while got < length:
            try:
                data: bytes = await self.handle.read(length - got, offset + got)  # opened "rb"
            except asyncssh.SFTPEOFError:
                break
            except asyncssh.SFTPError as exc:
                raise _sftp_error(exc) from exc
            except (asyncssh.Error, OSError) as exc:
                raise HostGone(f"SFTP read failed: {exc}") from exc
            if not data:
                break
            pieces.append(data)
            got += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await self.handle.close()


class SshSource:
    """A connected host session: agent file ops over its channel, reads over its SFTP."""

    chunk_bytes = CHUNK_BYTES

    def __init__(self, session: HostSession) -> None:
        if session.client is None or session.hello is None:
            raise HostGone(f"{session.host.name} is not connected")
        self.session = session
        self.client = session.client
        self.name = session.host.name
        self.algorithms: Sequence[str] = tuple(session.hello.hash_algorithms)
        self.runs_dir = f"{session.hello.root.rstrip('/')}/runs"

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            return await self.client.call(op, timeout_s=CALL_TIMEOUT_S, **args)
        except (AgentClosedError, TimeoutError, asyncssh.Error, OSError) as exc:
            raise HostGone(f"{self.name}: {op} failed: {exc!r}") from exc

    async def open(self, run_id: str, path: str) -> SftpFile:
        try:
            sftp = await self.session.sftp()  # one client per connection, however many ask
            # A read longer than the server serves comes back short and costs a second round
            # trip (OpenSSH serves 255 KiB): ask for what it serves, one request per read.
            self.chunk_bytes = min(CHUNK_BYTES, sftp.limits.max_read_len or DEFAULT_READ_BYTES)
            # block_size 0: each read is one request, its reply handed over without a copy.
            handle = await sftp.open(f"{self.runs_dir}/{run_id}/{path}", "rb", block_size=0)
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc) from exc
        except (AgentClosedError, asyncssh.Error, OSError) as exc:
            raise HostGone(f"{self.name}: SFTP open failed: {exc!r}") from exc
        return SftpFile(handle)


def _sftp_error(exc: asyncssh.SFTPError) -> Exception:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return RemoteFileMissing(exc.reason)
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return PermissionError(exc.reason)
    if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
        return HostGone(f"SFTP connection lost: {exc.reason}")
    return PermissionError(f"SFTP error: {exc.reason}")
