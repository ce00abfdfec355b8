"""The files_send op: one output file streamed with its block digests, read once, through a FIFO.

A fresh copy of a big file costs the host one read: the agent reads each chunk once, hashes it
(block tree leaves, remote_agent/blocktree.py) in a thread while writing it out, so hashing
overlaps the wire. The bytes go into a FIFO that the controller reads with `cat` on an SSH
channel of its own, beside the agent's: telemetry never waits behind file data, and no second
python starts on the host.

The op opens the file (errors are ordinary error replies), makes the FIFO (0600, in the
agent's 0700 root) and answers its path; a thread then writes, once `cat` opens it:
  - a header line: JSON {size, mtime_ns, ino, read_ns, algo, block_size};
  - exactly `size` bytes: the file as stat'ed before the first read. A file that shrinks while
    read is padded with zeros, and so is the rest after a read error;
  - a trailer line: JSON {digest, changed, error}: the tree digest (hex) of the bytes sent,
    whether the file may have changed while read (its stat differs, or a read came short:
    then the bytes mix versions), and why a read came short. The controller verifies what it
    wrote against `digest`, and when `changed` keeps the bytes only as the seed of a delta.
A FIFO nobody opens within READER_WAIT_S is removed, and so are leftovers of a killed agent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict

from remote_agent.blocktree import (
    READ_BYTES,
    block_size_for,
    buffer_leaves,
    group_digests,
    tree_digest,
    valid_block_size,
)
from remote_agent.files import open_output, run_dir_of
from remote_agent.outputs import check_relpath, stat_key
from remote_agent.protocol import E_BAD_REQUEST, E_SEND_BUSY, OP_FILES_SEND, RemoteError

FIFO_DIR = "agent"  # under the agent's root, which is the owner's alone (0700)
FIFO_SUFFIX = ".send"
READER_WAIT_S = 30.0  # a FIFO that no reader opened by then is given up
STALE_FIFO_S = 3600.0  # FIFOs older than this are a killed agent's, and removed
MAX_SENDS = 2  # streams at once per agent: each holds a READ_BYTES buffer

Op = Callable[[Dict[str, Any]], Dict[str, Any]]


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")


class _Leaves:
    """Leaf digests of one chunk, computed in a thread (hashlib releases the GIL meanwhile)."""

    def __init__(self, data: memoryview, block_size: int, algo: str) -> None:
        self.digests = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(data, block_size, algo))
        self._thread.start()

    def _run(self, data: memoryview, block_size: int, algo: str) -> None:
        try:
            self.digests = buffer_leaves(data, block_size, algo)
        except BaseException as exc:  # raised again by result(), in the sending thread
            self.error = exc

    def result(self) -> bytes:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.digests


def send_bytes(
    fd: int, size: int, block_size: int, algo: str, out: int
) -> tuple[bytes, str | None]:
    """Write the first `size` bytes of fd to out, zeros past a short read, hashing them.

    Returns (leaf digests of what was written, why a read came short or None).
    """
    buffer = bytearray(max(READ_BYTES, block_size))
    view = memoryview(buffer)
    leaves = bytearray()
    short = None
    done = 0
    while done < size:
        want = min(len(buffer), size - done)
        got = 0
        if short is None:
            try:
                while got < want:
                    n = os.readv(fd, [view[got:want]])
                    if not n:
                        short = f"the file ended at byte {done + got} of {size}"
                        break
                    got += n
            except OSError as exc:
                short = f"read failed at byte {done + got}: {exc.strerror or exc}"
        if got < want:
            view[got:want] = bytes(want - got)
        job = _Leaves(view[:want], block_size, algo)
        _write_all(out, view[:want])
        leaves += job.result()
        done += want
    return bytes(leaves), short


def send_file(fd: int, st: os.stat_result, real: str, algo: str, block_size: int, out: int) -> None:
    """Header, the file's bytes and the trailer (see the module docstring) into out."""
    read_ns = time.time_ns()  # host clock at the stat, before the first read
    header = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "read_ns": read_ns,
        "algo": algo,
        "block_size": block_size,
    }
    _write_all(out, _line(header))
    leaves, short = send_bytes(fd, st.st_size, block_size, algo, out)
    after = os.fstat(fd)
    try:
        now = stat_key(os.stat(real))
    except OSError:
        now = None
    changed = short is not None or stat_key(after) != stat_key(st) or now != stat_key(st)
    digest = tree_digest(st.st_size, block_size, group_digests(leaves, algo), algo)
    _write_all(out, _line({"digest": digest.hex(), "changed": changed, "error": short}))


def _open_reader_end(fifo: str, deadline: float) -> int | None:
    """The FIFO's write end once a reader has it open; None if none came by the deadline."""
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                return None
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd
    return None


class SendOps:
    """files_send: `ops` is merged into the agent's ops."""

    def __init__(self, root: str, algorithms: Callable[[], list[str]]) -> None:
        self.runs_dir = os.path.join(root, "runs")
        self.fifo_dir = os.path.join(root, FIFO_DIR)
        self.algorithms = algorithms
        self._lock = threading.Lock()
        self._sending = 0
        self._swept = False
        self.ops: dict[str, Op] = {OP_FILES_SEND: self.op_send}

    def op_send(self, message: dict[str, Any]) -> dict[str, Any]:
        run_dir = run_dir_of(self.runs_dir, message.get("run_id"))
        path = check_relpath(message.get("path"))
        algo = message.get("algo")
        if algo not in self.algorithms():
            raise RemoteError(E_BAD_REQUEST, f"hash {algo!r} is not available here")
        fd, st, real = open_output(run_dir, path)
        try:
            block_size = message.get("block_size") or block_size_for(st.st_size)
            if not valid_block_size(block_size):
                raise RemoteError(E_BAD_REQUEST, f"block size {block_size!r} is not valid")
            with self._lock:
                if self._sending >= MAX_SENDS:
                    raise RemoteError(E_SEND_BUSY, f"{MAX_SENDS} files are being sent already")
                self._sending += 1
            fifo = self._make_fifo()
        except BaseException:
            os.close(fd)
            raise
        thread = threading.Thread(
            target=self._serve,
            args=(fifo, fd, st, real, str(algo), int(block_size)),
            name="send",
            daemon=True,
        )
        thread.start()
        return {"fifo": fifo, "size": st.st_size}

    def _make_fifo(self) -> str:
        try:
            os.makedirs(self.fifo_dir, mode=0o700, exist_ok=True)
            if not self._swept:
                self._swept = True
                self._sweep()
            # os.urandom, not secrets: secrets loads OpenSSL (hmac), 3 MB of an idle agent's RSS.
            fifo = os.path.join(self.fifo_dir, os.urandom(8).hex() + FIFO_SUFFIX)
            os.mkfifo(fifo, 0o600)
        except OSError as exc:
            with self._lock:
                self._sending -= 1
            raise RemoteError(E_SEND_BUSY, f"cannot make a FIFO in {self.fifo_dir}: {exc}") from exc
        return fifo

    def _sweep(self) -> None:
        """Remove FIFOs an agent killed while sending left behind (another agent's live ones
        are young, and kept)."""
        now = time.time()
        for name in os.listdir(self.fifo_dir):
            if not name.endswith(FIFO_SUFFIX):
                continue
            path = os.path.join(self.fifo_dir, name)
            try:
                if now - os.lstat(path).st_mtime > STALE_FIFO_S:
                    os.unlink(path)
            except OSError:
                pass

    def _serve(
        self, fifo: str, fd: int, st: os.stat_result, real: str, algo: str, block: int
    ) -> None:
        out = None
        try:
            out = _open_reader_end(fifo, time.monotonic() + READER_WAIT_S)
            with contextlib.suppress(OSError):
                os.unlink(fifo)  # the reader has it open (or never will): the name can go
            if out is not None:
                send_file(fd, st, real, algo, block, out)
        except OSError:
            pass  # the reader went away (EPIPE): the controller gave this transfer up
        except Exception as exc:  # said on stderr; the reader sees the stream stop short
            sys.stderr.write(f"cvtui agent: sending {real} failed: {type(exc).__name__}: {exc}\n")
        finally:
            os.close(fd)
            if out is not None:
                os.close(out)
            with self._lock:
                self._sending -= 1
