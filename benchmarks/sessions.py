"""Start an agent over SSH the way the engine's HostSession does, timing every step."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from cvtui.engine.agent_build import AgentBundle
from cvtui.engine.agent_client import AgentClient
from cvtui.engine.connections import open_connection
from cvtui.engine.deploy import agent_command, ensure_agent, secure_root
from cvtui.inventory import Host, Policy
from remote_agent import protocol
from remote_agent.protocol import Hello

FIRST_TELEMETRY_TIMEOUT_S = 15.0


@dataclass
class TelemetryCounter:
    """The AgentClient event handler: counts telemetry events and notes when the first came."""

    first: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    count: int = 0

    def on_event(self, message: dict[str, Any]) -> None:
        if message.get("event") != protocol.EVENT_TELEMETRY:
            return
        self.count += 1
        if not self.first.done():
            self.first.set_result(time.perf_counter())


@dataclass
class AgentSession:
    """One connection with a running agent; marks are perf_counter seconds of each step."""

    conn: asyncssh.SSHClientConnection
    client: AgentClient
    hello: Hello
    uploaded: bool
    telemetry: TelemetryCounter
    marks: dict[str, float]  # start, connected, deployed, hello, telemetry

    def step_ms(self, begin: str, end: str) -> float:
        return (self.marks[end] - self.marks[begin]) * 1000

    async def close(self) -> None:
        """EOF to the agent (it exits), then close the connection and wait for it."""
        await self.client.close()
        self.conn.close()
        with contextlib.suppress(asyncssh.Error, OSError):
            await self.conn.wait_closed()


async def open_agent_session(
    host: Host, policy: Policy, bundle: AgentBundle, *, interval_s: float | None = None
) -> AgentSession:
    """Connect, deploy (upload only if absent), start the agent, wait for its first telemetry."""
    marks = {"start": time.perf_counter()}
    conn = await open_connection(host, policy)
    try:
        marks["connected"] = time.perf_counter()
        # As the engine's HostSession: one SFTP session for the root check and the deploy.
        sftp = await conn.start_sftp_client()
        await secure_root(sftp, host)
        path, uploaded = await ensure_agent(conn, host, bundle, sftp=sftp, root_secured=True)
        marks["deployed"] = time.perf_counter()
        command = agent_command(host, path, interval_s or policy.interval_s)
        process = await conn.create_process(command, encoding=None)
        telemetry = TelemetryCounter()
        client = AgentClient(process, telemetry.on_event)
        hello = await client.handshake()
        marks["hello"] = time.perf_counter()
        session = AgentSession(conn, client, hello, uploaded, telemetry, marks)
        try:
            marks["telemetry"] = await asyncio.wait_for(
                asyncio.shield(telemetry.first), FIRST_TELEMETRY_TIMEOUT_S
            )
        except BaseException:
            await client.close()
            raise
        return session
    except BaseException:
        conn.close()
        raise
