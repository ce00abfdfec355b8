"""A host that is this machine: the agent's real file ops called in-process, reads with pread,
and files_send's FIFO read by a real `cat`, as the controller reads it over SSH."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtui.engine.file_stream import PartWriter, SendParser, StreamEnd, StreamFailed, StreamHeader
from cvtui.engine.host_files import RemoteFileMissing, negotiate_algorithm
from remote_agent import protocol
from remote_agent.doctor import block_hash_algorithms
from remote_agent.files import FileOps
from remote_agent.protocol import WORK_DIR, RemoteError
from remote_agent.sendfile import SendOps

RUN_ID = "01hzzsync0test0run0000000a"


class LocalFile:
    def __init__(self, path: Path, source: InProcessSource) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise RemoteFileMissing(str(path)) from exc
        self.source = source

    async def read(self, offset: int, length: int) -> bytes:
        if self.source.before_read is not None:
            await self.source.before_read(offset, length)
        data = os.pread(self.fd, length, offset)
        self.source.bytes_read += len(data)
        self.source.reads += 1
        if self.source.on_read is not None:
            await self.source.on_read(offset, data)
        return data

    async def close(self) -> None:
        os.close(self.fd)


class InProcessSource:
    """FileOps over a root dir on this machine, answering as the agent would over SSH."""

    name = "here"
    chunk_bytes = 256 << 10

    def __init__(self, root: Path, algorithms: Sequence[str] | None = None) -> None:
        self.root = root
        self.events: list[dict[str, Any]] = []
        self.ops = FileOps(str(root), self._send)
        self.algorithms = tuple(algorithms or block_hash_algorithms())
        self.ops.algorithms = list(self.algorithms)
        self.send_ops = SendOps(str(root), lambda: self.ops.algorithms)
        self.streamed = 0  # files sent whole through files_send
        self.can_stream = True  # False: answer files_send as an agent from before it would
        self.calls: list[str] = []
        self.bytes_read = 0
        self.reads = 0
        self.on_read: Any = None  # async (offset, data) -> None, to interrupt a transfer
        self.before_read: Any = None  # async (offset, length) -> None, to change the file

    def _send(self, message: dict[str, Any]) -> bool:
        self.events.append(message)
        return True

    def run_dir(self, run_id: str = RUN_ID) -> Path:
        """The run's work dir, where its outputs are (cvtui's own files sit one level up)."""
        path = self.root / "runs" / run_id / WORK_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.calls.append(op)
        handler = self.ops.ops.get(op) or self.send_ops.ops.get(op)
        if handler is None or (op == protocol.OP_FILES_SEND and not self.can_stream):
            raise RemoteError(protocol.E_UNKNOWN_OP, f"unknown op {op!r}")
        return await asyncio.to_thread(handler, {"id": 1, "op": op, **args})

    async def hash_algorithm(self) -> str:
        return await negotiate_algorithm(self)

    async def send(
        self, run_id: str, path: str, algo: str, writer: PartWriter
    ) -> tuple[StreamHeader, StreamEnd]:
        """files_send, its FIFO read by `cat` in chunks that pass the read hooks."""
        try:
            reply = await self.call(protocol.OP_FILES_SEND, run_id=run_id, path=path, algo=algo)
        except RemoteError as exc:
            if exc.code in (protocol.E_SEND_BUSY, protocol.E_UNKNOWN_OP):
                raise StreamFailed(exc.message) from exc
            raise
        self.streamed += 1
        parser = SendParser(writer.header, writer.data)
        flowing = asyncio.Event()
        flowing.set()
        writer.pause, writer.resume = flowing.clear, flowing.set
        cat = await asyncio.create_subprocess_exec(
            "cat", reply["fifo"], stdout=asyncio.subprocess.PIPE
        )
        assert cat.stdout is not None
        offset = 0  # of the stream, header included: what the hooks are told
        try:
            while True:
                await flowing.wait()
                if self.before_read is not None:
                    await self.before_read(offset, 1 << 16)
                data = await cat.stdout.read(1 << 16)
                if not data:
                    break
                self.bytes_read += len(data)
                self.reads += 1
                if self.on_read is not None:
                    await self.on_read(offset, data)
                offset += len(data)
                parser.feed(data)
        finally:
            if cat.returncode is None:
                cat.kill()
            # communicate, not wait: wait returns only once the pipe is closed, and a reader
            # paused on a full buffer (the writer held back, a hook raising) never sees it.
            await cat.communicate()
        return parser.finish()

    async def open(self, run_id: str, path: str) -> LocalFile:
        """path: relative to the run dir, as SFTP is asked (protocol.host_relpath)."""
        return LocalFile(self.root / "runs" / run_id / path, self)
