"""`cvtui exec`: one command on one host, output streamed, its exit code returned."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

import asyncssh

from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import open_connection
from cvtui.engine.deploy import ensure_agent
from cvtui.engine.host_kinds import kind_of
from cvtui.inventory import Host, Policy

EXIT_LEASE_BUSY = 75  # what `agent.pyz exec` returns when a GPU it should lease is taken


def exec_command(host: Host, agent: str | None, argv: Sequence[str], gpus: Sequence[int]) -> str:
    """The remote command line, as the host's kind runs it (through GPU leases, or srun)."""
    return kind_of(host).exec_command(host, agent, argv, gpus)


MAX_STDIN_FRAME = 1 << 20  # clients send 64 KiB pieces


async def _pump(reader: asyncssh.SSHReader[bytes], out: BinaryIO) -> None:
    while chunk := await reader.read(1 << 16):
        out.write(chunk)
        out.flush()


async def _feed(source: BinaryIO, sink: asyncssh.SSHWriter[bytes]) -> None:
    """Copy a local stream (a pipe, a file) into the remote command's stdin, then close it.

    Read in a daemon thread of its own: a command that exits without reading everything
    (`head -1`) must not leave the process waiting on a read that may never return.
    """
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()
    read = getattr(source, "read1", source.read)

    def reader() -> None:
        while True:
            try:
                chunk = read(1 << 16)
            except (OSError, ValueError):
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is gone: nobody wants the rest
            if not chunk:
                return

    threading.Thread(target=reader, name="exec-stdin", daemon=True).start()
    try:
        while chunk := await chunks.get():
            sink.write(chunk)
            await sink.drain()
        sink.write_eof()
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        pass  # the command ended without reading it all: not an error


async def exec_on_host(
    host: Host,
    policy: Policy,
    argv: Sequence[str],
    gpus: Sequence[int] = (),
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    stdin: BinaryIO | None = None,
) -> int:
    """Run argv on host; 128+N when it died of signal N. stdin: fed to the command (None:
    it reads end of file at once)."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    async with await open_connection(host, policy) as conn:
        agent = None
        if gpus and kind_of(host).places_runs:  # cvtui's GPU leases: the agent holds them
            agent, _ = await ensure_agent(conn, host, build_agent())
        process = await conn.create_process(
            exec_command(host, agent, argv, gpus),
            encoding=None,
            stdin=asyncssh.PIPE if stdin is not None else asyncssh.DEVNULL,
        )
        feeding = asyncio.create_task(_feed(stdin, process.stdin)) if stdin is not None else None
        await asyncio.gather(_pump(process.stdout, out), _pump(process.stderr, err))
        await process.wait_closed()
        if feeding is not None:  # the command ended: what it did not read is not sent
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
    if process.exit_status is not None:
        return process.exit_status
    signal = process.exit_signal
    return 128 + (_signal_number(signal[0]) if signal else 1)


def _signal_number(name: str) -> int:
    import signal

    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 1


async def relay_exec(
    conn: asyncssh.SSHClientConnection | None,
    host: Host | None,
    name: str,
    request: dict[str, Any],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Run a CLI's exec request on this engine's open connection to the host, writing its
    output and exit code to writer as frames (see cvtui/engine/client.py); with "stdin" in
    the request, the client's STDIN frames (an empty one: end of file) feed the command."""
    from cvtui.engine.client import EXIT, HEADER, REFUSED, STDERR, STDIN, STDOUT, frame

    if conn is None or host is None:
        writer.write(frame(REFUSED, f"{name} is not connected".encode()))
        await writer.drain()
        return
    argv = [str(a) for a in request.get("argv") or []]
    gpus = [int(g) for g in request.get("gpus") or []]
    agent = None
    if gpus and kind_of(host).places_runs:
        agent, _ = await ensure_agent(conn, host, build_agent())
    fed = bool(request.get("stdin"))
    process = await conn.create_process(
        exec_command(host, agent, argv, gpus),
        encoding=None,
        stdin=asyncssh.PIPE if fed else asyncssh.DEVNULL,
    )

    async def relay(output: asyncssh.SSHReader[bytes], kind: int) -> None:
        while chunk := await output.read(1 << 16):
            writer.write(frame(kind, chunk))
            await writer.drain()

    async def feed() -> None:
        try:
            while True:
                kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
                if kind != STDIN or size > MAX_STDIN_FRAME:  # not what a client sends
                    break
                payload = await reader.readexactly(size)
                if not payload:
                    break
                process.stdin.write(payload)
                await process.stdin.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncssh.Error):
            pass  # the client or the command is gone: the command reads end of file
        with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
            process.stdin.write_eof()

    feeding = asyncio.create_task(feed()) if fed else None
    await asyncio.gather(relay(process.stdout, STDOUT), relay(process.stderr, STDERR))
    await process.wait_closed()
    if feeding is not None:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    status = process.exit_status
    if status is None:
        signal = process.exit_signal
        status = 128 + (_signal_number(signal[0]) if signal else 1)
    writer.write(frame(EXIT, str(status).encode()))
    await writer.drain()
