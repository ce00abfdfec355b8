"""Many hosts, few doors: SSH handshakes paced per server, jump-host logins shared by the hosts
behind them.

OpenSSH's sshd drops connections that have not logged in yet beyond `MaxStartups` (default
10:30:100: from 10 on, 30% of new ones, rising to all at 100). Fifty hosts behind one bastion
would each log in to it at once, and fifty inventory entries on one server (the benchmark's
lab, or containers behind one address) would hit that server together: handshakes to one
server are therefore held to MAX_HANDSHAKES_PER_SERVER at a time, and a jump host is logged
in to once, its connection carrying every host behind it (forwarded channels are not sessions:
`MaxSessions` does not count them).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import asyncssh

MAX_HANDSHAKES_PER_SERVER = 8  # two below OpenSSH's MaxStartups, for the user's own ssh

# One table per event loop (the tests run many loops; a semaphore belongs to one).
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Semaphore]]
_slots = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def handshake_slot(server: Hashable) -> AsyncIterator[None]:
    """Held from the TCP connect until logged in, so one server never sees more than
    MAX_HANDSHAKES_PER_SERVER of ours unauthenticated at once (and, under its own key,
    while an agent starts there). Waiting for a slot is not part of a connect timeout."""
    table = _slots.setdefault(asyncio.get_running_loop(), {})
    slot = table.get(server)
    if slot is None:
        slot = table[server] = asyncio.Semaphore(MAX_HANDSHAKES_PER_SERVER)
    async with slot:
        yield


Route = tuple[Hashable, ...]  # the jump hosts to pass, in order (resolved ssh targets)
OpenHop = Callable[
    [Route, asyncssh.SSHClientConnection | None], Awaitable[asyncssh.SSHClientConnection]
]


@dataclass(eq=False)
class _Hop:
    """One shared jump host connection: the route that reaches it, and who uses it."""

    route: Route
    users: int = 0
    opening: asyncio.Task[asyncssh.SSHClientConnection] | None = None
    conn: asyncssh.SSHClientConnection | None = None
    parent: _Hop | None = None  # the hop it is tunnelled through, held while this one lives
    closed: bool = False
    watch: asyncio.Task[None] | None = field(default=None, repr=False)


class JumpHosts:
    """The jump host connections of one event loop, each opened once and shared.

    acquire() returns the logged-in connection to the last hop of a route (opening the hops
    before it as needed, through each other), counted as one user; hold_until_closed() hands
    that use to a connection tunnelled through it, released when that one closes. The last
    user gone, a hop is closed; a hop that dies is forgotten, so the next acquire opens anew.
    """

    def __init__(self) -> None:
        self._hops: dict[Route, _Hop] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    async def acquire(self, route: Route, open_hop: OpenHop) -> asyncssh.SSHClientConnection:
        hop = self._hops.get(route)
        if hop is None or hop.closed:
            hop = self._hops[route] = _Hop(route)
            hop.opening = asyncio.get_running_loop().create_task(self._open(hop, open_hop))
        hop.users += 1
        try:
            assert hop.opening is not None
            # Shielded: one host giving up (cancelled) must not abort the others' login.
            return await asyncio.shield(hop.opening)
        except BaseException:
            self.release(hop.route, hop)
            raise

    async def _open(self, hop: _Hop, open_hop: OpenHop) -> asyncssh.SSHClientConnection:
        tunnel = None
        try:
            if len(hop.route) > 1:
                tunnel = await self.acquire(hop.route[:-1], open_hop)
                hop.parent = self._hops.get(hop.route[:-1])
            conn = await open_hop(hop.route, tunnel)
        except BaseException:
            hop.closed = True
            if self._hops.get(hop.route) is hop:
                del self._hops[hop.route]
            if tunnel is not None:
                self.release(hop.route[:-1], hop.parent)
            raise
        hop.conn = conn
        hop.watch = asyncio.get_running_loop().create_task(self._forget_when_closed(hop))
        if hop.users <= 0:  # every host that wanted it gave up meanwhile
            self._close(hop)
        return conn

    async def _forget_when_closed(self, hop: _Hop) -> None:
        assert hop.conn is not None
        await hop.conn.wait_closed()
        hop.closed = True
        if self._hops.get(hop.route) is hop:
            del self._hops[hop.route]

    def release(self, route: Route, hop: _Hop | None = None) -> None:
        """One user of the hop at route is done with it (hop: that very one, not a newer)."""
        hop = hop or self._hops.get(route)
        if hop is None:
            return
        hop.users -= 1
        if hop.users <= 0 and hop.conn is not None:
            self._close(hop)

    def _close(self, hop: _Hop) -> None:
        if hop.closed:
            return
        hop.closed = True
        if self._hops.get(hop.route) is hop:
            del self._hops[hop.route]
        if hop.conn is not None:
            hop.conn.close()
        if hop.parent is not None:
            self.release(hop.parent.route, hop.parent)

    def hold_until_closed(self, route: Route, conn: asyncssh.SSHClientConnection) -> None:
        """The use acquire() counted now belongs to conn: released once it has closed."""
        hop = self._hops.get(route)

        async def release_after() -> None:
            try:
                await conn.wait_closed()
            finally:
                self.release(route, hop)

        task = asyncio.get_running_loop().create_task(release_after())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)


_jump_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JumpHosts]
_jump_hosts = weakref.WeakKeyDictionary()


def jump_hosts() -> JumpHosts:
    """The shared jump host connections of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _jump_hosts.get(loop)
    if found is None:
        found = _jump_hosts[loop] = JumpHosts()
    return found
