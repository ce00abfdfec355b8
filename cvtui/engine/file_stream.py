"""The controller's end of `agent.pyz send`: a whole file on its own channel, hashed as it lands.

The host reads the file once, hashing as it sends (remote_agent/sendfile.py, which also
defines the stream: header line, exactly `size` bytes, trailer line). Here SendParser splits
the stream, and PartWriter writes the bytes into the part file in segments, each written and
hashed in a thread while the next one arrives, so disk and digests overlap the wire; while too
many segments wait the channel is paused (its SSH window then holds the host back). The SSH
packets are written and hashed where they lie, never joined into one buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remote_agent.blocktree import (
    DIGEST_BYTES,
    hash_function,
    leaf_count,
    new_hasher,
    valid_block_size,
)
from remote_agent.protocol import MAX_PREAMBLE_LINES, ProtocolError, RemoteError
from remote_agent.wire_fields import FieldError, integer, text

SEGMENT_BYTES = 8 << 20  # written and hashed as one piece; a multiple of every block size
SEGMENTS_HASHING = 3  # segments in writing and hashing before the channel is paused
MAX_LINE_BYTES = 64 << 10  # a header or trailer line longer than this is not one
MAX_IOVECS = 512  # pieces per pwritev (Linux takes 1024)


class StreamFailed(Exception):
    """`send` could not run on the host (no agent file, no session left): use SFTP instead."""


@dataclass(frozen=True)
class StreamHeader:
    """The file as the host stat'ed it before the first read."""

    size: int  # bytes that follow the header
    mtime_ns: int
    ino: int
    read_ns: int  # host clock at that stat
    algo: str
    block_size: int  # bytes per leaf


@dataclass(frozen=True)
class StreamEnd:
    """The trailer: the host's tree digest of the bytes it sent, and whether to trust them."""

    digest: bytes
    changed: bool  # the file changed while read (or came short): the bytes are only a seed
    error: str | None  # why a read came short


def _json_line(line: bytes, what: str) -> dict[str, object]:
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError(f"bad {what} from send: {line[:120]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"bad {what} from send: {line[:120]!r}")
    return message


def parse_header(line: bytes) -> StreamHeader:
    """The header line; RemoteError when the host refused to send (its code and message)."""
    message = _json_line(line, "header")
    error = message.get("error")
    if isinstance(error, dict):
        raise RemoteError(str(error.get("code"))[:64], str(error.get("message"))[:400])
    try:
        header = StreamHeader(
            size=integer(message, "size", 0) or 0,
            mtime_ns=integer(message, "mtime_ns") or 0,
            ino=integer(message, "ino", 0) or 0,
            read_ns=integer(message, "read_ns") or 0,
            algo=text(message, "algo", 64) or "",
            block_size=integer(message, "block_size", 1) or 0,
        )
    except FieldError as exc:
        raise ProtocolError(f"bad header from send: {exc}") from None
    if not valid_block_size(header.block_size):
        raise ProtocolError(f"bad header from send: block size {header.block_size}")
    return header


def parse_trailer(line: bytes) -> StreamEnd:
    message = _json_line(line, "trailer")
    digest, error = message.get("digest"), message.get("error")
    if not isinstance(digest, str) or len(digest) != 2 * DIGEST_BYTES:
        raise ProtocolError(f"bad trailer from send: digest {digest!r:.60}")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raise ProtocolError(f"bad trailer from send: digest {digest!r:.60}") from None
    return StreamEnd(raw, bool(message.get("changed")), str(error)[:400] if error else None)


class SendParser:
    """Splits what `send` writes into its header, the file's bytes (to on_data) and its trailer."""

    def __init__(
        self,
        on_header: Callable[[StreamHeader], None],
        on_data: Callable[[memoryview], None],
    ) -> None:
        self.on_header = on_header
        self.on_data = on_data
        self.header: StreamHeader | None = None
        self.end: StreamEnd | None = None
        self._line = bytearray()
        self._left = 0  # file bytes still to come after the header
        self.skipped: list[bytes] = []  # lines before the header (a login shell's banner)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.header is not None and self._left:
                take = min(self._left, len(view))
                self._left -= take
                self.on_data(view[:take])
                view = view[take:]
                continue
            if self.end is not None:
                raise ProtocolError("send wrote past its trailer")
            newline = bytes(view[: MAX_LINE_BYTES + 1]).find(b"\n")
            if newline < 0:
                self._line += view
                view = view[len(view) :]
                if len(self._line) > MAX_LINE_BYTES:
                    raise ProtocolError("send wrote an over-long line")
                continue
            self._line += view[:newline]
            view = view[newline + 1 :]
            line, self._line = bytes(self._line), bytearray()
            if self.header is None and not line.startswith(b"{"):
                # The login shell's rc files printed before `cat` ran (a banner): not ours.
                self.skipped.append(line[:200])
                if len(self.skipped) > MAX_PREAMBLE_LINES:
                    raise ProtocolError(f"expected a send header, got {self.skipped[0]!r}")
                continue
            if self.header is None:
                self.header = parse_header(line)
                self._left = self.header.size
                self.on_header(self.header)
            else:
                self.end = parse_trailer(line)

    def finish(self) -> tuple[StreamHeader, StreamEnd]:
        """Header and trailer once the stream is over; ProtocolError when it stopped early."""
        if self.header is None:
            raise StreamFailed("send ended before its header")
        if self.end is None:
            raise ProtocolError(
                f"send stopped with {self._left} of {self.header.size} bytes still to come"
            )
        return self.header, self.end


class PartWriter:
    """Writes a streamed file into a part file and hashes it segment by segment meanwhile.

    pause() holds the sender back while SEGMENTS_HASHING segments wait for their digests.
    """

    def __init__(self, fd: int, algo: str, counted: Callable[[int], None]) -> None:
        self.fd = fd
        self.algo = algo
        self.counted = counted
        # Set by the source that feeds it: hold the sender back, and let it go on.
        self.pause: Callable[[], None] = lambda: None
        self.resume: Callable[[], None] = lambda: None
        self.block_size = 0
        self.size = 0
        self.found: dict[int, bytes] = {}  # first leaf of a segment -> its leaf digests
        self._batch: list[memoryview] = []
        self._batched = 0
        self._offset = 0  # where the batch starts in the file
        self._hashing: set[asyncio.Task[None]] = set()
        self._paused = False

    def header(self, header: StreamHeader) -> None:
        if header.algo != self.algo:
            raise ProtocolError(f"send hashed with {header.algo!r}, asked for {self.algo}")
        self.block_size, self.size = header.block_size, header.size
        os.ftruncate(self.fd, header.size)

    def data(self, view: memoryview) -> None:
        self.counted(len(view))
        while view:
            # Segments start on block boundaries: each is hashed into whole leaves on its own.
            piece = view[: SEGMENT_BYTES - self._batched]
            view = view[len(piece) :]
            self._batch.append(piece)
            self._batched += len(piece)
            if self._batched == SEGMENT_BYTES or self._offset + self._batched == self.size:
                self._write_batch()

    def _write_batch(self) -> None:
        pieces, offset = self._batch, self._offset
        self._offset += self._batched
        self._batch, self._batched = [], 0
        task = asyncio.get_running_loop().create_task(self._store(offset, pieces))
        self._hashing.add(task)
        task.add_done_callback(self._hashed)
        if len(self._hashing) >= SEGMENTS_HASHING and not self._paused:
            self._paused = True
            self.pause()

    async def _store(self, offset: int, pieces: list[memoryview]) -> None:
        # In a thread: a write to a busy disk must not stall the event loop, which meanwhile
        # decrypts the next segment (pwrite and hashlib both release the GIL).
        self.found[offset // self.block_size] = await asyncio.to_thread(
            self._write_and_hash, offset, pieces
        )

    def _write_and_hash(self, offset: int, pieces: list[memoryview]) -> bytes:
        write_pieces(self.fd, pieces, offset)
        return pieces_leaves(pieces, self.block_size, self.algo)

    def _hashed(self, task: asyncio.Task[None]) -> None:
        self._hashing.discard(task)
        if self._paused and len(self._hashing) < SEGMENTS_HASHING:
            self._paused = False
            self.resume()

    async def leaves(self) -> bytes:
        """Every leaf digest of the file, once the last segment is hashed."""
        if self._batch:
            self._write_batch()
        await asyncio.gather(*self._hashing)
        out = bytearray()
        for first in sorted(self.found):
            if first * DIGEST_BYTES != len(out):
                raise ProtocolError("a streamed segment is missing")
            out += self.found[first]
        if len(out) != leaf_count(self.size, self.block_size) * DIGEST_BYTES:
            raise ProtocolError("the streamed file came short")
        return bytes(out)

    async def close(self) -> None:
        """After a failed or cancelled stream: what came is written (a retry resumes from the
        part file and fetches only what differs) and no thread is left writing into it."""
        if self._batch:
            pieces, offset = self._batch, self._offset
            self._batch, self._batched = [], 0
            with contextlib.suppress(OSError):
                await asyncio.to_thread(write_pieces, self.fd, pieces, offset)
        await asyncio.gather(*self._hashing, return_exceptions=True)


def write_pieces(fd: int, pieces: list[memoryview], offset: int) -> None:
    """Write the pieces one after another at offset, without joining them first."""
    for start in range(0, len(pieces), MAX_IOVECS):
        batch = pieces[start : start + MAX_IOVECS]
        while batch:
            written = os.pwritev(fd, batch, offset)
            offset += written
            while batch and written >= len(batch[0]):
                written -= len(batch[0])
                batch = batch[1:]
            if batch and written:
                batch[0] = batch[0][written:]


def pieces_leaves(pieces: list[memoryview], block_size: int, algo: str) -> bytes:
    """Leaf digests of the pieces taken as one buffer that starts on a block boundary.

    A leaf within one piece is hashed in one call; one that straddles pieces (SSH packets
    rarely fall on block boundaries) is fed to an incremental hasher piece by piece.
    """
    digest = hash_function(algo)
    out: list[bytes] = []
    partial: Any = None  # the hasher of a leaf begun in an earlier piece
    filled = 0  # bytes in it
    for piece in pieces:
        at = 0
        if partial is not None:
            at = min(block_size - filled, len(piece))
            partial.update(piece[:at])
            filled += at
            if filled < block_size:
                continue
            out.append(partial.digest())
            partial = None
        while len(piece) - at >= block_size:
            out.append(digest(piece[at : at + block_size]))
            at += block_size
        if at < len(piece):
            partial = new_hasher(algo)
            partial.update(piece[at:])
            filled = len(piece) - at
    if partial is not None:
        out.append(partial.digest())
    return b"".join(out)
