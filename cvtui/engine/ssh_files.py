"""SshSource: a connected host's run dirs over SSH, the one FileSource today.

Agent RPC over the host session's channel; random reads over its SFTP session (several in
flight, each at most one SFTP request so none runs past the end); whole big files streamed by
the agent's files_send into a FIFO that `cat` reads on a channel of its own (file_stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncssh

from cvtui.engine.agent_client import AgentClient, AgentClosedError
from cvtui.engine.deploy import killable_command
from cvtui.engine.file_stream import (
    PartWriter,
    SendParser,
    StreamEnd,
    StreamFailed,
    StreamHeader,
)
from cvtui.engine.host_files import (
    CALL_TIMEOUT_S,
    CHUNK_BYTES,
    DEFAULT_READ_BYTES,
    HostGone,
    RemoteFileMissing,
    negotiate_algorithm,
)
from remote_agent import protocol
from remote_agent.protocol import ProtocolError, RemoteError

if TYPE_CHECKING:
    from cvtui.engine.engine import HostSession

STREAM_WINDOW_BYTES = 8 << 20  # SSH window of a send channel: 80 MB/s at 100 ms round trips
STREAM_PACKET_BYTES = 256 << 10  # the largest SSH packet a send channel takes
STREAMS_PER_CONNECTION = 2  # send channels at once (sshd allows 10 sessions per connection)


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


# Per agent connection: the hash its syncs use (asked once), and the send channels it may open.
_chosen: weakref.WeakKeyDictionary[AgentClient, str] = weakref.WeakKeyDictionary()
_send_slots: weakref.WeakKeyDictionary[AgentClient, asyncio.Semaphore] = weakref.WeakKeyDictionary()


class _SendSession(asyncssh.SSHClientSession[bytes]):
    """One `agent.pyz send` channel: stdout into the parser, stderr kept for a failure."""

    def __init__(self, parser: SendParser) -> None:
        self.parser = parser
        self.error: Exception | None = None  # what went wrong here (the channel is closed)
        self.lost: Exception | None = None  # what asyncssh said when the channel went away
        self.stderr = bytearray()
        self.closed = asyncio.Event()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if len(self.stderr) < 4096:
                self.stderr += data
            return
        if self.error is not None:
            return
        try:
            self.parser.feed(data)
        except Exception as exc:  # a full disk, a bad line: this file fails, not the connection
            self.error = exc
            if self.chan is not None:
                self.chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.closed.set()

    def last_words(self) -> str:
        """The host's stderr, less the pid line of the start script."""
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        return "; ".join(line for line in lines if not line.startswith("cvtui-pid "))[-300:]


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

    async def hash_algorithm(self) -> str:
        chosen = _chosen.get(self.client)
        if chosen is None:
            chosen = _chosen[self.client] = await negotiate_algorithm(self)
        return chosen

    async def send(
        self, run_id: str, path: str, algo: str, writer: PartWriter
    ) -> tuple[StreamHeader, StreamEnd]:
        conn = self.session.conn
        if conn is None:
            raise HostGone(f"{self.name} is not connected")
        try:
            reply = await self.call(protocol.OP_FILES_SEND, run_id=run_id, path=path, algo=algo)
        except RemoteError as exc:
            if exc.code in (protocol.E_SEND_BUSY, protocol.E_UNKNOWN_OP):
                raise StreamFailed(exc.message) from exc
            raise
        fifo = reply.get("fifo")
        if not isinstance(fifo, str) or not fifo.endswith(".send") or not fifo.isprintable():
            raise ProtocolError(f"bad reply: fifo {fifo!r:.80}")
        parser = SendParser(writer.header, writer.data)
        session = _SendSession(parser)
        slots = _send_slots.setdefault(self.client, asyncio.Semaphore(STREAMS_PER_CONNECTION))
        async with slots:
            try:
                chan, _ = await conn.create_session(
                    lambda: session,
                    killable_command(["cat", fifo]),
                    encoding=None,
                    window=STREAM_WINDOW_BYTES,
                    max_pktsize=STREAM_PACKET_BYTES,
                )
            except asyncssh.ChannelOpenError as exc:  # MaxSessions reached, say
                raise StreamFailed(f"no channel to read {fifo}: {exc.reason}") from exc
            except (asyncssh.Error, OSError) as exc:
                raise HostGone(f"{self.name}: reading {fifo} failed: {exc!r}") from exc
            writer.pause, writer.resume = chan.pause_reading, chan.resume_reading
            try:
                await session.closed.wait()
            finally:
                chan.close()
        if session.error is not None:
            raise session.error
        if parser.header is None:
            status = chan.get_exit_status()
            raise StreamFailed(f"cat {fifo} exited ({status}) at once: {session.last_words()}")
        if parser.end is None and session.lost is not None:
            raise HostGone(f"{self.name}: channel lost while reading {fifo}: {session.lost!r}")
        return parser.finish()

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
