"""`cvtui forward`: a local port, bound to 127.0.0.1 only, forwarded to a port on a run's host.

With an engine running, each TCP connection to the local port is carried over the engine's
open SSH connection to the host: the forward asks for it on the engine's control socket
(`forward` op), which opens a direct-tcpip channel to the host's localhost:port and relays
bytes both ways (relay_tcp). No login of its own, and the port stays usable while the engine
reconnects (a connection made meanwhile is refused, the next one goes through). With no
engine, the forward opens an SSH connection of its own with the engine's settings (ssh config,
keys, strict known_hosts, jump hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from cvtui.engine.connections import classify_error, open_connection
from cvtui.errors import CvtuiError, HostError
from cvtui.inventory import Host, Policy

log = logging.getLogger("cvtui.engine.forward")

LOCAL_ADDRESS = "127.0.0.1"  # never another interface: the port is the user's alone
REMOTE_ADDRESS = "localhost"  # as the host resolves it: a server bound to 127.0.0.1 or ::1
START_TIMEOUT_S = 30.0
CHUNK = 1 << 16


class PortForward:
    """localhost:local_port -> host:remote_port until close() (or the connection drops).

    Runs its own event loop in a thread, so a notebook or a CLI can use it without asyncio.
    """

    def __init__(
        self,
        host: Host,
        policy: Policy,
        remote_port: int,
        local_port: int | None = None,
        *,
        connect_timeout_s: float = 10.0,
        engine_socket: Path | None = None,
    ) -> None:
        for port in (remote_port, local_port):
            if port is not None and not 0 <= port <= 65535:
                raise CvtuiError(f"port {port} is not a TCP port (0-65535)")
        self.host = host
        self.policy = policy
        self.remote_port = remote_port
        self.local_port = remote_port if local_port is None else local_port  # 0: any free one
        self.connect_timeout_s = connect_timeout_s
        # The running engine's control socket: connections ride its SSH connection.
        self.engine_socket = engine_socket
        self.error: str | None = None  # why it stopped, when it was not closed
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCAL_ADDRESS}:{self.local_port}/"

    @property
    def active(self) -> bool:
        return self._ready.is_set() and not self._done.is_set()

    def start(self) -> PortForward:
        """Connect and listen; returns once the local port accepts connections (or raises)."""
        self._thread = threading.Thread(target=self._run, name="cvtui-forward", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.connect_timeout_s + START_TIMEOUT_S):
            self.close()
            raise HostError(self.host.name, "port forward did not start in time")
        if self.error is not None:
            self.close()
            raise HostError(self.host.name, self.error)
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the forward ended (closed or its connection lost); whether it did."""
        return self._done.wait(timeout_s)

    def stop(self) -> None:
        """Ask the forward to end, without waiting for it (from an event loop's thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not self._done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)

    def close(self) -> None:
        """End the forward and wait until its port is closed."""
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def __enter__(self) -> PortForward:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # any failure is told to the caller, never lost
            self.error = self.error or f"port forward failed: {type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            self._done.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.engine_socket is not None:
            await self._serve_through_engine(self.engine_socket)
            return
        try:
            conn = await open_connection(self.host, self.policy, self.connect_timeout_s)
        except Exception as exc:
            self.error = classify_error(self.host, exc).reason
            return
        async with conn:
            self.error = await forwarding_refused(conn, self.host.name)
            if self.error is not None:
                return
            try:
                listener = await conn.forward_local_port(
                    LOCAL_ADDRESS, self.local_port, REMOTE_ADDRESS, self.remote_port
                )
            except OSError as exc:
                self.error = (
                    f"cannot listen on {LOCAL_ADDRESS}:{self.local_port}: "
                    f"{exc.strerror or exc} (give another --local-port)"
                )
                return
            self.local_port = listener.get_port()
            self._ready.set()
            lost = asyncio.ensure_future(conn.wait_closed())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done() and not stopped.done():
                self.error = f"the SSH connection to {self.host.name} was lost"
            for task in (lost, stopped):
                task.cancel()
            listener.close()
            with contextlib.suppress(Exception):
                await listener.wait_closed()

    async def _serve_through_engine(self, socket_path: Path) -> None:
        """Listen here; carry each connection through the engine's control socket."""
        assert self._stop is not None
        self.error = await self._refused_through_engine(socket_path)
        if self.error is not None:
            return
        clients: set[asyncio.Task[None]] = set()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                clients.add(task)
            try:
                await self._through_engine(socket_path, reader, writer)
            except asyncio.CancelledError:
                pass  # the forward closed: asyncio would log a cancelled connection as an error
            finally:
                writer.close()
                if task is not None:
                    clients.discard(task)

        try:
            server = await asyncio.start_server(accepted, LOCAL_ADDRESS, self.local_port)
        except OSError as exc:
            self.error = (
                f"cannot listen on {LOCAL_ADDRESS}:{self.local_port}: "
                f"{exc.strerror or exc} (give another --local-port)"
            )
            return
        self.local_port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(clients):
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _refused_through_engine(self, socket_path: Path) -> str | None:
        """Why the engine's connection to the host cannot forward at all (its sshd forbids
        it), asked once before listening; None when it can, or cannot be told."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            return None  # said per connection, as before
        try:
            reply = await self._ask_engine(reader, writer, PROBE_PORT)
        except (OSError, ValueError):
            return None
        finally:
            writer.close()
        if reply.get("prohibited"):
            return forwarding_prohibited(self.host.name)
        return None

    async def _ask_engine(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> dict[str, Any]:
        """On a connection to the engine's control socket: ask for a channel to port on the
        host; the engine's reply (after it, bytes go both ways when it says ok)."""
        request = {"op": "forward", "host": self.host.name, "port": port}
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await reader.readline() or b"{}")
        return reply

    async def _through_engine(
        self, socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            engine_reader, engine_writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as exc:
            log.warning("forward to %s: the engine is not there (%s)", self.host.name, exc)
            return
        try:
            reply = await self._ask_engine(engine_reader, engine_writer, self.remote_port)
            if not reply.get("ok"):
                log.warning("forward to %s: %s", self.host.name, reply.get("error", "refused"))
                return
            await asyncio.gather(pipe(reader, engine_writer), pipe(engine_reader, writer))
        except (OSError, ValueError) as exc:
            log.warning("forward to %s: %s", self.host.name, exc)
        finally:
            engine_writer.close()


async def pipe(source: Any, target: Any) -> None:
    """Copy source to target until EOF, then half-close target (a lost peer ends it too).
    Streams of asyncio or of an asyncssh channel alike."""
    with contextlib.suppress(OSError, ConnectionError, asyncssh.Error):
        while chunk := await source.read(CHUNK):
            target.write(chunk)
            await target.drain()
        if target.can_write_eof():
            target.write_eof()


# A port asked for once before a forward listens, to learn whether the host's sshd forwards
# at all: nothing listens there (tcpmux), so an allowed forward is told "connect failed".
PROBE_PORT = 1


def forwarding_prohibited(host: str) -> str:
    return (
        f"{host}'s sshd does not allow TCP forwarding (AllowTcpForwarding no, or a key's "
        "no-port-forwarding): ssh -L would fail there too; ask its admin to allow it"
    )


async def forwarding_refused(conn: asyncssh.SSHClientConnection, host: str) -> str | None:
    """forwarding_prohibited(host) when conn's server forbids forwarding, else None."""
    try:
        _, writer = await asyncio.wait_for(conn.open_connection(REMOTE_ADDRESS, PROBE_PORT), 10)
    except asyncssh.ChannelOpenError as exc:
        if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            return forwarding_prohibited(host)
        return None
    except (TimeoutError, OSError, asyncssh.Error):
        return None
    writer.close()  # something listens there after all: forwarding works
    return None


async def relay_tcp(
    conn: asyncssh.SSHClientConnection,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: Callable[[asyncio.StreamWriter, dict[str, Any]], Awaitable[None]],
) -> None:
    """The engine's half of a forwarded connection: a direct-tcpip channel to the host's
    localhost:port, told to the client in one reply line, then bytes both ways."""
    try:
        remote_reader, remote_writer = await conn.open_connection(REMOTE_ADDRESS, port)
    except (OSError, asyncssh.Error) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        refused = {"ok": False, "error": f"cannot reach port {port}: {reason}"}
        if getattr(exc, "code", None) == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            refused["prohibited"] = True  # the host's sshd forwards nothing
        await reply(writer, refused)
        return
    await reply(writer, {"ok": True})
    try:
        await asyncio.gather(pipe(reader, remote_writer), pipe(remote_reader, writer))
    finally:
        remote_writer.close()
