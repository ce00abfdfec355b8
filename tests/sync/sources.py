"""A host that is this machine: the agent's real file ops called in-process, reads with pread."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtui.engine.host_files import RemoteFileMissing
from remote_agent.doctor import hash_algorithms
from remote_agent.files import FileOps
from remote_agent.protocol import WORK_DIR

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
        self.algorithms = tuple(algorithms or hash_algorithms())
        self.ops.algorithms = list(self.algorithms)
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
        return await asyncio.to_thread(self.ops.ops[op], {"id": 1, "op": op, **args})

    async def open(self, run_id: str, path: str) -> LocalFile:
        """path: relative to the run dir, as SFTP is asked (protocol.host_relpath)."""
        return LocalFile(self.root / "runs" / run_id / path, self)
