"""Talking to a running engine over its control socket, from a CLI or a notebook.

Standard library only (no asyncio, no asyncssh): a command that only reads the catalog and
asks the engine to act starts in a few tens of milliseconds. See cvtui/engine/control.py for
the engine's side.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from cvtui.exec_terminal import Term

SOCKET_NAME = "engine.sock"  # cvtui/engine/control.py serves it, 0600, in the home
LOG_NAME = "engine.log"  # a detached engine's log, in the home
STDOUT, STDERR, EXIT, REFUSED = 1, 2, 3, 4  # exec frames: a type byte, a 4-byte length, data
STDIN = 5  # from the client, after the request: bytes for the command; empty: end of file
RESIZE = 6  # from the client of an exec with a pty: b"COLS ROWS", the terminal's new size
HEADER = struct.Struct("!BI")
CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = 20.0  # a detached engine starts and opens its socket within this
DEFAULT_IDLE_EXIT_S = 600.0  # a detached engine with nothing to do leaves after this


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class EngineClient:
    """One engine's control socket; each request is its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def find(cls, home: Path) -> EngineClient | None:
        """The running engine of home, or None when none answers."""
        client = cls(home / SOCKET_NAME)
        try:
            client.request("ping", wait_s=CONNECT_TIMEOUT_S)
        except (OSError, CvtuiError):
            return None
        return client

    def _connect(self, timeout_s: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        return sock

    def request(self, op: str, *, wait_s: float = 30.0, **args: Any) -> dict[str, Any]:
        """One request and its reply (at most wait_s); CvtuiError when the engine says no."""
        with self._connect(wait_s) as sock, sock.makefile("rb") as replies:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            reply = _read_line(replies)
        if not reply.get("ok"):
            raise CvtuiError(f"the engine refused {op}: {reply.get('error', 'no reason given')}")
        return reply

    def exec(
        self,
        host: str,
        argv: list[str],
        gpus: list[int],
        stdout: BinaryIO,
        stderr: BinaryIO,
        stdin: BinaryIO | None = None,
        term: Term | None = None,
    ) -> int | None:
        """Run argv on host over the engine's connection; its exit code, None when the engine
        could not (the host is not connected: nothing ran). stdin: fed to the command. term:
        run it in a pty of that type and size, following the local terminal's resizes."""
        request = {
            "op": "exec",
            "host": host,
            "argv": argv,
            "gpus": gpus,
            "stdin": stdin is not None,
            "term": term.to_wire() if term is not None else None,
        }
        with self._connect(CONNECT_TIMEOUT_S) as sock, sock.makefile("rb") as frames:
            sock.sendall(json.dumps(request).encode() + b"\n")
            _read_line(frames)
            sock.settimeout(None)
            sending = threading.Lock()  # frames from the stdin thread and the resize handler
            if stdin is not None:
                threading.Thread(
                    target=_send_stdin,
                    args=(stdin, sock, sending),
                    name="exec-stdin",
                    daemon=True,
                ).start()
            with _following_resizes(term, sock, sending):
                return _relay_frames(frames, stdout, stderr)


def _relay_frames(frames: BinaryIO, stdout: BinaryIO, stderr: BinaryIO) -> int | None:
    """The exec's output frames to stdout and stderr until its EXIT frame (its code)."""
    while True:
        kind, size = HEADER.unpack(_read_exactly(frames, HEADER.size))
        payload = _read_exactly(frames, size)
        if kind == STDOUT:
            stdout.write(payload)
            stdout.flush()
        elif kind == STDERR:
            stderr.write(payload)
            stderr.flush()
        elif kind == EXIT:
            return int(payload)
        else:
            return None


def _following_resizes(
    term: Term | None, sock: socket.socket, sending: threading.Lock
) -> contextlib.AbstractContextManager[None]:
    """While the exec runs: a RESIZE frame each time the local terminal changes size."""
    if term is None or term.fd is None:
        return contextlib.nullcontext()
    from cvtui.exec_terminal import on_resize, resize_payload

    def resized() -> None:
        with sending, contextlib.suppress(OSError):
            sock.sendall(frame(RESIZE, resize_payload(*term.size())))

    return on_resize(resized)


def _send_stdin(source: BinaryIO, sock: socket.socket, sending: threading.Lock) -> None:
    """STDIN frames of what source gives, then an empty one (in a daemon thread: a command
    that ends first leaves this read behind, and the process does not wait for it)."""
    read = getattr(source, "read1", source.read)
    try:
        while chunk := read(1 << 16):
            with sending:
                sock.sendall(frame(STDIN, chunk))
        with sending:
            sock.sendall(frame(STDIN, b""))
    except (OSError, ValueError):
        pass  # the exec is over (socket closed) or stdin went away


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise ConnectionError("the engine closed the connection")
    return data


def _read_line(stream: BinaryIO) -> dict[str, Any]:
    """One JSON object and its newline, read through the buffer (not a recv per byte)."""
    data = stream.readline()
    if not data.endswith(b"\n"):
        raise ConnectionError("the engine closed the connection before it answered")
    found = json.loads(data)
    if not isinstance(found, dict):
        raise ConnectionError("the engine answered with something that is not an object")
    return found


def start_detached_engine(
    home: Path, inventory_path: Path, idle_exit_s: float | None = None
) -> EngineClient:
    """The engine of home, started in the background when none runs: the same engine as
    `cvtui daemon`, logging to <home>/engine.log, leaving by itself once it has had nothing
    queued or running and no client for idle_exit_s (as task-spooler and pueue start theirs).
    """
    from cvtui.engine.lock import lock_holder

    client = EngineClient.find(home)
    if client is not None:
        return client
    if idle_exit_s is None:
        idle_exit_s = float(os.environ.get("CVTUI_ENGINE_IDLE_EXIT") or DEFAULT_IDLE_EXIT_S)
    if lock_holder(home) is None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = home / LOG_NAME
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cvtui.cli",
                    "--home",
                    str(home),
                    "--inventory",
                    str(inventory_path),
                    "daemon",
                    "--idle-exit",
                    f"{idle_exit_s:g}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # not killed with this terminal or command
                close_fds=True,
            )
        finally:
            os.close(fd)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        client = EngineClient.find(home)
        if client is not None:
            return client
        time.sleep(0.02)
    log = home / LOG_NAME
    raise CvtuiError(f"the engine did not start within {START_TIMEOUT_S:g} s; see {log}")
