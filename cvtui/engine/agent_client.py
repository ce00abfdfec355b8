"""JSON-lines RPC with one host agent over one SSH channel: requests, replies and events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from cvtui.engine.tasks import log_failure
from remote_agent import protocol
from remote_agent.protocol import MAX_PREAMBLE_LINES, Hello, ProtocolError, RemoteError

log = logging.getLogger("cvtui.engine.agent_client")

EventHandler = Callable[[dict[str, Any]], None]


class AgentClosedError(ConnectionError):
    """The agent's channel closed while a request was waiting."""


class AgentClient:
    """Talks to one running agent: `call()` for requests, `on_event` for what it pushes."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes], on_event: EventHandler) -> None:
        self.process = process
        self.on_event = on_event
        self.hello: Hello | None = None
        self.closed = asyncio.Event()
        self.bad_lines = 0  # lines from the agent that were not messages (kept for diagnosis)
        self.preamble: list[str] = []  # what the login shell printed before the agent's hello
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def handshake(self, timeout_s: float = 15.0) -> Hello:
        """Read the agent's hello line, then start routing what follows.

        Lines before it are what the host's login shell printed on its way to the agent (an
        rc file's banner): kept in ``preamble``, a few, and then the hello is expected.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(self.process.stdout.readline(), max(left, 0.001))
            if not line:
                raise AgentClosedError("agent exited before saying hello")
            try:
                message = protocol.decode(line)
            except ProtocolError:
                message = {}
            if message.get("event") == protocol.EVENT_HELLO:
                break
            self.preamble.append(line.decode("utf-8", "replace").rstrip()[:200])
            if len(self.preamble) > MAX_PREAMBLE_LINES:
                shown = self.preamble[0]
                raise ProtocolError(
                    f"expected hello, got {shown!r} and {len(self.preamble) - 1} more lines"
                )
        if "error" in message:
            protocol.parse_reply(message)
        self.hello = Hello.from_wire(message)
        self._reader = asyncio.create_task(self._read_loop(), name="agent-reader")
        self._reader.add_done_callback(lambda done: log_failure(done, log))
        return self.hello

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                self._route(line)
        except (asyncssh.Error, OSError):
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(AgentClosedError("agent connection closed"))
            self._pending.clear()

    def _route(self, line: bytes) -> None:
        try:
            message = protocol.decode(line)
        except ProtocolError:
            self.bad_lines += 1
            return
        request_id = message.get("id")
        if isinstance(request_id, int) and request_id in self._pending:
            future = self._pending.pop(request_id)
            if not future.done():
                future.set_result(message)
        elif "event" in message:
            try:
                self.on_event(message)
            except Exception:  # a bug handling one event must not deafen us to the host
                log.exception("event %s: handling it failed", str(message.get("event"))[:40])
        else:
            self.bad_lines += 1

    async def call(self, op: str, *, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; error replies raise RemoteError."""
        if self.closed.is_set():
            raise AgentClosedError("agent connection closed")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            line = protocol.encode(protocol.request(request_id, op, **args))
            if len(line) > protocol.MAX_LINE_BYTES:  # the agent would refuse it unread
                raise RemoteError(
                    protocol.E_TOO_LONG,
                    f"{op}: a request of {len(line)} bytes is over the agent's line limit "
                    f"of {protocol.MAX_LINE_BYTES} bytes",
                )
            self.process.stdin.write(line)
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(request_id, None)
        return protocol.parse_reply(reply)

    async def close(self) -> None:
        """Close stdin (the agent exits on EOF) and stop reading."""
        with contextlib.suppress(OSError, asyncssh.Error):
            self.process.stdin.write_eof()
        self.process.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.closed.set()


__all__ = ["AgentClient", "AgentClosedError", "RemoteError"]
