"""Read every run dir's records from the inventory's hosts, for `cvtui reindex`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import HostConnectError, open_connection
from cvtui.engine.deploy import ensure_agent, launch_agent, open_sftp, secure_root
from cvtui.inventory import Host, Policy
from remote_agent import protocol

CALL_TIMEOUT_S = 60.0  # one page of records: a few hundred run dirs read on the host
MAX_PAGES = 100_000  # a host that keeps answering `next` is cut off here, and said so


@dataclass
class HostRecords:
    """What one host said about its run dirs: each a run_records entry; or why it could not."""

    host: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the host was not reached (or stopped answering): why


async def read_host_records(
    hosts: Sequence[Host], policy: Policy, *, connect_timeout_s: float = 10.0
) -> list[HostRecords]:
    """Every host's run records, the hosts read at the same time; a host that fails says why
    in its HostRecords and never stops the others."""
    found = await asyncio.gather(
        *(_one_host(host, policy, connect_timeout_s) for host in hosts), return_exceptions=True
    )
    out = []
    for host, result in zip(hosts, found, strict=True):
        if isinstance(result, HostRecords):
            out.append(result)
        elif isinstance(result, Exception):
            out.append(HostRecords(host.name, error=_reason(result)))
        else:
            raise result  # a cancellation or KeyboardInterrupt is not the host's fault
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HostConnectError):
        return exc.reason
    if isinstance(exc, protocol.RemoteError):
        return f"the agent refused: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _one_host(host: Host, policy: Policy, connect_timeout_s: float) -> HostRecords:
    conn = await open_connection(host, policy, connect_timeout_s)
    try:
        async with await open_sftp(conn, host) as sftp:
            await secure_root(sftp, host)
            path, _ = await ensure_agent(conn, host, build_agent(), sftp=sftp, root_secured=True)
        client = await launch_agent(conn, host, path, policy.interval_s, lambda message: None)
        try:
            hello = client.hello
            assert hello is not None  # launch_agent returns after the handshake
            if hello.protocol != protocol.PROTOCOL_VERSION:
                raise HostConnectError(
                    host.name,
                    f"agent speaks protocol {hello.protocol}, "
                    f"controller {protocol.PROTOCOL_VERSION}",
                )
            records = HostRecords(host.name)
            after: str | None = None
            for _ in range(MAX_PAGES):
                reply = await client.call(
                    protocol.OP_RUN_RECORDS, timeout_s=CALL_TIMEOUT_S, after=after
                )
                records.runs.extend(r for r in reply.get("runs", []) if isinstance(r, dict))
                after = reply.get("next")
                if not isinstance(after, str):
                    return records
            records.error = f"stopped after {MAX_PAGES} pages of run records"
            return records
        finally:
            with contextlib.suppress(Exception):
                await client.call(protocol.OP_SHUTDOWN, timeout_s=2)
            await client.close()
    except asyncssh.Error as exc:
        raise HostConnectError(host.name, f"ssh: {exc.reason}") from exc
    finally:
        conn.close()
