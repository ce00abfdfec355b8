"""`cvtui forward`: a local port, bound to 127.0.0.1 only, forwarded to a port on a run's host.

The forward uses an SSH connection of its own, opened with the same settings as the engine's
(ssh config, keys, strict known_hosts, jump hosts), rather than the engine's connection over
the control socket: a forward is a long-lived byte stream tied to the user's terminal or
notebook, and relaying it through the engine would tie it to the engine's lifetime (a detached
engine leaves when idle and reconnects hosts on inventory edits) and send every byte through
one more process. The cost is one SSH login, a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from types import TracebackType

from cvtui.engine.connections import classify_error, open_connection
from cvtui.errors import CvtuiError, HostError
from cvtui.inventory import Host, Policy

log = logging.getLogger("cvtui.engine.forward")

LOCAL_ADDRESS = "127.0.0.1"  # never another interface: the port is the user's alone
REMOTE_ADDRESS = "localhost"  # as the host resolves it: a server bound to 127.0.0.1 or ::1
START_TIMEOUT_S = 30.0


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
    ) -> None:
        for port in (remote_port, local_port):
            if port is not None and not 0 <= port <= 65535:
                raise CvtuiError(f"port {port} is not a TCP port (0-65535)")
        self.host = host
        self.policy = policy
        self.remote_port = remote_port
        self.local_port = remote_port if local_port is None else local_port  # 0: any free one
        self.connect_timeout_s = connect_timeout_s
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
        try:
            conn = await open_connection(self.host, self.policy, self.connect_timeout_s)
        except Exception as exc:
            self.error = classify_error(self.host, exc).reason
            return
        async with conn:
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
