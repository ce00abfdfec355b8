"""`cvtui exec`: one command on one host, output streamed, its exit code returned."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import asyncssh

from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import open_connection
from cvtui.engine.deploy import ensure_agent
from cvtui.engine.host_kinds import kind_of
from cvtui.exec_terminal import Term, parse_resize
from cvtui.inventory import Host, Policy

EXIT_LEASE_BUSY = 75  # what `agent.pyz exec` returns when a GPU it should lease is taken


def exec_command(
    host: Host, agent: str | None, argv: Sequence[str], gpus: Sequence[int], tty: bool = False
) -> str:
    """The remote command line, as the host's kind runs it (through GPU leases, or srun)."""
    return kind_of(host).exec_command(host, agent, argv, gpus, tty=tty)


def _pty_options(term: Term | None) -> dict[str, Any]:
    """create_process's options for a pty of the local terminal's type and size (none: no pty)."""
    if term is None:
        return {}
    # The connection refuses ptys (its sessions carry programs): this one asks for it.
    return {"request_pty": "force", "term_type": term.type, "term_size": term.size()}


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
    term: Term | None = None,
) -> int:
    """Run argv on host; 128+N when it died of signal N. stdin: fed to the command (None:
    it reads end of file at once). term: in a pty of that type and size, resized with the
    local terminal (its output then comes as one stream, on stdout)."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    async with await open_connection(host, policy) as conn:
        agent = None
        if gpus and kind_of(host).places_runs:  # cvtui's GPU leases: the agent holds them
            agent, _ = await ensure_agent(conn, host, build_agent())
        process = await conn.create_process(
            exec_command(host, agent, argv, gpus, tty=term is not None),
            encoding=None,
            stdin=asyncssh.PIPE if stdin is not None else asyncssh.DEVNULL,
            **_pty_options(term),
        )
        feeding = asyncio.create_task(_feed(stdin, process.stdin)) if stdin is not None else None
        with _following_resizes(term, process):
            await asyncio.gather(_pump(process.stdout, out), _pump(process.stderr, err))
            await process.wait_closed()
        if feeding is not None:  # the command ended: what it did not read is not sent
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
    return _exit_code(process)


@contextlib.contextmanager
def _following_resizes(
    term: Term | None, process: asyncssh.SSHClientProcess[bytes]
) -> Iterator[None]:
    """The pty follows the local terminal's size while the command runs (SIGWINCH)."""
    if term is None or term.fd is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def resized() -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            process.change_terminal_size(*term.size())

    try:
        loop.add_signal_handler(signal.SIGWINCH, resized)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread's loop
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


def _exit_code(process: asyncssh.SSHClientProcess[bytes]) -> int:
    if process.exit_status is not None:
        return process.exit_status
    died_of = process.exit_signal
    return 128 + (_signal_number(died_of[0]) if died_of else 1)


def _signal_number(name: str) -> int:
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
    the request, the client's STDIN frames (an empty one: end of file) feed the command;
    with "term", it runs in a pty that the client's RESIZE frames resize."""
    from cvtui.engine.client import EXIT, HEADER, REFUSED, RESIZE, STDERR, STDIN, STDOUT, frame

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
    term = Term.from_wire(request.get("term"))
    process = await conn.create_process(
        exec_command(host, agent, argv, gpus, tty=term is not None),
        encoding=None,
        stdin=asyncssh.PIPE if fed else asyncssh.DEVNULL,
        **_pty_options(term),
    )

    async def relay(output: asyncssh.SSHReader[bytes], kind: int) -> None:
        while chunk := await output.read(1 << 16):
            writer.write(frame(kind, chunk))
            await writer.drain()

    async def feed() -> None:
        fed_all = not fed
        try:
            while True:
                kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
                if kind not in (STDIN, RESIZE) or size > MAX_STDIN_FRAME:  # not a client's
                    break
                payload = await reader.readexactly(size)
                if kind == RESIZE:
                    size_now = parse_resize(payload)
                    if term is not None and size_now is not None:
                        process.change_terminal_size(*size_now)
                elif fed_all:
                    break  # stdin after its end, or not asked for: not a client's
                elif payload:
                    process.stdin.write(payload)
                    await process.stdin.drain()
                else:
                    fed_all = True
                    process.stdin.write_eof()
                    if term is None:
                        return  # nothing more can come
        except (asyncio.IncompleteReadError, ConnectionError, asyncssh.Error):
            pass  # the client or the command is gone: the command reads end of file
        if fed and not fed_all:
            with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
                process.stdin.write_eof()

    feeding = asyncio.create_task(feed()) if fed or term is not None else None
    await asyncio.gather(relay(process.stdout, STDOUT), relay(process.stderr, STDERR))
    await process.wait_closed()
    if feeding is not None:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    writer.write(frame(EXIT, str(_exit_code(process)).encode()))
    await writer.drain()
