"""The engine's control socket: `<home>/engine.sock` (0600), for the CLI and the Python API.

A client connects, sends one JSON request line and reads one JSON reply line (`exec` then
streams the command's output as frames, see cvtui/engine_client.py). Requests never carry
state the catalog does not: runs, commands and their outcomes are catalog rows; the socket
only wakes the engine and says when it has acted, so a CLI command returns in milliseconds
instead of polling. The socket file lives in the home (0700) and is made 0600; nothing
listens on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.engine.client import SOCKET_NAME

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine

log = logging.getLogger("cvtui.engine.control")

MAX_REQUEST_BYTES = 1 << 20
DECIDE_TIMEOUT_S = 15.0  # a submit waits at most this long for the engine's decision
COMMANDS_TIMEOUT_S = 60.0
STREAM_OPS = ("forward", "exec")  # ops whose handler gets the client's reader too


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


class ControlServer:
    """Answers the CLI's requests for one engine; `last_request` feeds the idle exit."""

    def __init__(self, engine: Engine, home: Path) -> None:
        self.engine = engine
        self.path = socket_path(home)
        self.last_request = time.monotonic()
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # We hold the engine lock, so a socket file left here is a dead engine's.
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # born 0600: never connectable by others, not even briefly
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            line = await reader.readline()
            self.last_request = time.monotonic()
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                op = str(request.get("op"))
            except ValueError as exc:
                await _reply(writer, {"ok": False, "error": f"bad request: {exc}"})
                return
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                await _reply(writer, {"ok": False, "error": f"unknown op {op!r}"})
                return
            try:
                if op in STREAM_OPS:  # these read the client's bytes after the request line
                    await handler(request, reader, writer)
                else:
                    await handler(request, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away: nothing to tell it
            except Exception as exc:  # one bad request must not stop the engine
                log.exception("control request %s failed", op)
                with contextlib.suppress(ConnectionError):
                    await _reply(writer, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._clients.discard(task)

    # -- ops ------------------------------------------------------------------------------
    async def op_ping(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        answered = {name: event.is_set() for name, event in self.engine.answered.items()}
        await _reply(writer, {"ok": True, "pid": os.getpid(), "answered": answered})

    async def op_wake(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """New rows or commands are in the catalog: act on them now, not at the next poll."""
        self.engine.runs.wake.set()
        await _reply(writer, {"ok": True})

    async def op_decide(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Wait until the engine placed each run or gave the reason it waits (once every host
        of the inventory answered, so 'connecting' is never the reason given)."""
        run_ids = [str(i) for i in request.get("run_ids") or []]
        timeout_s = min(float(request.get("timeout_s") or DECIDE_TIMEOUT_S), 300.0)
        decisions = await self.engine.runs.decide(run_ids, timeout_s)
        await _reply(writer, {"ok": True, "runs": decisions})

    async def op_wait_commands(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Wake the engine and wait until it finished these commands (cancel, sync...)."""
        ids = [int(i) for i in request.get("command_ids") or []]
        timeout_s = min(float(request.get("timeout_s") or COMMANDS_TIMEOUT_S), 3600.0)
        done = await self.engine.runs.wait_commands(ids, timeout_s)
        await _reply(writer, {"ok": True, "commands": done})

    async def op_settled(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Wait until these runs ended and their final syncs finished (at most timeout_s)."""
        run_ids = [str(i) for i in request.get("run_ids") or []]
        timeout_s = min(float(request.get("timeout_s") or 10.0), 300.0)
        settled = await self.engine.runs.wait_settled(run_ids, timeout_s)
        await _reply(writer, {"ok": True, "settled": settled})

    async def op_refresh(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Ask the hosts of these running runs for their news now, and wait until the catalog
        holds it (the syncs it started included): what a command without an engine of its own
        would have learnt by connecting."""
        run_ids = [str(i) for i in request.get("run_ids") or []]
        timeout_s = min(float(request.get("timeout_s") or 10.0), 60.0)
        fresh = await self.engine.runs.refresh(run_ids, timeout_s)
        await _reply(writer, {"ok": True, "fresh": fresh})

    async def op_exec(
        self,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Run a command on a host over the engine's open connection, output as frames (and
        its stdin from the client's frames when the request says so)."""
        from cvtui.engine.remote_exec import relay_exec

        host = str(request.get("host"))
        session = self.engine.sessions.get(host)
        await _reply(writer, {"ok": True})
        await relay_exec(
            session.conn if session else None,
            session.host if session else None,
            host,
            request,
            reader,
            writer,
        )

    async def op_forward(
        self,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One TCP connection of a port forward, carried over the engine's open connection
        to the host: after the reply line, bytes go both ways until either side closes."""
        from cvtui.engine.forward import relay_tcp

        host = str(request.get("host"))
        port = int(request.get("port") or 0)
        session = self.engine.sessions.get(host)
        if session is None or session.conn is None or session.client is None:
            await _reply(writer, {"ok": False, "error": f"{host} is not connected"})
            return
        if not 0 < port <= 65535:
            await _reply(writer, {"ok": False, "error": f"port {port} is not a TCP port"})
            return
        await relay_tcp(session.conn, port, reader, writer, _reply)


async def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()
