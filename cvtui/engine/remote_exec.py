"""`cvtui exec`: one command on one host, output streamed, its exit code returned."""

from __future__ import annotations

import asyncio
import sys
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


async def _pump(reader: asyncssh.SSHReader[bytes], out: BinaryIO) -> None:
    while chunk := await reader.read(1 << 16):
        out.write(chunk)
        out.flush()


async def exec_on_host(
    host: Host,
    policy: Policy,
    argv: Sequence[str],
    gpus: Sequence[int] = (),
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run argv on host; 128+N when it died of signal N."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    async with await open_connection(host, policy) as conn:
        agent = None
        if gpus and kind_of(host).places_runs:  # cvtui's GPU leases: the agent holds them
            agent, _ = await ensure_agent(conn, host, build_agent())
        process = await conn.create_process(
            exec_command(host, agent, argv, gpus), encoding=None, stdin=asyncssh.DEVNULL
        )
        await asyncio.gather(_pump(process.stdout, out), _pump(process.stderr, err))
        await process.wait_closed()
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
    writer: asyncio.StreamWriter,
) -> None:
    """Run a CLI's exec request on this engine's open connection to the host, writing its
    output and exit code to writer as frames (see cvtui/engine/client.py)."""
    from cvtui.engine.client import EXIT, REFUSED, STDERR, STDOUT, frame

    if conn is None or host is None:
        writer.write(frame(REFUSED, f"{name} is not connected".encode()))
        await writer.drain()
        return
    argv = [str(a) for a in request.get("argv") or []]
    gpus = [int(g) for g in request.get("gpus") or []]
    agent = None
    if gpus and kind_of(host).places_runs:
        agent, _ = await ensure_agent(conn, host, build_agent())
    process = await conn.create_process(
        exec_command(host, agent, argv, gpus), encoding=None, stdin=asyncssh.DEVNULL
    )

    async def relay(reader: asyncssh.SSHReader[bytes], kind: int) -> None:
        while chunk := await reader.read(1 << 16):
            writer.write(frame(kind, chunk))
            await writer.drain()

    await asyncio.gather(relay(process.stdout, STDOUT), relay(process.stderr, STDERR))
    await process.wait_closed()
    status = process.exit_status
    if status is None:
        signal = process.exit_signal
        status = 128 + (_signal_number(signal[0]) if signal else 1)
    writer.write(frame(EXIT, str(status).encode()))
    await writer.drain()
