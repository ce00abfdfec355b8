"""`cvtui exec` through a warm engine: the engine runs the command on its open SSH connection
and relays the output over a Unix socket that the CLI created (a file, never a network port).

Frames are a type byte, a 4-byte big-endian length, then the payload.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

STDOUT, STDERR, EXIT, REFUSED = 1, 2, 3, 4
HEADER = struct.Struct("!BI")
ACCEPT_TIMEOUT_S = 2.0  # a warm engine picks commands up within ~50 ms


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the engine closed the relay")
        data += chunk
    return bytes(data)


def exec_via_engine(
    catalog: Catalog,
    home: Path,
    host: str,
    argv: list[str],
    gpus: list[int],
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int | None:
    """Run argv on host through the engine; None when the engine could not take it (nothing ran)."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    sockets = home / "sockets"
    sockets.mkdir(mode=0o700, exist_ok=True)
    path = sockets / f"exec-{os.getpid()}-{secrets.token_hex(4)}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        path.chmod(0o600)
        server.listen(1)
        server.settimeout(ACCEPT_TIMEOUT_S)
        command_id = catalog.submit_command(
            "exec", {"host": host, "argv": argv, "gpus": gpus, "socket": str(path)}
        )
        try:
            conn, _ = server.accept()
        except TimeoutError:
            catalog.finish_command(command_id, ok=False, result="no engine took it in time")
            return None
        conn.settimeout(None)
        with conn:
            while True:
                kind, size = HEADER.unpack(_read_exactly(conn, HEADER.size))
                payload = _read_exactly(conn, size)
                if kind == STDOUT:
                    out.write(payload)
                    out.flush()
                elif kind == STDERR:
                    err.write(payload)
                    err.flush()
                elif kind == EXIT:
                    return int(payload)
                elif kind == REFUSED:
                    return None
    finally:
        server.close()
        path.unlink(missing_ok=True)
